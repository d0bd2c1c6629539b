"""The snapshot's own formatting: what prometheus_client would render, in a thread, once per round."""

from __future__ import annotations

import gc
import gzip
import threading
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from libvirt_exporter.calls import Domain, Status
from libvirt_exporter.collector import SnapshotCollector
from libvirt_exporter.collector.families import Families, gauge
from libvirt_exporter.config import COLLECTOR_DEFAULTS, SamplerConfig
from libvirt_exporter.cycle import Rounds, run_forever
from libvirt_exporter.exposition import Renderer
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.served import Exposition
from libvirt_exporter.store import Sample, Store
from tests.exposition import as_prometheus_client_metrics, plain_openmetrics, plain_text
from tests.unit.conftest import Harness, make_config, parse, value, wait_for
from tests.unit.fake_libvirt import FakeDomain, FakeHost
from tests.unit.test_collectors import realistic_domain, sampled


class _Registered:
    """Families handed to a prometheus_client registry, to render them its way."""

    def __init__(self, groups: list[Families]) -> None:
        self._groups = groups

    def collect(self) -> Iterator[Metric]:
        for families in self._groups:
            yield from as_prometheus_client_metrics(families)


def _prometheus_client_rendering(groups: list[Families]) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Registered(groups))
    return generate_latest(registry), generate_openmetrics(registry)


def test_both_formats_are_byte_for_byte_what_prometheus_client_renders() -> None:
    odd = FakeDomain('we"ird\\name\nwith ünïcødé', 2)
    harness = sampled(FakeHost([realistic_domain(), odd]), frozenset(COLLECTOR_DEFAULTS))
    renderer = Renderer()
    for _ in range(3):  # later renders reuse label sets of the earlier ones
        view = harness.exporter.view
        groups = list(SnapshotCollector(view).collect(view.state()))
        text, openmetrics = _prometheus_client_rendering(groups)
        ours = renderer.render(groups, CollectorRegistry(auto_describe=False))
        assert plain_text(ours) == text
        assert plain_openmetrics(ours) == openmetrics
        assert gzip.decompress(ours.text_gzipped) == text
        assert gzip.decompress(ours.openmetrics_gzipped) == openmetrics
        harness.cycle(harness.exporter.bulk)  # new values for the next render


EDGE_VALUES = (0, -0.0, 1, True, 5e-324, 1e-05, 0.1, 999999.9999999999, 1e6, 1234567.0, 1795985328.131,
               2**53 + 1, 1e16, 1e22, 1.7976931348623157e308, -1e6, -1234567.5, -1e22,
               float("inf"), float("-inf"), float("nan"))  # fmt: skip


def test_values_of_every_range_are_written_as_prometheus_client_writes_them() -> None:
    spec, families = gauge("edge", "Values at the edges of the formatter's ranges.", ("n",)), Families()
    for number, edge in enumerate(EDGE_VALUES):
        families.add(spec, (str(number),), edge)
    text, openmetrics = _prometheus_client_rendering([families])
    ours = Renderer().render([families], CollectorRegistry(auto_describe=False))
    assert plain_text(ours) == text
    assert plain_openmetrics(ours) == openmetrics


def test_a_render_of_the_same_label_sets_leaves_no_new_object_for_the_garbage_collector() -> None:
    """The label values of each render are new tuples, equal to the last render's: keeping them
    would leave thousands of objects a render for the collector's next pass to scan (hundreds of
    milliseconds of GIL a minute at 500 domains, docs/benchmarks.md)."""
    host = FakeHost([FakeDomain(f"vm-{index}", index + 1, vcpus=2, disks=("vda", "vdb"), nics=("vnet0",))
                     for index in range(50)])  # fmt: skip
    view = sampled(host, frozenset(COLLECTOR_DEFAULTS)).exporter.view
    renderer = Renderer()
    renderer.render(SnapshotCollector(view).collect(view.state()), CollectorRegistry(auto_describe=False))
    gc.collect()
    threshold = gc.get_threshold()
    gc.set_threshold(0)  # no collection: what is young afterwards was made since, and is alive
    try:
        renderer.render(SnapshotCollector(view).collect(view.state()), CollectorRegistry(auto_describe=False))
        young = gc.get_objects(generation=0)
    finally:
        gc.set_threshold(*threshold)
    assert len(young) < 50  # 10 here; 933 when each render kept its own label values


def test_a_domain_that_is_gone_leaves_nothing_in_the_next_render() -> None:
    host = FakeHost([FakeDomain("stays", 1), FakeDomain("goes", 2)])
    harness = Harness(host, make_config())
    assert {"stays", "goes"} <= _domains(harness.cycle(harness.exporter.bulk))
    host.remove("goes")
    series = harness.cycle(harness.exporter.bulk)
    assert "goes" not in _domains(series) and "stays" in _domains(series)


def _domains(series: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {dict(labels)["domain"] for _, labels in series if "domain" in dict(labels)}


def test_the_state_a_render_reads_stays_as_it_was_taken_while_sampling_goes_on() -> None:
    harness = Harness(FakeHost([FakeDomain("a", 1)]), make_config())
    exporter = harness.exporter
    harness.cycle(exporter.bulk)
    state = exporter.view.state()

    def rendered() -> bytes:
        groups = SnapshotCollector(exporter.view).collect(state)
        return plain_text(Renderer().render(groups, CollectorRegistry(auto_describe=False)))

    before = rendered()
    bulk, a = SamplerName.BULK, Domain("a")
    exporter.store.count_failure(bulk, a, Status.ERROR)  # what the hub may do meanwhile
    exporter.store.offer(bulk, a, Sample({"state.state": 1, "cpu.time": 5}, taken_at=state.taken_at + 1))
    exporter.store.cycle_failed(bulk, 1.0)
    exporter.store.forget([a])
    assert rendered() == before
    assert value(parse(before), "libvirt_domain_sample_errors_total", domain="a", sampler="bulk") == 0


def test_scrapes_are_served_while_a_render_runs_and_publishes_meanwhile_join_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(FakeHost([FakeDomain("a", 1)]), make_config())
    exporter, snapshot = harness.exporter, harness.exporter.snapshot
    exporter.publish()  # the publish that connecting asked for is over too
    before = snapshot.current
    release, renders = threading.Event(), []
    render = Renderer.render

    def held(self: Renderer, groups: list[Families], process: CollectorRegistry) -> Exposition:
        renders.append(threading.current_thread())
        release.wait()
        return render(self, groups, process)

    monkeypatch.setattr(Renderer, "render", held)
    exporter.bulk.run_cycle()
    publishes = [gevent.spawn(exporter.publish) for _ in range(3)]
    wait_for(lambda: len(renders) == 1)
    assert snapshot.current is before  # the hub runs meanwhile: a scrape gets the last snapshot
    assert renders[0] is not threading.current_thread()
    release.set()
    wait_for(lambda: all(publish.ready() for publish in publishes))
    assert len(renders) == 2  # the first, and one more for the two that came while it ran
    assert (
        value(parse(plain_text(snapshot.current)), "libvirt_domain_sample_stale", domain="a", sampler="bulk")
        == 0
    )


class _Sampler:
    """A sampler whose cycle lasts until its gate opens."""

    def __init__(self, name: SamplerName, gate: Event | None = None) -> None:
        self.name = name
        self.config = SamplerConfig(name, interval=10, deadline=1)
        self._gate = gate

    def subjects(self) -> list[Domain]:
        return []

    def accounts(self) -> tuple[SamplerName, ...]:
        return (self.name,)

    def run_cycle(self) -> None:
        if self._gate is not None:
            self._gate.wait()


def _overlapping_cycles(longest_wait: float) -> tuple[list[str], Event, gevent.Greenlet]:
    """A slow cycle that waits on the returned gate, and a fast one that is over: what was published."""
    published: list[str] = []
    rounds = Rounds(Store(), lambda: published.append("render"), longest_wait)
    gate = Event()
    slow = gevent.spawn(rounds.run_cycle, _Sampler(SamplerName.BULK, gate))
    gevent.spawn(rounds.run_cycle, _Sampler(SamplerName.JOB)).join()
    return published, gate, slow


def test_one_render_once_the_cycles_that_run_together_are_all_over() -> None:
    published, gate, slow = _overlapping_cycles(longest_wait=60)
    assert published == []  # the bulk cycle still runs
    gate.set()
    slow.join()
    assert published == ["render"]


def test_overlapping_cycles_put_a_render_off_no_longer_than_the_longest_wait() -> None:
    published, gate, slow = _overlapping_cycles(longest_wait=0)
    assert published == ["render"]
    gate.set()
    slow.join()


class _TimedSampler:
    """Records when its cycles start; its first cycle lasts `first_cycle` seconds."""

    def __init__(self, name: SamplerName, interval: float, first_cycle: float, starts_wanted: int) -> None:
        self.name = name
        self.config = SamplerConfig(name, interval=interval, deadline=interval / 2)
        self.starts: list[float] = []
        self.enough = Event()
        self._first_cycle = first_cycle
        self._starts_wanted = starts_wanted

    def subjects(self) -> list[Domain]:
        return []

    def accounts(self) -> tuple[SamplerName, ...]:
        return (self.name,)

    def run_cycle(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) == 1:
            gevent.sleep(self._first_cycle)
        if len(self.starts) >= self._starts_wanted:
            self.enough.set()


def test_a_cycle_longer_than_its_interval_leaves_its_sampler_in_step_with_the_others() -> None:
    """After a bulk cycle that overran its interval, bulk starts again on the next tick, with the
    job sampler, so that their rounds are still rendered once each."""
    interval = 0.5
    rounds = Rounds(Store(), lambda: None, longest_wait=interval)
    bulk = _TimedSampler(SamplerName.BULK, interval, first_cycle=1.5 * interval, starts_wanted=4)
    job = _TimedSampler(SamplerName.JOB, interval, first_cycle=0, starts_wanted=1)
    loops = [gevent.spawn(run_forever, sampler, rounds) for sampler in (bulk, job)]
    bulk.enough.wait(timeout=10 * interval)
    gevent.killall(loops)
    assert len(bulk.starts) >= 4
    for started in bulk.starts:
        off_tick = (started - rounds.started) % interval
        assert min(off_tick, interval - off_tick) < interval / 5, (
            f"bulk started {off_tick:.2f} s off its tick"
        )

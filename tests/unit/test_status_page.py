"""The status page `/`: which VMs are stuck or stale and since when, read from the snapshot alone."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import gevent
import pytest

from libvirt_exporter import status_page
from libvirt_exporter.collector.view import State
from libvirt_exporter.http import make_server
from libvirt_exporter.status_page import duration
from tests.status_page import StatusPage, read_status_page, status_html
from tests.unit.conftest import DEADLINE, Harness, make_config, wait_for
from tests.unit.fake_libvirt import FakeDomain, FakeHost

NFS = "/mnt/nfs"


def page_of(harness: Harness) -> StatusPage:
    harness.exporter.publish()
    return read_status_page(status_html(harness.exporter.snapshot.current))


def round_of(harness: Harness) -> StatusPage:
    """The survey, then the bulk cycle (whose calls bring the block values), as one tick."""
    harness.cycle(harness.exporter.bulk)
    return page_of(harness)


@pytest.fixture
def host() -> Iterator[FakeHost]:
    domains = [FakeDomain(name, i) for i, name in enumerate(("a", "b", "c", "d"), start=1)]
    domains.append(FakeDomain("nfs", 9, storage=NFS))
    host = FakeHost(domains)
    host.mounts.append(NFS)
    yield host
    host.thaw_all()


def test_all_fresh_then_a_stopped_qemu_a_stuck_call_and_dead_storage_each_show(host: FakeHost) -> None:
    harness = Harness(host, make_config())
    page = round_of(harness)
    assert {name: row.attributes["data-verdict"] for name, row in page.domains.items()} == dict.fromkeys(
        ("a", "b", "c", "d", "nfs"), "fresh"
    )
    assert "5 fresh" in page.text and "No call runs past its deadline" in page.text
    assert page.domains["a"].cells["hang signals"] == "none"
    assert page.domains["a"].cells["state"] == "running"
    assert page.domains["a"].cells["block"].endswith("s old")

    host.stop_qemu("b")  # seen in /proc: no call is sent to it
    host.freeze("c")  # hung with no visible signal: its block call gets stuck
    host.storage_outage(NFS)
    page = round_of(harness)

    verdicts = {name: row.attributes["data-verdict"] for name, row in page.domains.items()}
    assert verdicts == {"a": "fresh", "b": "stuck", "c": "stuck", "d": "fresh", "nfs": "stuck"}
    assert list(page.domains)[:3] == ["b", "c", "nfs"], "the stuck ones come first"
    assert page.domains["b"].cells["hang signals"] == "qemu_stopped"
    assert page.domains["nfs"].cells["hang signals"] == "storage_unresponsive"
    assert "stale" in page.domains["b"].cells["block"]
    assert page.domains["b"].cell_classes["basic"] == "fresh", "what needs no QEMU stays fresh"
    # c's first call after the freeze (the host-wide stats call, blamed on c) is stuck, with the
    # block values it was to bring; no other is sent to it meanwhile.
    stuck_in = [name for name, css in page.domains["c"].cell_classes.items() if css == "stuck"]
    assert stuck_in == ["bulk", "block"], page.domains["c"].cells
    for sampler in stuck_in:
        stuck_for = page.domains["c"].cells[sampler].split("call stuck for ")[1]
        assert float(stuck_for.split(" s")[0]) >= DEADLINE  # shown to a tenth of a second
    stuck_calls = {(row.cells["name"], row.cells["sampler"]) for row in page.stuck_calls}
    assert stuck_calls == {("domain c", "bulk, block"), (f"storage {NFS}", "storage")}
    assert page.storages[NFS].cells["probe"] == "unresponsive"
    assert page.storages[NFS].cells["domains"] == "1"
    assert "3 stuck" in page.text and "2 fresh" in page.text and "1 stuck." in page.text
    harness.exporter.stop()


def test_libvirtd_gone_marks_every_domain_stale_and_says_why(host: FakeHost) -> None:
    harness = Harness(host, make_config())
    round_of(harness)
    host.stop_libvirtd()
    wait_for(lambda: not harness.exporter.connection.up)  # the close callback reaches the hub
    page = page_of(harness)
    assert "libvirtd does not answer" in page.text
    assert {row.attributes["data-verdict"] for row in page.domains.values()} == {"stale"}
    harness.exporter.stop()


def test_names_from_libvirt_are_escaped_and_the_page_runs_no_script() -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    host = FakeHost([FakeDomain(hostile, 1)])
    harness = Harness(host, make_config())
    harness.cycle(harness.exporter.bulk)
    harness.exporter.publish()
    html = status_html(harness.exporter.snapshot.current)
    assert "<script" not in html and "<img" not in html
    page = read_status_page(html)
    assert page.scripts == 0
    assert hostile in page.domains, "the name reads as it is, as text"
    harness.exporter.stop()


def test_a_request_for_the_page_sends_no_call_to_libvirt(host: FakeHost) -> None:
    harness = Harness(host, make_config())
    round_of(harness)
    server = make_server(("127.0.0.1", 0), harness.exporter.snapshot, "/metrics")
    server.start()
    try:
        calls_before = sum(host.calls.values())
        url = f"http://127.0.0.1:{server.server_port}/"

        def fetch() -> tuple[str, bytes]:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.headers["Content-Type"], response.read()

        content_type, body = gevent.get_hub().threadpool.spawn(fetch).get()
        assert content_type == "text/html; charset=utf-8"
        assert set(read_status_page(body.decode()).domains) == {"a", "b", "c", "d", "nfs"}
        assert 'href="/metrics"' in body.decode()
        assert sum(host.calls.values()) == calls_before
    finally:
        server.stop()
        harness.exporter.stop()


def test_the_page_is_laid_out_for_a_phone() -> None:
    harness = Harness(FakeHost([FakeDomain("a", 1)]), make_config())
    harness.exporter.publish()
    html = status_html(harness.exporter.snapshot.current)
    assert '<meta name="viewport" content="width=device-width,initial-scale=1">' in html
    assert "@media (max-width:40rem)" in html  # the tables reflow into one card per domain
    harness.exporter.stop()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.43, "0.4 s"), (12.4, "12 s"), (185, "3 min 5 s"), (7800, "2 h 10 min")],
)
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_page_is_rendered_only_when_asked_for_once_per_snapshot(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered after every cycle, the page would cost more than the metrics at 2,000 domains."""
    renders: list[float] = []
    real_render = status_page.render

    def counted(state: State, telemetry_path: str) -> bytes:
        renders.append(state.taken_at)
        return real_render(state, telemetry_path)

    monkeypatch.setattr(status_page, "render", counted)
    harness = Harness(host, make_config())
    round_of_cycles = (harness.exporter.bulk, harness.exporter.block)
    for sampler in round_of_cycles * 3:
        harness.cycle(sampler)
    assert renders == []
    snapshot = harness.exporter.snapshot.current
    first, again = status_html(snapshot), status_html(snapshot)
    assert first == again and len(renders) == 1
    harness.cycle(harness.exporter.bulk)
    status_html(harness.exporter.snapshot.current)
    assert len(renders) == 2 and renders[1] > renders[0], "a new snapshot, a new page of its state"
    harness.exporter.stop()

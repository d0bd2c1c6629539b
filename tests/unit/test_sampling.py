"""The sampling logic against a fake host: hung calls are bounded, counted and never piled up."""

from __future__ import annotations

import time
from typing import Any

import gevent
import libvirt
import pytest

from libvirt_exporter import host_counters
from libvirt_exporter.calls import CallKey, CallRunner, Domain, Pool
from libvirt_exporter.connection import MainConnection
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.bulk import HOST_WIDE_DISKS, waited_on
from tests.exposition import plain_text
from tests.unit.conftest import DEADLINE, Harness, Series, domains_in, make_config, parse, value, wait_for
from tests.unit.fake_libvirt import FakeDomain, FakeHost, FakeLibvirtError, FakeStoragePool

CPU_TIME = "libvirt_domain_cpu_time_seconds_total"


def test_healthy_host_serves_every_domain_fresh(harness: Harness) -> None:
    series = harness.cycle(harness.exporter.bulk)
    assert value(series, "libvirt_up") == 1
    for name in "abc":
        for sampler in ("bulk", "block", "block_info"):
            assert value(series, "libvirt_domain_sample_stale", domain=name, sampler=sampler) == 0
        assert value(series, "libvirt_domain_cpu_time_seconds_total", domain=name) > 0  # type: ignore[operator]
        assert value(series, "libvirt_domain_vcpu_time_seconds_total", domain=name, vcpu="0") > 0  # type: ignore[operator]
        assert value(series, "libvirt_domain_block_capacity_bytes", domain=name, device="vda") == 64 * 2**20
    assert value(series, "libvirt_domains", state="running") == 3


def test_hung_block_call_is_bounded_counted_and_never_sent_twice(harness: Harness) -> None:
    """A disk-touching call stuck on a VM (here the one that reads its sizes): counted once, shown
    in flight for the block values, and no second call while it hangs."""
    exporter, host = harness.exporter, harness.host
    host.freeze("b")

    first = harness.cycle(exporter.bulk)  # the first reads the sizes, domain by domain
    for sampler in ("bulk", "block", "block_info"):
        assert value(first, "libvirt_domain_sample_timeouts_total", domain="b", sampler=sampler) == 1
        assert value(first, "libvirt_domain_sample_skipped_total", domain="b", sampler=sampler) == 0
        assert stale(first, "b", sampler), "a domain whose call timed out is served stale at once"
    for sampler in ("bulk", "block", "block_info"):  # the one call brings all three: the alerts' view
        in_flight = value(first, "libvirt_domain_call_in_flight_seconds", domain="b", sampler=sampler)
        assert in_flight is not None and in_flight > DEADLINE / 2  # stuck, not merely sent
    in_flight_first = value(first, "libvirt_domain_call_in_flight_seconds", domain="b", sampler="block")
    assert value(first, "libvirt_sampler_threads", state="stuck") == 1

    second = harness.cycle(exporter.bulk)
    third = harness.cycle(exporter.bulk)
    assert value(third, "libvirt_domain_sample_timeouts_total", domain="b", sampler="block") == 1
    assert value(third, "libvirt_domain_sample_skipped_total", domain="b", sampler="block") == 2
    assert host.calls[("b", "domainListGetStats")] == 1, "a second call was sent to a stuck domain"
    assert host.calls[("b", "blockInfo")] == 0  # the call's next request, once the first returns
    in_flight_second = value(second, "libvirt_domain_call_in_flight_seconds", domain="b", sampler="block")
    in_flight_third = value(third, "libvirt_domain_call_in_flight_seconds", domain="b", sampler="block")
    assert in_flight_first < in_flight_second < in_flight_third  # type: ignore[operator]
    assert value(third, "libvirt_sampler_threads", state="stuck") == 1
    reads = "libvirt_domain_block_read_requests_total"
    for healthy in "ac":
        for sampler in ("block", "block_info"):
            assert not stale(third, healthy, sampler)
            assert value(third, "libvirt_domain_sample_timeouts_total", domain=healthy, sampler=sampler) == 0
        assert value(third, reads, domain=healthy, device="vda") > value(
            second, reads, domain=healthy, device="vda"
        )  # type: ignore[operator]

    host.thaw("b")
    wait_for(lambda: not exporter.runner.is_in_flight(CallKey("bulk", Domain("b"))))
    recovered = harness.cycle(exporter.bulk)  # its survey sees b's monitor free again
    for sampler in ("bulk", "block", "block_info"):
        assert not stale(recovered, "b", sampler), "the late values came, or the sizes were read again"
        assert value(recovered, "libvirt_domain_call_in_flight_seconds", domain="b", sampler=sampler) == 0
    assert value(recovered, "libvirt_sampler_threads", state="stuck") == 0


def test_values_go_stale_after_interval_plus_three_deadlines_without_a_cycle(fake_host: FakeHost) -> None:
    harness = Harness(fake_host, make_config(deadline=0.2, interval=0.3))  # stale after 0.9 s
    sampled = harness.cycle(harness.exporter.bulk)
    taken_at = value(sampled, "libvirt_domain_sample_timestamp_seconds", domain="a", sampler="block")
    assert not stale(sampled, "a")
    wait_for(lambda: stale(harness.scrape(), "a"), timeout=3)  # no block cycle runs meanwhile
    assert time.time() - taken_at > 0.9  # type: ignore[operator]


def test_while_libvirtd_is_unreachable_the_last_values_are_served_stale(harness: Harness) -> None:
    exporter, host = harness.exporter, harness.host
    harness.cycle(exporter.bulk)
    host.refuse = True
    host.stop_libvirtd()
    wait_for(lambda: not exporter.connection.up)
    series = harness.cycle(exporter.bulk)
    assert value(series, "libvirt_up") == 0
    assert value(series, "libvirt_sampler_errors_total", sampler="block") == 1, "its cycles are bulk's"
    for name in "abc":
        assert stale(series, name, "block") and stale(series, name, "bulk")
        assert value(series, "libvirt_domain_block_read_requests_total", domain=name, device="vda") == 1, (
            "the last good values must still be served"
        )


def stale(series: Series, domain: str, sampler: str = "block") -> bool:
    return value(series, "libvirt_domain_sample_stale", domain=domain, sampler=sampler) == 1


def test_stuck_host_wide_stats_call_blames_the_frozen_domain_and_keeps_others_fresh(
    harness_without_cgroups: Harness,
) -> None:
    harness = harness_without_cgroups  # the vCPU times, read anew by each call, tell calls apart
    exporter, host = harness.exporter, harness.host
    harness.cycle(exporter.bulk)  # the first reads the disks' sizes too, domain by domain
    host.freeze("b")

    first = harness.cycle(exporter.bulk)
    for sampler in ("bulk", "block"):  # the host-wide call brings the disks' counters too
        assert value(first, "libvirt_domain_sample_timeouts_total", domain="b", sampler=sampler) == 1
        for healthy in "ac":
            assert value(first, "libvirt_domain_sample_stale", domain=healthy, sampler=sampler) == 0
            assert value(first, "libvirt_domain_sample_timeouts_total", domain=healthy, sampler=sampler) == 0
        assert value(first, "libvirt_domain_sample_stale", domain="b", sampler=sampler) == 1
        # Read after the call's deadline; the margin takes a timer that fires a little early.
        in_flight = value(first, "libvirt_domain_call_in_flight_seconds", domain="b", sampler=sampler)
        assert in_flight > DEADLINE / 2  # type: ignore[operator]
    assert value(first, "libvirt_domain_monitor_busy_seconds", domain="b") > DEADLINE / 2  # type: ignore[operator]

    second = harness.cycle(exporter.bulk)
    assert value(second, "libvirt_domain_sample_skipped_total", domain="b", sampler="bulk") == 1
    assert value(second, "libvirt_domain_sample_skipped_total", domain="b", sampler="block") == 1
    assert host.calls[("b", "domainListGetStats")] == 2, "a second call was sent to a stuck domain"
    vcpu_time = "libvirt_domain_vcpu_time_seconds_total"
    fresh_vcpu = value(second, vcpu_time, domain="a", vcpu="0")
    assert fresh_vcpu == 2.0  # read by each cycle: first host-wide, then by one call of its own

    host.thaw("b")
    wait_for(lambda: not exporter.runner.is_in_flight(HOST_WIDE_DISKS))
    after_late = harness.scrape()
    assert value(after_late, vcpu_time, domain="a", vcpu="0") == fresh_vcpu, (
        "the late host-wide result overwrote fresher values"
    )
    assert value(after_late, vcpu_time, domain="b", vcpu="0") is not None

    recovered = harness.cycle(exporter.bulk)
    assert value(recovered, "libvirt_domain_sample_stale", domain="b", sampler="bulk") == 0
    assert value(recovered, "libvirt_domain_memory_rss_bytes", domain="b") == 524_288 * 1024


def test_a_stuck_host_wide_call_is_blamed_on_the_monitor_it_made_busy_alone() -> None:
    """A healthy VM whose monitor another sampler holds for a moment is not the one to blame."""

    def entry(name: str, busy_for: float | None) -> DomainEntry:
        free = busy_for is None
        return DomainEntry(name, None, 1, free, busy_for or 0.0, False, None)

    stuck = entry("stuck", 1.9)
    block_read = entry("block-read", 0.004)
    busy_before_the_call = entry("busy-before", 40.0)
    entries = [entry("free", None), block_read, stuck, busy_before_the_call]
    assert waited_on(entries, call_age=2.0) == stuck
    assert waited_on([entry("free", None), busy_before_the_call], call_age=2.0) is None


def test_error_on_one_domain_does_not_hide_the_others(harness: Harness) -> None:
    """A failing host-wide call is sent again domain by domain: the error costs the one domain."""
    harness.host.domains["a"].failures["domainListGetStats"] = FakeLibvirtError(
        "cannot acquire state change lock"
    )
    harness.cycle(harness.exporter.bulk)  # the first reads the sizes, domain by domain
    series = harness.cycle(harness.exporter.bulk)
    for sampler in ("bulk", "block"):
        assert value(series, "libvirt_domain_sample_errors_total", domain="a", sampler=sampler) == 2
        assert stale(series, "a", sampler)
    for healthy in "bc":
        assert value(series, "libvirt_domain_block_read_requests_total", domain=healthy, device="vda") == 2
        assert not stale(series, healthy, "bulk") and not stale(series, healthy, "block")


def test_disk_sizes_that_cannot_be_read_cost_the_other_values_nothing(harness: Harness) -> None:
    """blockInfo failing on a domain's disk: its sizes count an error and are asked again when due
    again, not at every cycle; its other values, and the other domains', stay fresh."""
    host = harness.host
    host.domains["a"].failures["blockInfo"] = FakeLibvirtError("internal error: unable to size the disk")
    first = harness.cycle(harness.exporter.bulk)
    second = harness.cycle(harness.exporter.bulk)
    assert value(first, "libvirt_domain_sample_errors_total", domain="a", sampler="block_info") == 1
    assert stale(second, "a", "block_info") and host.calls[("a", "blockInfo")] == 1
    for series in (first, second):
        assert not stale(series, "a", "bulk") and not stale(series, "a", "block")
        for healthy in "bc":
            assert not stale(series, healthy, "block_info")


def test_vanished_domain_loses_its_series_on_the_next_cycle(harness: Harness) -> None:
    harness.cycle(harness.exporter.bulk)
    harness.cycle(harness.exporter.bulk)
    del harness.host.domains["c"]
    series = harness.cycle(harness.exporter.bulk)
    assert domains_in(series) == {"a", "b"}


def test_lifecycle_events_update_the_domain_set_between_cycles(harness: Harness) -> None:
    exporter, host = harness.exporter, harness.host
    harness.cycle(exporter.bulk)
    host.remove("c")
    wait_for(lambda: "c" not in domains_in(harness_parse(harness)))
    host.add(FakeDomain("d", 7))
    wait_for(lambda: "d" in domains_in(harness_parse(harness)))
    assert value(harness_parse(harness), "libvirt_domain_sample_stale", domain="d", sampler="bulk") == 1


def harness_parse(harness: Harness) -> Series:
    """What a scrape would get now, without rendering a new snapshot first."""
    return parse(plain_text(harness.exporter.snapshot.current))


def test_closed_connection_sets_up_to_zero_and_reconnect_restores_it(harness: Harness) -> None:
    exporter, host = harness.exporter, harness.host
    runner = gevent.spawn(exporter.connection.run)
    last_cpu = value(harness.cycle(exporter.bulk), CPU_TIME, domain="a")
    host.refuse = True
    host.stop_libvirtd()
    wait_for(lambda: value(harness_parse(harness), "libvirt_up") == 0)
    stale_values = harness.cycle(exporter.bulk)
    assert value(stale_values, "libvirt_sampler_errors_total", sampler="bulk") == 1
    assert value(stale_values, CPU_TIME, domain="a") == last_cpu, (
        "the last values must still be served while libvirtd is away"
    )
    host.refuse = False
    wait_for(lambda: value(harness_parse(harness), "libvirt_up") == 1)
    series = harness.cycle(exporter.bulk)
    assert value(series, "libvirt_connection_reconnects_total") == 1
    assert value(series, CPU_TIME, domain="a") > last_cpu  # type: ignore[operator]
    runner.kill()


def test_a_stuck_call_keeps_its_connection_to_itself(harness: Harness) -> None:
    """libvirt stalls calls on a connection that holds a stuck one (measured): no call shares its
    connection with another, so none waits behind a stuck call."""
    exporter, host = harness.exporter, harness.host
    host.freeze("b")
    harness.cycle(exporter.bulk)
    (stuck_on,) = [conn for conn in host.open_connections() if conn.in_flight]
    served_while_stuck = stuck_on.served.copy()
    for _ in range(3):
        harness.cycle(exporter.bulk)
        series = harness.cycle(exporter.bulk)
    assert stuck_on.served == served_while_stuck, "a call went to the connection of the stuck call"
    assert max(conn.most_in_flight for conn in host.connections) == 1
    assert not stale(series, "a", "block") and not stale(series, "c", "block")
    assert value(series, "libvirt_connection_reconnects_total") == 0
    assert stuck_on.alive, "closed under its stuck call"
    host.thaw("b")
    wait_for(lambda: not exporter.runner.in_flight())
    open_lanes = len(host.open_connections()) - 1  # the main connection carries no sampler call
    assert open_lanes <= exporter.runner.max_concurrent


def test_domains_are_looked_up_once_per_connection(harness: Harness) -> None:
    """A call's connection is mostly not the survey's, so it looks its domain up by UUID: once, not
    at every call."""
    exporter, host = harness.exporter, harness.host
    for _ in range(5):
        harness.cycle(exporter.bulk)
        harness.cycle(exporter.bulk)
    lanes = len(host.connections) - 1
    lookups = [host.calls[(name, "lookupByUUID")] for name in host.domains]
    assert sum(lookups) > 0 and max(lookups) <= lanes


@pytest.mark.parametrize("first_cycle", [True, False])
def test_healthy_domains_stay_fresh_when_several_freeze_at_once(first_cycle: bool) -> None:
    """A dead NFS server freezes many VMs at once. Their stuck calls hold the requests libvirtd
    serves one connection (5), so the calls of the cycle that wait for a slot meanwhile must go to
    the fresh connection rather than queue behind them past their deadline. In the first cycle
    each domain gets a call of its own (its disks' sizes are due), in the others the host-wide call."""
    frozen = [FakeDomain(f"frozen{i}", i) for i in range(6)]
    healthy = [FakeDomain(f"healthy{i}", 10 + i) for i in range(6)]
    host = FakeHost(frozen + healthy)
    harness = Harness(host, make_config())
    exporter = harness.exporter
    try:
        if not first_cycle:
            harness.cycle(exporter.bulk)
        for domain in frozen:
            host.freeze(domain.name)
        series = harness.cycle(exporter.bulk)
        timeouts = "libvirt_domain_sample_timeouts_total"
        for sampler in ("bulk", "block"):
            for domain in healthy:
                assert value(series, timeouts, domain=domain.name, sampler=sampler) == 0
                assert not stale(series, domain.name, sampler), f"{domain.name} went stale"
            timed_out = sum(value(series, timeouts, domain=d.name, sampler=sampler) or 0 for d in frozen)
            assert timed_out == len(frozen) if first_cycle else timed_out >= 1
    finally:
        host.thaw_all()
        exporter.stop()


def test_each_hung_vm_holds_one_stuck_call_so_that_many_leave_the_healthy_fresh() -> None:
    """A sampler sends no call to a VM whose monitor is stuck on another sampler's call: it would
    only wait for the job and hold one more thread, and with more hung VMs than half the stuck-call
    cap every call, the healthy VMs' too, would be refused."""
    hung = [FakeDomain(f"hung{i}", i) for i in range(8)]
    healthy = [FakeDomain(f"healthy{i}", 10 + i) for i in range(4)]
    host = FakeHost(hung + healthy)
    harness = Harness(host, make_config(max_stuck=10))  # fewer than two per hung VM
    exporter = harness.exporter
    try:
        for domain in hung:
            host.freeze(domain.name)
        harness.cycle(exporter.bulk)  # the bulk calls find the hung VMs and get stuck on them
        wait_for(lambda: all(time.monotonic() - d.monitor_busy_since > DEADLINE for d in hung))
        harness.cycle(exporter.bulk)
        series = harness.cycle(exporter.bulk)
        assert exporter.runner.stuck_count() <= len(hung) + 1  # one each, and the host-wide call
        assert not any(host.calls[(d.name, "blockInfo")] for d in hung)
        for domain in healthy:
            for sampler in ("bulk", "block"):
                assert not stale(series, domain.name, sampler), f"{domain.name} went stale ({sampler})"
        for domain in hung:
            assert stale(series, domain.name, "block")
    finally:
        host.thaw_all()
        exporter.stop()


def test_a_connection_closed_without_its_close_callback_is_noticed_by_the_next_failed_call(
    harness: Harness,
) -> None:
    exporter, host = harness.exporter, harness.host
    harness.cycle(exporter.bulk)
    host.refuse = True
    host.stop_libvirtd(close_callbacks=False)
    harness.cycle(exporter.bulk)  # its calls fail with "client socket is closed"
    wait_for(lambda: not exporter.connection.up)
    assert value(harness.scrape(), "libvirt_up") == 0


def test_an_unresponsive_libvirtd_is_noticed_by_the_liveness_probe(fake_host: FakeHost) -> None:
    connection = MainConnection(
        "qemu:///system",
        CallRunner(max_concurrent=2, max_stuck=4),
        connect_deadline=1.0,
        opener=fake_host.open,
        unresponsive_after=0.3,
    )
    supervisor = gevent.spawn(connection.run)
    wait_for(lambda: connection.up)
    fake_host.responsive.clear()  # libvirtd frozen: no close callback, calls just wait
    wait_for(lambda: not connection.up)
    fake_host.responsive.set()
    wait_for(lambda: connection.up, timeout=10)
    assert connection.reconnects == 1
    supervisor.kill()


def test_stats_left_partial_by_a_job_held_for_a_moment_are_read_again_complete(harness: Harness) -> None:
    """NOWAIT answers without the balloon figures while another call (often the block sampler's)
    holds the domain's job; those must not replace complete values."""
    exporter, host = harness.exporter, harness.host
    harness.cycle(exporter.bulk)  # the first reads the disks' sizes too, domain by domain
    host.domains["b"].job_holders += 1  # another call holds b's job, without a busy monitor
    series = harness.cycle(exporter.bulk)
    host.domains["b"].job_holders -= 1
    for name in "abc":
        assert value(series, "libvirt_domain_memory_rss_bytes", domain=name) == 524_288 * 1024
        assert value(series, "libvirt_domain_block_read_requests_total", domain=name, device="vda") == 2
    assert host.calls[("b", "domainListGetStats")] == 3  # NOWAIT in the host-wide call, then waiting


def test_domain_xml_is_read_once_and_again_only_after_an_event(harness: Harness) -> None:
    exporter, host = harness.exporter, harness.host
    for _ in range(3):
        harness.cycle(exporter.bulk)
    assert [host.calls[(name, "XMLDesc")] for name in "abc"] == [1, 1, 1]
    host.domains["b"].disks = ("vda", "vdb")  # a disk hot-plugged: libvirt sends a device event
    host.emit_event(host.domains["b"])
    wait_for(lambda: host.calls[("b", "XMLDesc")] == 2)
    series = harness.cycle(exporter.bulk)
    assert value(series, "libvirt_domain_block_read_requests_total", domain="b", device="vdb") is not None
    assert [host.calls[(name, "XMLDesc")] for name in "ac"] == [1, 1]


def test_a_hung_storage_pool_keeps_its_last_values_and_the_others_stay_current(harness: Harness) -> None:
    exporter, host = harness.exporter, harness.host
    nfs = FakeStoragePool("nfs", [2, 10 * 2**30, 2**30, 9 * 2**30])
    host.pools.append(nfs)
    harness.cycle(exporter.storage_pools)
    nfs.reachable.clear()
    host.pools[0].pool_info[2] += 2**30  # the local pool fills up meanwhile
    try:
        series = harness.cycle(exporter.storage_pools)
    finally:
        nfs.reachable.set()
    assert value(series, "libvirt_storage_pool_allocation_bytes", pool="default") == 41 * 2**30
    assert value(series, "libvirt_storage_pool_allocation_bytes", pool="nfs") == 2**30
    host.pools.remove(nfs)
    wait_for(lambda: not exporter.runner.is_in_flight(CallKey("storage_pool", Pool("nfs"))))
    assert value(harness.cycle(exporter.storage_pools), "libvirt_storage_pool_state", pool="nfs") is None


def test_a_storage_pool_whose_call_hangs_is_flagged_stale_with_its_timeout_counted(
    harness: Harness,
) -> None:
    """A pool on a dead NFS server is flagged as a hung VM is: stale, its timeout counted, its
    stuck call shown in flight (the stuck-call alert), and no second call while it hangs."""
    exporter, host = harness.exporter, harness.host
    nfs = FakeStoragePool("nfs", [2, 10 * 2**30, 2**30, 9 * 2**30])
    host.pools.append(nfs)
    fresh = harness.cycle(exporter.storage_pools)
    assert value(fresh, "libvirt_storage_pool_sample_stale", pool="nfs", sampler="storage_pool") == 0
    nfs.reachable.clear()
    try:
        hung = harness.cycle(exporter.storage_pools)
        again = harness.cycle(exporter.storage_pools)
        labels = {"pool": "nfs", "sampler": "storage_pool"}
        assert value(hung, "libvirt_storage_pool_sample_stale", **labels) == 1
        assert value(hung, "libvirt_storage_pool_sample_timeouts_total", **labels) == 1
        assert value(again, "libvirt_storage_pool_sample_skipped_total", **labels) == 1
        in_flight = [value(s, "libvirt_storage_pool_call_in_flight_seconds", **labels) for s in (hung, again)]
        assert 0 < in_flight[0] < in_flight[1]  # type: ignore[operator]
        assert value(again, "libvirt_storage_pool_sample_stale", pool="default", sampler="storage_pool") == 0
        assert value(again, "libvirt_storage_pool_allocation_bytes", pool="nfs") == 2**30, "last values kept"
    finally:
        nfs.reachable.set()
    wait_for(lambda: not exporter.runner.is_in_flight(CallKey("storage_pool", Pool("nfs"))))
    recovered = harness.cycle(exporter.storage_pools)
    assert value(recovered, "libvirt_storage_pool_sample_stale", pool="nfs", sampler="storage_pool") == 0
    assert (
        value(recovered, "libvirt_storage_pool_call_in_flight_seconds", pool="nfs", sampler="storage_pool")
        == 0
    )


def test_a_connection_lost_while_a_cycle_starts_its_calls_kills_no_greenlet(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """The calls of a cycle go to the connection it started on: one lost meanwhile makes them fail
    as libvirt errors do, not the greenlets that send them (gevent would print their tracebacks)."""
    exporter = harness.exporter
    harness.cycle(exporter.bulk)
    gevent.spawn(exporter.connection.mark_down, "eof")  # runs once the cycle has spawned its calls
    harness.cycle(exporter.bulk)
    assert "Traceback" not in capsys.readouterr().err


def test_healthy_values_stay_fresh_while_the_host_wide_call_waits_on_a_newly_frozen_vm(
    fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk cycle whose host-wide call hits a VM frozen since the last cycle waits out its
    deadline and surveys the host before it reads the other domains one by one: their values of
    the cycle before must not be served stale meanwhile."""
    harness = Harness(fake_host, make_config(deadline=0.2, interval=0.3))
    bulk = harness.exporter.bulk
    harness.cycle(bulk)
    fake_host.freeze("b")
    served_meanwhile: list[Series] = []
    sample_each = bulk._sample_each

    def scrape_then_sample(*args: Any) -> None:
        served_meanwhile.append(harness.scrape())
        sample_each(*args)

    monkeypatch.setattr(bulk, "_sample_each", scrape_then_sample)
    gevent.sleep(bulk.config.interval)  # the next cycle starts an interval after this one
    after = harness.cycle(bulk)
    assert value(after, "libvirt_domain_sample_timeouts_total", domain="b", sampler="bulk") == 1
    for series in [*served_meanwhile, after]:
        assert not stale(series, "a", "bulk") and not stale(series, "c", "bulk")


def test_calls_stuck_at_the_same_moment_each_keep_one_connection_and_log_no_failure(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    exporter, host = harness.exporter, harness.host
    host.freeze("a")
    host.freeze("b")
    series = harness.cycle(exporter.bulk)  # both calls run past their deadline together
    assert len([conn for conn in host.open_connections() if conn.in_flight]) == 2
    assert not stale(series, "c", "block")
    assert value(series, "libvirt_up") == 1
    assert "cannot connect" not in caplog.text and "connection lost" not in caplog.text


def test_a_vm_that_hangs_holds_one_call_when_two_samplers_reach_it_at_once(harness: Harness) -> None:
    """Before any survey has seen a newly hung VM's monitor busy for long, a second sampler still
    sends it a call. On real libvirt that call would wait 30 s for the domain's job in one of
    libvirtd's 20 workers: it waits for the first call instead, and is skipped once that one is stuck."""
    exporter, host = harness.exporter, harness.host
    hung = host.domains["b"]
    hung.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED}  # a migration: the job sampler reads it
    exporter.refresh_inventory()
    host.freeze("b")
    job = gevent.spawn(harness.cycle_without_survey, exporter.job)
    wait_for(lambda: hung.monitor_waiters == 1)  # the job call waits in the frozen monitor
    series = harness.cycle(exporter.bulk)  # its survey finds the monitor busy for a moment only
    job.join()
    assert hung.monitor_waiters == 1
    assert exporter.runner.stuck_count() == 1
    assert value(series, "libvirt_domain_sample_skipped_total", domain="b", sampler="bulk") == 1
    assert not stale(series, "a", "bulk") and not stale(series, "c", "bulk")


@pytest.mark.parametrize("block_group", [True, False])
def test_each_disk_gets_its_own_io_counters_from_one_read_or_disk_by_disk(block_group: bool) -> None:
    """The block stats group reads every disk's counters at once; a driver whose bulk stats lack it
    (libvirt's test driver, which `make run` falls back to) is asked disk by disk."""
    host = FakeHost([FakeDomain("a", 1, disks=("vda", "vdb"), block_group=block_group)])
    harness = Harness(host, make_config())
    try:
        series = harness.cycle(harness.exporter.bulk)
        reads = {
            device: value(series, "libvirt_domain_block_read_requests_total", domain="a", device=device)
            for device in ("vda", "vdb")
        }
        assert None not in reads.values() and reads["vda"] != reads["vdb"], "a disk got another's counters"
        assert host.calls[("a", "blockStatsFlags")] == (0 if block_group else 2)
        assert value(series, "libvirt_domain_block_capacity_bytes", domain="a", device="vdb") == 64 * 2**20
    finally:
        harness.exporter.stop()


def test_disk_sizes_are_read_on_their_own_cadence_and_counters_every_cycle(harness: Harness) -> None:
    """The counters come with every bulk cycle's host-wide call; the sizes (a call of the domain's
    own, a blockInfo per disk) once per --sampler.block_info.interval, and at once for a disk
    hot-plugged meanwhile. The sizes' timestamp says how old they are, and they are not stale."""
    exporter, host = harness.exporter, harness.host
    first = harness.cycle(exporter.bulk)
    cycles = [harness.cycle(exporter.bulk) for _ in range(3)]
    reads = "libvirt_domain_block_read_requests_total"
    sizes_taken = "libvirt_domain_sample_timestamp_seconds"
    for name in "abc":
        assert host.calls[(name, "blockInfo")] == 1
        assert [value(s, reads, domain=name, device="vda") for s in (first, *cycles)] == [1, 2, 3, 4]
        assert value(cycles[-1], sizes_taken, domain=name, sampler="block_info") == value(
            first, sizes_taken, domain=name, sampler="block_info"
        )
        assert not stale(cycles[-1], name, "block_info") and not stale(cycles[-1], name, "block")
    host.domains["b"].disks = ("vda", "vdb")
    host.emit_event(host.domains["b"])
    wait_for(lambda: host.calls[("b", "XMLDesc")] == 2)
    plugged = harness.cycle(exporter.bulk)
    assert value(plugged, "libvirt_domain_block_capacity_bytes", domain="b", device="vdb") == 64 * 2**20
    assert host.calls[("b", "blockInfo")] == 1 + 2 and host.calls[("a", "blockInfo")] == 1


def test_disk_sizes_fall_due_spread_over_their_interval() -> None:
    """After the first read, each domain's sizes fall due after a share of the interval its name
    picks, so that the domains' own calls come a few per cycle, not all in one."""
    host = FakeHost([FakeDomain(f"vm{i}", i + 1) for i in range(40)])
    harness = Harness(host, make_config(sizes_interval=1000.0))
    try:
        harness.cycle(harness.exporter.bulk)
        sizes, now = harness.exporter.block_info, time.monotonic()
        due = [
            sum(sizes.due(entry, now + share * 1000.0) for entry in sizes.entries())
            for share in (0.25, 0.5, 1)
        ]
        assert 0 < due[0] < due[1] < due[2] == 40, due
        assert 10 <= due[1] <= 30, "about half fall due in the first half of the interval"
    finally:
        harness.exporter.stop()


def test_cpu_times_come_from_the_cgroup_once_libvirt_agrees_with_it(harness: Harness) -> None:
    """virDomainGetCPUStats is asked once per QEMU process, and its counter read from the host
    from then on: the series go on growing, and libvirtd is not asked again."""
    host = harness.host
    first = harness.cycle(harness.exporter.bulk)
    second = harness.cycle(harness.exporter.bulk)
    for name in "abc":
        assert host.calls[(name, "getCPUStats")] == 1
        assert value(second, CPU_TIME, domain=name) > value(first, CPU_TIME, domain=name)  # type: ignore[operator]
    host.remove("b")
    host.add(FakeDomain("b", 7))  # restarted: a new QEMU process, its cgroup checked again
    harness.cycle(harness.exporter.bulk)
    assert host.calls[("b", "getCPUStats")] == 2
    assert host.calls[("a", "getCPUStats")] == 1


def host_not_giving_libvirts_counters(why: str, domains: list[FakeDomain]) -> FakeHost:
    """A host whose cgroups this process cannot read (`unreadable`: cgroup v1, a container), or
    whose cgroups count something else than libvirt does (`another counter`)."""
    host = FakeHost(domains)
    if why == "unreadable":
        host.cgroups_readable = False
    else:
        host.cgroup_skew_ns = 10**12
    return host


@pytest.mark.parametrize("why", ["unreadable", "another counter"])
def test_cpu_times_come_from_libvirt_where_the_host_cgroup_is_not_the_domains(why: str) -> None:
    """A cgroup this process cannot read (cgroup v1, a container), or one that counts something
    else than libvirt does: libvirt is asked at every survey, and its values are exported."""
    host = host_not_giving_libvirts_counters(why, [FakeDomain("a", 1)])
    harness = Harness(host, make_config())
    try:
        series = harness.cycle(harness.exporter.bulk)
        harness.cycle(harness.exporter.bulk)
        assert host.calls[("a", "getCPUStats")] == 3  # the harness' first survey and two rounds
        assert value(series, CPU_TIME, domain="a") < 1000, "the host's counter was exported"  # type: ignore[operator]
    finally:
        harness.exporter.stop()


VCPU_TIME = "libvirt_domain_vcpu_time_seconds_total"
VCPU_GROUP = libvirt.VIR_DOMAIN_STATS_VCPU


def asked_for_vcpus(host: FakeHost) -> bool:
    return any(groups & VCPU_GROUP for groups in host.stat_groups_asked)


def test_vcpu_figures_come_from_the_host_once_libvirt_agrees_with_it(harness: Harness) -> None:
    """virDomainGetVcpus is asked once per QEMU process, and the vCPUs' figures read from the host
    from then on: no call asks for the `vcpu` group, which would make every QEMU answer on its
    monitor, and the series go on growing."""
    host = harness.host
    host.stat_groups_asked.clear()
    first = harness.cycle(harness.exporter.bulk)
    second = harness.cycle(harness.exporter.bulk)
    assert not asked_for_vcpus(host)
    for name in "abc":
        assert host.calls[(name, "vcpus")] == 1
        for vcpu in ("0", "1"):
            assert value(second, VCPU_TIME, domain=name, vcpu=vcpu) > value(
                first, VCPU_TIME, domain=name, vcpu=vcpu
            )  # type: ignore[operator]
        assert value(second, "libvirt_domain_vcpus_current", domain=name) == 2
        assert value(second, "libvirt_domain_vcpus_maximum", domain=name) == 2
    host.remove("b")
    host.add(FakeDomain("b", 7, vcpus=3))  # restarted: a new QEMU process, checked again
    third = harness.cycle(harness.exporter.bulk)
    assert host.calls[("b", "vcpus")] == 2 and host.calls[("a", "vcpus")] == 1
    assert value(third, VCPU_TIME, domain="b", vcpu="2") is not None
    assert not asked_for_vcpus(host)


@pytest.mark.parametrize("why", ["unreadable", "another counter"])
def test_vcpu_figures_come_from_libvirt_where_the_host_does_not_give_them(why: str) -> None:
    """vCPU threads this process cannot find (cgroup v1, a container), or times that are not
    libvirt's: the host-wide call asks for the `vcpu` group, and libvirt's figures are exported.
    virDomainGetVcpus is not asked where there is nothing to check, nor at every survey where the
    host's figures were not libvirt's."""
    host = host_not_giving_libvirts_counters(why, [FakeDomain("a", 1), FakeDomain("b", 2)])
    harness = Harness(host, make_config())
    try:
        harness.cycle(harness.exporter.bulk)
        series = harness.cycle(harness.exporter.bulk)
        assert asked_for_vcpus(host)
        assert host.calls[("a", "vcpus")] == (0 if why == "unreadable" else 1)
        assert value(series, VCPU_TIME, domain="a", vcpu="0") < 1000, "the host's counter was exported"  # type: ignore[operator]
    finally:
        harness.exporter.stop()


def test_a_host_whose_vcpu_figures_were_not_libvirts_is_checked_again_later(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A QEMU caught starting up may show fewer vCPU threads than it will: the check is made
    again once VCPUS_RECHECK_SECONDS have passed, and from then on the host's figures are read."""
    host = harness.host
    host.cgroup_skew_ns = 10**12
    host.add(FakeDomain("d", 7))  # started: a new QEMU process, checked at the next survey
    harness.cycle(harness.exporter.bulk)
    assert host.calls[("d", "vcpus")] == 1
    host.cgroup_skew_ns = 0
    harness.cycle(harness.exporter.bulk)
    assert host.calls[("d", "vcpus")] == 1, "checked again before its time"
    monkeypatch.setattr(host_counters, "VCPUS_RECHECK_SECONDS", 0.0)
    harness.cycle(harness.exporter.bulk)
    host.stat_groups_asked.clear()
    harness.cycle(harness.exporter.bulk)
    assert host.calls[("d", "vcpus")] == 2
    assert not asked_for_vcpus(host)


def test_vcpu_figures_the_host_stops_giving_come_from_libvirt_and_are_checked_again(harness: Harness) -> None:
    """A vCPU unplugged while the survey reads: the round's call asks libvirt for the `vcpu` group,
    the next survey checks the host again, and where it agrees, reads it from then on."""
    host = harness.host
    harness.cycle(harness.exporter.bulk)
    host.cgroups_readable = False
    host.stat_groups_asked.clear()
    series = harness.cycle(harness.exporter.bulk)
    assert asked_for_vcpus(host)
    assert value(series, VCPU_TIME, domain="a", vcpu="0") is not None
    host.cgroups_readable = True
    harness.cycle(harness.exporter.bulk)
    host.stat_groups_asked.clear()
    harness.cycle(harness.exporter.bulk)
    assert not asked_for_vcpus(host)
    assert host.calls[("a", "vcpus")] == 2


def test_kvm_statistics_in_the_vcpu_group_are_not_kept(harness_without_cgroups: Harness) -> None:
    """libvirt 9.0's vcpu group carries QEMU's KVM statistics, which no family exports: they are
    dropped where the answer is split, the vCPU figures exported stay."""
    harness = harness_without_cgroups
    series = harness.cycle(harness.exporter.bulk)
    sample = harness.exporter.store.sample(SamplerName.BULK, Domain("a"))
    assert sample is not None
    assert "vcpu.0.time" in sample.values
    assert "vcpu.0.exits.sum" not in sample.values and "vcpu.0.blocking.cur" not in sample.values
    assert value(series, "libvirt_domain_vcpu_time_seconds_total", domain="a", vcpu="0") is not None

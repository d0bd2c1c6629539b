"""Hung VMs found without a call to them: a stopped QEMU, storage that does not answer. Whatever the
number of hung VMs, the values that need no QEMU stay fresh for all, the healthy VMs stay fresh in
every sampler, and no call is sent that would only get stuck."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libvirt_exporter.calls import CallKey, Storage
from tests.unit.conftest import Harness, Series, make_config, value, wait_for
from tests.unit.fake_libvirt import IMAGES, FakeDomain, FakeHost

NFS = "/mnt/nfs"
SAMPLERS = ("basic", "bulk", "block", "block_info")


def stale(series: Series, domain: str, sampler: str) -> bool:
    return value(series, "libvirt_domain_sample_stale", domain=domain, sampler=sampler) == 1


def signal(series: Series, domain: str, name: str) -> float | None:
    return value(series, "libvirt_domain_hang_signal", domain=domain, signal=name)


def round_of(harness: Harness) -> Series:
    """One tick of the exporter: the survey, then the bulk sampler's cycle (the disks' values too)."""
    return harness.cycle(harness.exporter.bulk)


@pytest.fixture
def outage_host() -> Iterator[FakeHost]:
    """Three healthy VMs, three whose QEMU will be stopped, three on storage that will die."""
    domains = [FakeDomain(f"ok{i}", i) for i in range(3)]
    domains += [FakeDomain(f"stopped{i}", 10 + i) for i in range(3)]
    domains += [FakeDomain(f"nfs{i}", 20 + i, storage=NFS) for i in range(3)]
    host = FakeHost(domains)
    host.mounts.append(NFS)
    yield host
    host.thaw_all()


def outage(host: FakeHost) -> None:
    for i in range(3):
        host.stop_qemu(f"stopped{i}")
    host.storage_outage(NFS)


def test_a_stopped_qemu_gets_no_call_and_keeps_its_basic_values_fresh(outage_host: FakeHost) -> None:
    harness = Harness(outage_host, make_config())
    round_of(harness)
    monitor_calls_before = outage_host.calls[("stopped0", "domainListGetStats")]
    outage_host.stop_qemu("stopped0")
    series = round_of(harness)
    assert outage_host.calls[("stopped0", "domainListGetStats")] == monitor_calls_before
    assert outage_host.calls[("stopped0", "blockInfo")] == 1, "only the call of the round before"
    assert signal(series, "stopped0", "qemu_stopped") == 1 and signal(series, "ok0", "qemu_stopped") == 0
    assert not stale(series, "stopped0", "basic")
    assert stale(series, "stopped0", "bulk") and stale(series, "stopped0", "block")
    assert value(series, "libvirt_sampler_threads", state="stuck") == 0
    harness.exporter.stop()


def test_vms_on_dead_storage_get_no_disk_call_and_keep_what_needs_no_disk(outage_host: FakeHost) -> None:
    harness = Harness(outage_host, make_config())
    round_of(harness)
    probes_before = outage_host.probes[NFS]
    outage_host.storage_outage(NFS)
    first = round_of(harness)
    second = round_of(harness)
    for series in (first, second):
        assert value(series, "libvirt_storage_sample_stale", storage=NFS, sampler="storage") == 1
        assert value(series, "libvirt_storage_sample_stale", storage=IMAGES, sampler="storage") == 0
        assert value(series, "libvirt_storage_domains", storage=NFS) == 3
        for i in range(3):
            name = f"nfs{i}"
            assert signal(series, name, "storage_unresponsive") == 1
            assert stale(series, name, "block")
            assert not stale(series, name, "basic") and not stale(series, name, "bulk")
            assert outage_host.calls[(name, "blockInfo")] == 1, "only the call before the outage"
    in_flight = [
        value(s, "libvirt_storage_call_in_flight_seconds", storage=NFS, sampler="storage")
        for s in (first, second)
    ]
    assert 0 < in_flight[0] < in_flight[1]  # type: ignore[operator]
    assert outage_host.probes[NFS] == probes_before + 1, "one probe stuck since the outage, never a second"
    assert value(second, "libvirt_sampler_threads", state="stuck") == 0, "no libvirt call stuck at all"

    outage_host.storage_back(NFS)
    wait_for(lambda: not harness.exporter.storage.runner.is_in_flight(CallKey("storage", Storage(NFS))))
    recovered = round_of(harness)
    assert value(recovered, "libvirt_storage_sample_stale", storage=NFS, sampler="storage") == 0
    for i in range(3):
        assert not stale(recovered, f"nfs{i}", "block")
        assert signal(recovered, f"nfs{i}", "storage_unresponsive") == 0
    harness.exporter.stop()


def test_more_hung_vms_than_the_stuck_call_cap_leave_every_healthy_vm_fresh(outage_host: FakeHost) -> None:
    harness = Harness(outage_host, make_config(max_stuck=2))  # fewer than the 6 hung VMs
    round_of(harness)
    outage(outage_host)
    for _ in range(3):
        series = round_of(harness)
        for i in range(3):
            for sampler in SAMPLERS:
                assert not stale(series, f"ok{i}", sampler), f"ok{i} went stale ({sampler})"
            assert not stale(series, f"stopped{i}", "basic") and not stale(series, f"nfs{i}", "basic")
            assert value(series, "libvirt_domain_cpu_time_seconds_total", domain=f"stopped{i}") is not None
        assert value(series, "libvirt_sampler_threads", state="stuck") == 0
    harness.exporter.stop()


def test_an_exporter_started_in_the_middle_of_an_outage_sends_no_call_that_would_hang(
    outage_host: FakeHost,
) -> None:
    outage(outage_host)
    harness = Harness(outage_host, make_config())
    series = round_of(harness)
    for i in range(3):
        assert outage_host.calls[(f"nfs{i}", "blockInfo")] == 0
        assert outage_host.calls[(f"stopped{i}", "domainListGetStats")] == 0
        assert stale(series, f"nfs{i}", "block") and not stale(series, f"nfs{i}", "bulk")
        for sampler in SAMPLERS:
            assert not stale(series, f"ok{i}", sampler)
    assert value(series, "libvirt_sampler_threads", state="stuck") == 0
    harness.exporter.stop()


def test_the_survey_goes_on_when_calls_stuck_on_hung_vms_fill_the_cap() -> None:
    """VMs hung with no visible signal each hold a stuck call; the survey, which cannot hang on
    QEMU, still runs, so every domain's basic values stay fresh and storage is still probed."""
    host = FakeHost([FakeDomain(f"hung{i}", i) for i in range(4)] + [FakeDomain("ok", 10)])
    harness = Harness(host, make_config(max_stuck=2))
    try:
        for i in range(4):
            host.freeze(f"hung{i}")
        for _ in range(3):
            series = round_of(harness)
        assert value(series, "libvirt_sampler_threads", state="stuck") == 2
        assert value(series, "libvirt_sampler_errors_total", sampler="basic") == 0
        for name in ["ok", *(f"hung{i}" for i in range(4))]:
            assert not stale(series, name, "basic"), name
        assert value(series, "libvirt_storage_sample_stale", storage=IMAGES, sampler="storage") == 0
    finally:
        host.thaw_all()
        harness.exporter.stop()


@pytest.mark.parametrize("sizes_due", [False, True])
def test_storage_that_dies_after_the_rounds_probe_holds_at_most_one_wave_of_calls(sizes_due: bool) -> None:
    """The disk-touching calls already sent when the storage dies get stuck. The host-wide call
    with the block group stops at the first VM on it: the survey that finds which VM it waits on
    probes the storage again, and the other VMs on it are asked for what needs no disk only. When
    the sizes are due, each VM has a call of its own: the first to run past its deadline has the
    storage probed at once, and the calls still queued for it are not sent."""
    host = FakeHost([FakeDomain(f"nfs{i}", i, storage=NFS) for i in range(12)] + [FakeDomain("ok", 20)])
    host.mounts.append(NFS)
    config = make_config()
    harness = Harness(host, config)
    try:
        if not sizes_due:
            round_of(harness)  # reads the sizes, due again in an hour
        harness.exporter.basic.refresh()  # the round's probe finds the storage answering
        host.storage_outage(NFS)
        series = harness.cycle_without_survey(harness.exporter.bulk)
        stuck = value(series, "libvirt_sampler_threads", state="stuck")
        assert stuck == (config.max_concurrent_calls if sizes_due else 1), (
            "the calls sent before one timed out"
        )
        sent = sum(host.calls[(f"nfs{i}", "domainListGetStats")] for i in range(12))
        assert sent == (stuck if sizes_due else 12 + 1 + 11), (
            "with the block group: those stuck; without: the rest"
        )
        assert signal(series, "nfs11", "storage_unresponsive") == 1
        assert not stale(series, "ok", "block") and not stale(series, "ok", "block_info")
        assert not stale(series, "nfs11", "bulk") or sizes_due, (
            "a VM on dead storage answers what needs no disk"
        )
        assert value(round_of(harness), "libvirt_sampler_threads", state="stuck") == stuck
    finally:
        host.thaw_all()
        harness.exporter.stop()

"""The exporter against a real libvirtd with real QEMU VMs: one frozen, libvirtd restarted.

Timing bounds are the issue's ("within one deadline plus one interval", "within two intervals")
plus SCHEDULING_SLACK for a slow, noisy 2-core machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from libvirt_exporter.collector import SPECS, block
from libvirt_exporter.domain_xml import parse_domain_xml
from libvirt_exporter.host import LocalHost
from libvirt_exporter.host_counters import Checked, Counted, read_counters
from tests.exposition import Series, assert_promtool_accepts, domains_in, parse, value
from tests.integration.vms import DEADLINE, INTERVAL, Exporter, LibvirtdControl, TinyVM, VMFactory, wait_for
from tests.integration.vms import FAST_SAMPLING as ARGS

SCHEDULING_SLACK = 3.0
"""Seconds a loaded machine may add to a cycle's start: the bounds it widens stay far below what
they tell apart (libvirt's 30 s wait for a domain's job, a call that hangs until QEMU is thawed)."""
SAMPLERS = ("basic", "bulk", "block")
SCRAPE_BOUND = 2.0
"""A scrape serves the snapshot in milliseconds; one that waited on a hung call would not return."""
LIVENESS_DETECTION = 10.0  # connection.py: a probe every 2 s, unresponsive after 6 s


def fresh(series: Series, domain: str) -> bool:
    return all(
        value(series, "libvirt_domain_sample_stale", domain=domain, sampler=sampler) == 0
        for sampler in SAMPLERS
    )


def assert_fresh(series: Series, names: list[str]) -> None:
    for name in names:
        stale = [
            s for s in SAMPLERS if value(series, "libvirt_domain_sample_stale", domain=name, sampler=s) != 0
        ]
        assert not stale, f"{name} went stale ({', '.join(stale)}) while another VM was frozen"


def timed_scrape(exporter: Exporter) -> tuple[Series, float]:
    started = time.monotonic()
    body = exporter.scrape(timeout=10)
    return parse(body), time.monotonic() - started


def scrape_until(
    exporter: Exporter, condition: Callable[[Series], bool], timeout: float
) -> tuple[Series, float]:
    """Scrape every 0.1 s until `condition` holds; each scrape must answer within SCRAPE_BOUND.

    Returns the series that met it and the seconds it took."""
    started = time.monotonic()
    while True:
        series, took = timed_scrape(exporter)
        assert took < SCRAPE_BOUND, f"a scrape took {took:.2f} s"
        if condition(series):
            return series, time.monotonic() - started
        assert time.monotonic() - started < timeout, f"condition not met within {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def three_vms(make_tiny_vms: VMFactory) -> list[TinyVM]:
    return make_tiny_vms(3)


def test_a_frozen_vm_is_flagged_while_the_others_stay_fresh(
    three_vms: list[TinyVM], run_exporter: Callable[..., Exporter]
) -> None:
    exporter = run_exporter(*ARGS)
    names = {vm.name for vm in three_vms}
    scrape_until(exporter, lambda s: all(fresh(s, name) for name in names), timeout=30)
    frozen, healthy = three_vms[1], [three_vms[0].name, three_vms[2].name]

    frozen.freeze()

    # The round's survey sees the QEMU stopped (its threads in state T) and no sampler sends it a
    # call; a call sent just before the freeze times out and stays in flight. Its block values go
    # stale either way, and its state, CPU time and network counters (read without QEMU) do not.
    # The healthy VMs stay fresh from the first moment: each call has a connection of its own, so
    # none waits behind one stuck on the frozen QEMU (libvirt stalls calls that share one).
    def flagged(s: Series) -> bool:
        assert_fresh(s, healthy)
        stopped = value(s, "libvirt_domain_hang_signal", domain=frozen.name, signal="qemu_stopped") == 1
        timeouts = sum(
            value(s, "libvirt_domain_sample_timeouts_total", domain=frozen.name, sampler=x) or 0
            for x in SAMPLERS
        )
        return (stopped or timeouts >= 1) and value(
            s, "libvirt_domain_sample_stale", domain=frozen.name, sampler="block"
        ) == 1

    series, took = scrape_until(exporter, flagged, timeout=30)
    assert took <= DEADLINE + INTERVAL + SCHEDULING_SLACK, f"the freeze showed after {took:.1f} s"

    # Keep scraping through several cycles of the freeze: every scrape is quick and complete.
    until = time.monotonic() + 3 * INTERVAL
    while time.monotonic() < until:
        series, took = timed_scrape(exporter)
        assert took < SCRAPE_BOUND
        assert names <= domains_in(series)
        assert_fresh(series, healthy)
        time.sleep(0.2)
    assert value(series, "libvirt_domain_sample_stale", domain=frozen.name, sampler="bulk") == 1
    assert value(series, "libvirt_domain_sample_stale", domain=frozen.name, sampler="basic") == 0
    assert value(series, "libvirt_domain_hang_signal", domain=frozen.name, signal="qemu_stopped") == 1
    assert (
        value(series, "libvirt_domain_sample_skipped_total", domain=frozen.name, sampler="block") or 0
    ) >= 1
    # At most the calls sent before the survey saw the freeze: the block sampler's and the host-wide one.
    assert value(series, "libvirt_sampler_threads", state="stuck") <= 2  # type: ignore[operator]
    assert value(series, "libvirt_domain_cpu_time_seconds_total", domain=frozen.name) is not None, (
        "the frozen VM's last values must still be served"
    )

    frozen.thaw()
    _, took = scrape_until(exporter, lambda s: fresh(s, frozen.name), timeout=30)
    assert took <= 2 * INTERVAL + SCHEDULING_SLACK, f"recovery took {took:.1f} s"


def test_libvirtd_restart_drops_up_then_values_flow_again(
    three_vms: list[TinyVM], run_exporter: Callable[..., Exporter], libvirtd_control: LibvirtdControl
) -> None:
    exporter = run_exporter(*ARGS)
    vm = three_vms[0].name
    scrape_until(exporter, lambda s: value(s, "libvirt_up") == 1 and fresh(s, vm), timeout=30)

    restart = threading.Thread(target=libvirtd_control.restart)
    restart.start()
    scrape_until(exporter, lambda s: value(s, "libvirt_up") == 0, timeout=30)
    restart.join()
    restarted_at = time.time()

    def flowing_again(series: Series) -> bool:
        taken = value(series, "libvirt_domain_sample_timestamp_seconds", domain=vm, sampler="block")
        fresh_again = value(series, "libvirt_up") == 1 and fresh(series, vm)
        return fresh_again and taken is not None and taken > restarted_at

    # Both samplers' values come back, each at its next cycle after the reconnect.
    series, _ = scrape_until(exporter, flowing_again, timeout=60)
    assert value(series, "libvirt_connection_reconnects_total") == 1


def test_a_real_scrape_passes_promtool_and_reports_real_sizes(
    three_vms: list[TinyVM], run_exporter: Callable[..., Exporter]
) -> None:
    exporter = run_exporter(*ARGS)
    vm = three_vms[0]
    series, _ = scrape_until(exporter, lambda s: fresh(s, vm.name), timeout=30)
    capacity = value(series, "libvirt_domain_block_capacity_bytes", domain=vm.name, device=vm.disk_targets[0])
    assert capacity == vm.disk_virtual_size_bytes
    assert value(series, "libvirt_domain_memory_maximum_bytes", domain=vm.name) == 64 * 2**20
    assert value(series, "libvirt_domain_vcpus_current", domain=vm.name) == vm.vcpus
    assert value(series, "libvirt_domain_state", domain=vm.name, state="running", reason="booted") == 1

    assert_promtool_accepts(exporter.scrape())


def test_a_frozen_libvirtd_is_noticed_within_10_s_and_scrapes_go_on(
    three_vms: list[TinyVM], run_exporter: Callable[..., Exporter], libvirtd_control: LibvirtdControl
) -> None:
    exporter = run_exporter(*ARGS)
    vm = three_vms[0].name
    scrape_until(exporter, lambda s: value(s, "libvirt_up") == 1 and fresh(s, vm), timeout=30)

    libvirtd_control.freeze()
    series, took = scrape_until(exporter, lambda s: value(s, "libvirt_up") == 0, timeout=30)
    assert took <= LIVENESS_DETECTION + SCHEDULING_SLACK, f"a frozen libvirtd was noticed after {took:.1f} s"
    assert not fresh(series, vm), "values of an unreachable libvirtd must be served stale"
    assert value(series, "libvirt_domain_cpu_time_seconds_total", domain=vm) is not None

    libvirtd_control.thaw()
    scrape_until(exporter, lambda s: value(s, "libvirt_up") == 1 and fresh(s, vm), timeout=60)


GUEST_REPORTED = {
    # The balloon driver reports these from inside the guest; the test VMs run no guest OS.
    "libvirt_domain_memory_usable_bytes",
    "libvirt_domain_memory_available_bytes",
    "libvirt_domain_memory_used_bytes",
    "libvirt_domain_memory_unused_bytes",
    "libvirt_domain_memory_disk_caches_bytes",
    "libvirt_domain_memory_swap_in_bytes_total",
    "libvirt_domain_memory_swap_out_bytes_total",
    "libvirt_domain_memory_major_faults_total",
    "libvirt_domain_memory_minor_faults_total",
    "libvirt_domain_memory_stats_timestamp_seconds",
}
NOT_FROM_QEMU = {"libvirt_domain_block_errors_total"}  # QEMU has no per-disk error count


def test_the_cpu_times_read_from_the_host_are_the_counters_libvirt_reads(
    three_vms: list[TinyVM], libvirt_conn: libvirt.virConnect
) -> None:
    """The survey reads each domain's CPU times from its cgroup where they agree with
    virDomainGetCPUStats (inventory._cpu_times). On this host they are libvirt's own counters:
    between two of its answers, every one of them."""
    host = LocalHost()
    for vm in three_vms:
        dom = libvirt_conn.lookupByName(vm.name)
        before = dom.getCPUStats(True)[0]
        qemu = host.qemu(vm.name, cpu=True, vcpus=False)
        ours = qemu.cpu_times if qemu is not None else None
        after = dom.getCPUStats(True)[0]
        assert ours is not None, f"{vm.name}'s cgroup v2 cpu.stat was not found"
        for theirs, key in (
            ("cpu_time", "cpu.time"),
            ("user_time", "cpu.user"),
            ("system_time", "cpu.system"),
        ):
            assert before[theirs] <= ours[key] <= after[theirs], (key, before, ours, after)


def vcpu_group(dom: libvirt.virDomain) -> dict[str, int]:
    """libvirt's `vcpu` stat group for the domain, which asks its QEMU's monitor (query-stats)."""
    ((_, stats),) = dom.connect().domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_VCPU)
    return stats


def test_the_vcpu_figures_read_from_the_host_are_the_ones_libvirt_reads(
    make_tiny_vms: VMFactory, libvirt_conn: libvirt.virConnect
) -> None:
    """The survey reads each vCPU's figures from its thread (host.LocalHost.vcpu_times). On this
    host they are libvirt's own: between two answers of the `vcpu` group, every one of them, for
    each vCPU by its number."""
    (vm,) = make_tiny_vms(1, vcpus=2)
    dom = libvirt_conn.lookupByName(vm.name)
    before = vcpu_group(dom)
    qemu = LocalHost().qemu(vm.name, cpu=False, vcpus=True)
    ours = qemu.vcpu_times if qemu is not None else None
    after = vcpu_group(dom)
    assert ours is not None, f"{vm.name}'s vCPU threads were not found in its vcpuN cgroups"
    assert sorted(ours) == [0, 1]
    for number, times in ours.items():
        for field in ("time", "wait", "delay"):
            key = f"vcpu.{number}.{field}"
            assert before[key] <= getattr(times, field) <= after[key], (key, before[key], times, after[key])


def test_the_host_is_checked_against_libvirt_without_waiting_for_a_frozen_qemu(
    make_tiny_vms: VMFactory, libvirt_conn: libvirt.virConnect, libvirt_uri: str
) -> None:
    """The survey checks a new QEMU process's vCPU figures against virDomainGetVcpus on its
    read-only connection: libvirtd answers it from /proc, while the QEMU is stopped and a call
    stuck on its monitor holds its job."""
    (vm,) = make_tiny_vms(1, vcpus=2)
    dom = libvirt_conn.lookupByName(vm.name)
    read_only = libvirt.openReadOnly(libvirt_uri).lookupByName(vm.name)
    description = parse_domain_xml(dom.XMLDesc(0))
    vm.freeze()
    stuck = threading.Thread(target=vcpu_group, args=(dom,), daemon=True)  # takes the job, then waits
    stuck.start()
    wait_for(
        lambda: dom.controlInfo()[0] == libvirt.VIR_DOMAIN_CONTROL_OCCUPIED, 10, "the call to wait on QEMU"
    )
    counted: list[Counted] = []
    checking = threading.Thread(
        target=lambda: counted.append(
            read_counters(
                read_only,
                (vm.name, dom.ID()),
                description,
                LocalHost().qemu(vm.name, cpu=True, vcpus=True),
                Checked(),
                cpu=True,
                vcpu=True,
            )
        ),
        daemon=True,
    )
    checking.start()
    checking.join(timeout=10)  # a few libvirt calls; what it must not do is wait for the QEMU
    assert counted, "the check did not return within 10 s"
    assert counted[0].vcpus_from_host is True and counted[0].cpu_from_host is True
    assert {"vcpu.current", "vcpu.maximum", "vcpu.1.time", "vcpu.1.delay"} <= counted[0].values.keys()
    assert counted[0].values["vcpu.maximum"] == 2
    vm.thaw()
    stuck.join(timeout=30)


CONFIGURED = {
    spec.exposed_name for spec in block.SPECS if spec.name.startswith("libvirt_domain_block_limit_")
} | {"libvirt_domain_vcpu_pinning_info"}
"""What a VM has only when its XML sets it (throttles, pinning): test_domain_config.py's VM does."""


def test_every_family_of_the_groups_the_vms_have_is_there_in_base_units(
    three_vms: list[TinyVM], run_exporter: Callable[..., Exporter]
) -> None:
    exporter = run_exporter(*ARGS)
    vm = three_vms[0]
    series, _ = scrape_until(exporter, lambda s: fresh(s, vm.name), timeout=30)
    groups = {"", "cpu", "vcpu", "balloon", "block", "interface"}
    expected = (
        {
            spec.exposed_name
            for spec in SPECS
            if spec.collector in groups and "domain" in spec.labels and spec.labels != ("domain", "sampler")
        }
        - GUEST_REPORTED
        - NOT_FROM_QEMU
        - CONFIGURED
        - {"libvirt_domain_openstack_info"}
    )
    present = {name for name, labels in series if dict(labels).get("domain") == vm.name}
    assert expected - present == set(), "families missing for a running VM"

    def only(name: str, **labels: str) -> float:
        found = value(series, name, domain=vm.name, **labels)
        assert found is not None, name
        return found

    disk, nic = vm.disk_targets[0], vm.interface_name
    assert only("libvirt_domain_block_capacity_bytes", device=disk) == vm.disk_virtual_size_bytes
    assert 0 < only("libvirt_domain_block_allocation_bytes", device=disk) <= vm.disk_virtual_size_bytes
    assert only("libvirt_domain_memory_maximum_bytes") == 64 * 2**20
    # A stats period but no guest OS, so no balloon driver: no guest figures, and no made-up usage.
    assert value(series, "libvirt_domain_memory_used_bytes", domain=vm.name) is None
    assert 2**20 < only("libvirt_domain_memory_rss_bytes") < 2**31  # KiB became bytes
    assert 0 < only("libvirt_domain_cpu_time_seconds_total") < 600  # nanoseconds became seconds
    assert 0 < only("libvirt_domain_vcpu_time_seconds_total", vcpu="0") < 600
    assert only("libvirt_domain_vcpus_current") == vm.vcpus
    assert only("libvirt_domain_interface_receive_bytes_total", device=nic) >= 0
    # A healthy monitor is busy for a moment now and then (a block call of ours), in seconds.
    assert 0 <= only("libvirt_domain_monitor_busy_seconds") < DEADLINE


def test_a_storage_pool_is_reported_with_its_sizes(
    libvirt_conn: libvirt.virConnect, run_exporter: Callable[..., Exporter], tmp_path: Path
) -> None:
    name = f"lvexp-test-pool-{tmp_path.name[-8:]}"
    pool_xml = f"<pool type='dir'><name>{name}</name><target><path>{tmp_path}</path></target></pool>"
    pool = libvirt_conn.storagePoolCreateXML(pool_xml, 0)  # transient: gone once destroyed
    try:
        exporter = run_exporter(
            *ARGS, "--sampler.storage_pool.interval=2s", "--sampler.storage_pool.deadline=1s"
        )
        series, _ = scrape_until(
            exporter, lambda s: value(s, "libvirt_storage_pool_state", pool=name) is not None, timeout=30
        )
        state, capacity, _allocation, _available = pool.info()
        assert (
            value(series, "libvirt_storage_pool_state", pool=name)
            == libvirt.VIR_STORAGE_POOL_RUNNING
            == state
        )
        assert value(series, "libvirt_storage_pool_capacity_bytes", pool=name) == capacity > 0
        assert 0 < value(series, "libvirt_storage_pool_available_bytes", pool=name) <= capacity  # type: ignore[operator]
    finally:
        pool.destroy()


def test_a_guest_balloon_driver_s_figures_are_there_in_bytes(
    guest_vm: str, run_exporter: Callable[..., Exporter]
) -> None:
    """The families only a guest reports, from the VM that boots a real kernel (192 MiB)."""
    exporter = run_exporter(*ARGS)
    series, _ = scrape_until(
        exporter,
        lambda s: value(s, "libvirt_domain_memory_usable_bytes", domain=guest_vm) is not None,
        timeout=60,
    )
    present = {name for name, labels in series if dict(labels).get("domain") == guest_vm}
    assert GUEST_REPORTED - present == set()
    available = value(series, "libvirt_domain_memory_available_bytes", domain=guest_vm)
    usable = value(series, "libvirt_domain_memory_usable_bytes", domain=guest_vm)
    assert available is not None and usable is not None
    assert 64 * 2**20 < available <= 192 * 2**20  # KiB became bytes
    assert 0 < usable <= available
    # What the guest uses is what its OS sees less what it could still use: here a busybox that
    # sleeps, in a few MiB of the 192.
    assert value(series, "libvirt_domain_memory_used_bytes", domain=guest_vm) == available - usable
    assert 2**20 < available - usable < 128 * 2**20
    assert value(series, "libvirt_domain_memory_stats_timestamp_seconds", domain=guest_vm) > 1.7e9  # type: ignore[operator]

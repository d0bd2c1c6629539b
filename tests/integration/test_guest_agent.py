"""The guest sampler on the real libvirtd: a guest running Debian's qemu-ga reports its file systems
as the guest itself sees them; an agent frozen inside the guest costs one stuck call, is flagged,
and holds up no scrape, no other sampler and no other VM; an agent that left gets no call at all.

The guest is the suite's booting guest (guest.py): its init answers `df` on the serial console
and stops or continues qemu-ga when told to. The tiny VMs have no agent channel at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.exposition import Series, assert_promtool_accepts, value, value_including
from tests.integration.guest import DATA_FILL_MIB, HOSTNAME, GuestConsole, GuestVM
from tests.integration.test_real_libvirt import SCHEDULING_SLACK, scrape_until
from tests.integration.vms import DEADLINE, FAST_SAMPLING, INTERVAL, Exporter, TinyVM

GUEST_SAMPLING = (
    "--collector.guest",
    f"--sampler.guest.interval={INTERVAL:g}s",
    f"--sampler.guest.deadline={DEADLINE:g}s",
)
"""The guest sampler on, as often as FAST_SAMPLING's."""
GUEST_ARGS = (*FAST_SAMPLING, *GUEST_SAMPLING, "--sampler.max-stuck-calls=3")
BOOT_TIMEOUT = 120.0
"""Debian's kernel boots under pure emulation (TCG) in about 7 s here; a loaded machine, far slower."""
STALE_WITHIN = INTERVAL + DEADLINE + SCHEDULING_SLACK
"""A frozen agent's call runs past its deadline in the first cycle after the freeze."""


@pytest.fixture(scope="module")
def console(agent_guest: GuestVM) -> Iterator[GuestConsole]:
    console = GuestConsole(agent_guest.files.console, timeout=5)
    yield console
    console.close()


def guest_value(series: Series, name: str, domain: str, **labels: str) -> float | None:
    return value_including(series, name, domain=domain, **labels)


def stale(series: Series, domain: str, sampler: str) -> float | None:
    return value(series, "libvirt_domain_sample_stale", domain=domain, sampler=sampler)


def skipped(series: Series, domain: str) -> float:
    return value(series, "libvirt_domain_sample_skipped_total", domain=domain, sampler="guest") or 0.0


def data_disk(series: Series, domain: str) -> float | None:
    return guest_value(series, "libvirt_domain_guest_filesystem_used_bytes", domain, mountpoint="/data")


def df_of_data(console: GuestConsole) -> tuple[int, int]:
    """What the guest's own df says of /data: (used, available) KiB."""
    lines = console.ask("df", until="df-end", timeout=BOOT_TIMEOUT)
    (row,) = [line.split() for line in lines if line.endswith(" /data")]
    _device, _blocks, used, available, _percent, _mount = row
    return int(used), int(available)


def test_the_guest_agent_reports_the_file_systems_the_guest_sees(
    agent_guest: GuestVM,
    console: GuestConsole,
    tiny_vms: list[TinyVM],
    run_exporter: Callable[..., Exporter],
) -> None:
    used_kib, available_kib = df_of_data(console)
    assert used_kib >= DATA_FILL_MIB * 1024, "the guest's init did not fill its data disk"
    exporter = run_exporter(*GUEST_ARGS)
    series, _ = scrape_until(exporter, lambda s: data_disk(s, agent_guest.name) is not None, BOOT_TIMEOUT)

    name = agent_guest.name
    data = {"mountpoint": "/data", "fstype": "ext4", "device": "vda"}
    assert guest_value(series, "libvirt_domain_guest_filesystem_used_bytes", name, **data) == used_kib * 1024
    size = guest_value(series, "libvirt_domain_guest_filesystem_size_bytes", name, **data)
    assert size == (used_kib + available_kib) * 1024, "size is df's Used + Available"
    assert guest_value(series, "libvirt_domain_guest_os_info", name, id="debian") == 1
    assert guest_value(series, "libvirt_domain_guest_hostname_info", name, hostname=HOSTNAME) == 1
    assert guest_value(series, "libvirt_domain_guest_users", name) == 0
    assert guest_value(series, "libvirt_domain_guest_timezone_info", name, timezone="UTC") == 1
    loopback = {"interface": "lo", "type": "ipv4", "address": "127.0.0.1", "prefix": "8"}
    assert guest_value(series, "libvirt_domain_guest_interface_address_info", name, **loopback) == 1
    assert stale(series, name, "guest") == 0
    assert_promtool_accepts(exporter.scrape())
    for vm in tiny_vms:  # no agent channel: never asked, nothing to flag
        guest_series = [
            n for n, labels in series if n.startswith("libvirt_domain_guest_") and vm.name in str(labels)
        ]
        assert not guest_series
        assert stale(series, vm.name, "guest") is None


def test_a_frozen_agent_is_flagged_and_holds_up_no_scrape_sampler_or_vm(
    agent_guest: GuestVM,
    console: GuestConsole,
    tiny_vms: list[TinyVM],
    run_exporter: Callable[..., Exporter],
) -> None:
    name = agent_guest.name
    exporter = run_exporter(*GUEST_ARGS)
    scrape_until(exporter, lambda s: stale(s, name, "guest") == 0, BOOT_TIMEOUT)

    console.ask("agent-stop", until="agent-stopped", timeout=10)
    try:
        frozen, _ = scrape_until(exporter, lambda s: stale(s, name, "guest") == 1, STALE_WITHIN)
        assert value(frozen, "libvirt_domain_sample_timeouts_total", domain=name, sampler="guest") == 1
        block_before = value(frozen, "libvirt_domain_sample_timestamp_seconds", domain=name, sampler="block")
        # scrape_until bounds every scrape; three more guest cycles, each skipping the stuck agent
        later, _ = scrape_until(exporter, lambda s: skipped(s, name) >= 3, 3 * (INTERVAL + SCHEDULING_SLACK))
        assert value(later, "libvirt_domain_sample_timeouts_total", domain=name, sampler="guest") == 1
        assert value(later, "libvirt_sampler_threads", state="stuck") == 1, "one stuck call, the agent's"
        in_flight = value(later, "libvirt_domain_call_in_flight_seconds", domain=name, sampler="guest")
        assert in_flight is not None and in_flight > DEADLINE
        assert data_disk(later, name) is not None, "the last values are still served, flagged stale"
        for sampler in ("basic", "bulk", "block"):
            assert stale(later, name, sampler) == 0, f"the frozen agent held up {sampler}"
        block_after = value(later, "libvirt_domain_sample_timestamp_seconds", domain=name, sampler="block")
        assert block_after > block_before  # type: ignore[operator]
        for vm in tiny_vms:
            assert stale(later, vm.name, "block") == 0
    finally:
        console.ask("agent-cont", until="agent-continued", timeout=10)
    scrape_until(exporter, lambda s: stale(s, name, "guest") == 0, STALE_WITHIN + INTERVAL)


def test_an_agent_that_leaves_is_not_asked_and_is_flagged_until_it_is_back(
    agent_guest: GuestVM, console: GuestConsole, run_exporter: Callable[..., Exporter]
) -> None:
    """qemu-ga ended inside the guest: libvirt marks its channel disconnected and says so with an
    agent-lifecycle event, on which the survey reads the XML again; no call goes to the domain."""
    name = agent_guest.name
    exporter = run_exporter(*GUEST_ARGS)
    scrape_until(exporter, lambda s: stale(s, name, "guest") == 0, BOOT_TIMEOUT)

    console.ask("agent-kill", until="agent-killed", timeout=10)
    try:
        gone, _ = scrape_until(exporter, lambda s: skipped(s, name) >= 2, 2 * (INTERVAL + SCHEDULING_SLACK))
        assert stale(gone, name, "guest") == 1
        assert value(gone, "libvirt_domain_sample_timeouts_total", domain=name, sampler="guest") == 0
        assert value(gone, "libvirt_domain_sample_errors_total", domain=name, sampler="guest") == 0
        assert value(gone, "libvirt_sampler_threads", state="stuck") == 0
        assert stale(gone, name, "block") == 0
    finally:
        console.ask("agent-start", until="agent-started", timeout=10)
    scrape_until(exporter, lambda s: stale(s, name, "guest") == 0, STALE_WITHIN + INTERVAL)

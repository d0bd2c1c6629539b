"""The guest sampler against a fake host: what the agent reports, and an agent that does not answer,
refuses or is absent costing no more than a hung QEMU."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import libvirt
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.cli import parse_config
from libvirt_exporter.config import COLLECTOR_DEFAULTS
from libvirt_exporter.cycle import run_cycle_and_record
from tests.exposition import value_including
from tests.unit.conftest import Harness, Series, make_config, value, wait_for
from tests.unit.fake_libvirt import FakeConnection, FakeHost, agent_vm


@pytest.fixture
def host() -> FakeHost:
    return FakeHost([agent_vm("vm"), agent_vm("gone", "disconnected"), agent_vm("plain", None)])


@pytest.fixture
def harness(host: FakeHost) -> Iterator[Harness]:
    config = make_config()
    harness = Harness(host, replace(config, collectors=config.collectors | {"guest"}))
    yield harness
    host.thaw_all()
    harness.exporter.stop()


def guest(series: Series, name: str, domain: str = "vm", **labels: str) -> float | None:
    return value_including(series, name, domain=domain, **labels)


def test_agent_reports_file_systems_os_users_time_zone_and_addresses(harness: Harness) -> None:
    series = harness.cycle(harness.exporter.guest)
    root = {"mountpoint": "/", "fstype": "ext4", "device": "vda1"}
    assert guest(series, "libvirt_domain_guest_filesystem_size_bytes", **root) == 38398976
    assert guest(series, "libvirt_domain_guest_filesystem_used_bytes", **root) == 5257216
    assert guest(series, "libvirt_domain_guest_filesystem_size_bytes", mountpoint="/srv") == 2**30
    assert guest(series, "libvirt_domain_guest_filesystem_size_bytes", mountpoint="/media/cdrom") is None
    os_labels = {"id": "debian", "version_id": "12", "kernel_release": "6.1.0-57-amd64"}
    assert guest(series, "libvirt_domain_guest_os_info", **os_labels) == 1
    assert guest(series, "libvirt_domain_guest_hostname_info", hostname="web-01") == 1
    assert guest(series, "libvirt_domain_guest_users") == 2
    assert guest(series, "libvirt_domain_guest_timezone_info", timezone="CET") == 1
    assert guest(series, "libvirt_domain_guest_timezone_offset_seconds") == 3600
    address = {"interface": "eth0", "hwaddr": "52:54:00:00:00:01", "type": "ipv6", "address": "2001:db8::10"}
    assert guest(series, "libvirt_domain_guest_interface_address_info", prefix="64", **address) == 1
    assert guest(series, "libvirt_domain_guest_interface_address_info", address="127.0.0.1") == 1
    assert guest(series, "libvirt_domain_sample_stale", sampler="guest") == 0


def test_the_agent_is_asked_on_a_read_write_lane_and_nothing_else_is(
    harness: Harness, host: FakeHost
) -> None:
    exporter = harness.exporter
    for sampler in (exporter.bulk, exporter.block, exporter.guest):
        harness.cycle(sampler)
    read_write = [conn for conn in host.connections if not conn.read_only]
    assert sum(conn.served["vm"] for conn in read_write) == 1, "only the agent call goes read-write"
    assert host.calls[("vm", "guestInfo")] == 1


def test_no_agent_channel_no_call_and_no_series_a_disconnected_agent_is_flagged(
    harness: Harness, host: FakeHost
) -> None:
    series = harness.cycle(harness.exporter.guest)
    assert host.calls[("plain", "guestInfo")] == 0
    assert host.calls[("gone", "guestInfo")] == 0, "nothing is asked of an agent libvirt says is gone"
    assert guest(series, "libvirt_domain_sample_stale", domain="plain", sampler="guest") is None
    assert guest(series, "libvirt_domain_sample_stale", domain="gone", sampler="guest") == 1
    assert guest(series, "libvirt_domain_sample_skipped_total", domain="gone", sampler="guest") == 1


def test_a_frozen_agent_costs_one_stuck_call_and_stops_no_other_sampler(
    harness: Harness, host: FakeHost
) -> None:
    exporter = harness.exporter
    harness.cycle(exporter.guest)
    host.domains["vm"].agent_answers.clear()
    first = harness.cycle(exporter.guest)
    assert guest(first, "libvirt_domain_sample_timeouts_total", sampler="guest") == 1
    assert guest(first, "libvirt_domain_sample_stale", sampler="guest") == 1
    assert guest(first, "libvirt_domain_guest_filesystem_used_bytes", mountpoint="/") == 5257216
    before = harness.cycle(exporter.bulk)
    for _ in range(3):
        harness.cycle(exporter.guest)
        later = harness.cycle(exporter.bulk)
    assert host.calls[("vm", "guestInfo")] == 2, "a second call was sent to a frozen agent"
    assert guest(later, "libvirt_domain_sample_skipped_total", sampler="guest") == 3
    assert value(later, "libvirt_sampler_threads", state="stuck") == 1
    for sampler in ("bulk", "block"):
        assert guest(later, "libvirt_domain_sample_stale", sampler=sampler) == 0, (
            f"the agent held up {sampler}"
        )
    reads = "libvirt_domain_block_read_requests_total"
    assert guest(later, reads, device="vda") > guest(before, reads, device="vda")  # type: ignore[operator]
    host.domains["vm"].agent_answers.set()


def test_a_refusal_is_counted_for_each_domain_and_logged_once(
    harness: Harness, host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    host.add(agent_vm("vm2"))
    host.agent_denied = True
    with caplog.at_level(logging.INFO):
        harness.cycle(harness.exporter.guest)
        series = harness.cycle(harness.exporter.guest)
    for domain in ("vm", "vm2"):
        assert guest(series, "libvirt_domain_sample_errors_total", domain=domain, sampler="guest") == 2
        assert guest(series, "libvirt_domain_sample_stale", domain=domain, sampler="guest") == 1
    guest_lines = [r for r in caplog.records if "guest" in r.name or "guest" in r.getMessage()]
    assert [r.levelno for r in guest_lines] == [logging.ERROR], [r.getMessage() for r in guest_lines]
    assert "docs/security.md" in guest_lines[0].getMessage()


def test_the_guest_sampler_is_off_by_default(host: FakeHost) -> None:
    assert not COLLECTOR_DEFAULTS["guest"]
    harness = Harness(host, make_config())
    try:
        assert harness.exporter.guest not in harness.exporter.looped
        assert all(conn.read_only for conn in host.connections)
    finally:
        harness.exporter.stop()


def test_an_agent_that_connects_is_asked_once_libvirt_s_agent_event_came(
    harness: Harness, host: FakeHost
) -> None:
    harness.cycle(harness.exporter.guest)
    assert host.calls[("gone", "guestInfo")] == 0
    registered = {event for conn in host.open_connections() for event, _ in conn.event_registrations.values()}
    assert libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE in registered
    xml_reads = host.calls[("gone", "XMLDesc")]
    host.domains["gone"].agent = "connected"
    host.emit_event(host.domains["gone"])
    wait_for(lambda: host.calls[("gone", "XMLDesc")] > xml_reads)  # the event's survey read it again
    series = harness.cycle(harness.exporter.guest)
    assert host.calls[("gone", "guestInfo")] == 1
    assert guest(series, "libvirt_domain_sample_stale", domain="gone", sampler="guest") == 0


def test_the_guest_lanes_open_read_write_at_the_guest_uri(host: FakeHost) -> None:
    config, _ = parse_config(["--collector.guest", "--sampler.guest.uri=qemu+ssh://hv1/system"])
    assert config.enabled("guest")
    opened: list[str] = []

    def open_read_write(uri: str) -> FakeConnection:
        opened.append(uri)
        return host.open_read_write(uri)

    exporter = Exporter(config, opener=host.open, host=host, guest_opener=open_read_write)
    exporter.follow_changes()
    try:
        assert exporter.connection.connect_once()
        exporter.refresh_inventory()
        run_cycle_and_record(exporter.guest, exporter.store)
        assert opened == ["qemu+ssh://hv1/system"]
        assert host.calls[("vm", "guestInfo")] == 1
    finally:
        exporter.stop()

"""What the collectors render: the exact exposition of a realistic domain, the switches, escaping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from libvirt_exporter.collector import block, domain, job, storage_pool
from libvirt_exporter.config import COLLECTOR_DEFAULTS, parse_metadata_flag
from tests.exposition import as_prometheus_client_metrics, assert_promtool_accepts, plain_text
from tests.unit.conftest import Harness, domains_in, make_config, parse, value
from tests.unit.fake_libvirt import IMAGES, FakeDomain, FakeHost, agent_vm

GOLDEN = Path(__file__).parent / "golden"
NOVA = (
    '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">'
    "<nova:name>web-01.example</nova:name>"
    '<nova:flavor name="m1.large"><nova:memory>8192</nova:memory></nova:flavor>'
    '<nova:owner><nova:user uuid="9d5f3c3e8a2b4c1e">alice</nova:user>'
    '<nova:project uuid="5e1b7f0a2c3d4e5f">shop</nova:project></nova:owner>'
    "</nova:instance>"
)
MIGRATION = {
    "type": 2,  # unbounded
    "operation": 5,  # migration_out
    "time_elapsed": 12_500,
    "data_total": 8 * 2**30,
    "data_processed": 3 * 2**30,
    "data_remaining": 5 * 2**30,
    "memory_total": 8 * 2**30,
    "memory_processed": 3 * 2**30,
    "memory_remaining": 5 * 2**30,
    "memory_bps": 250 * 2**20,
    "memory_dirty_rate": 1200,
    "memory_iteration": 2,
}


IOTUNE = {
    "total_bytes_sec": 50 * 2**20,
    "read_iops_sec": 400,
    "write_iops_sec": 200,
    "write_iops_sec_max": 1000,
    "write_iops_sec_max_length": 10,
    "size_iops_sec": 16384,
}


def realistic_domain() -> FakeDomain:
    """4 vCPUs, 3 disks (the first throttled), 2 NICs, balloon statistics, perf events, 2 I/O
    threads, a dirty-rate measurement, a migration under way, Nova's metadata, a title and its vCPUs
    pinned."""
    return FakeDomain(
        "web-01",
        7,
        vcpus=4,
        disks=("vda", "vdb", "vdc"),
        nics=("vnet0", "vnet1"),
        uuid="4dea22b3-1d52-d8f3-2516-782e98a23fa0",
        perf_events=("cpu_cycles", "instructions", "cache_misses"),
        iothreads=(1, 2),
        job=MIGRATION,
        metadata=NOVA,
        iotune={"vda": IOTUNE},
        title="Web shop, front 1",
        vcpupin={0: "2", 1: "3", 2: "4-5", 3: "4-5"},
    )


def sampled(host: FakeHost, collectors: frozenset[str]) -> Harness:
    harness = Harness(host, replace(make_config(), collectors=collectors))
    exporter = harness.exporter
    for sampler in (exporter.basic, exporter.storage, *exporter.looped):
        harness.cycle(sampler)
    return harness


class _DomainFamilies:
    """The families whose values come from libvirt alone: no clocks, no process figures."""

    def __init__(self, harness: Harness) -> None:
        self._view = harness.exporter.view

    def collect(self) -> Iterator[Metric]:
        state = self._view.state()
        for collect in (domain.collect, block.collect, job.collect, storage_pool.collect):
            yield from as_prometheus_client_metrics(collect(state))


def test_a_realistic_domain_renders_exactly_the_expected_exposition() -> None:
    everything = frozenset(COLLECTOR_DEFAULTS) - {"guest"}  # perf and dirty rate included; the
    # guest agent's families have tests of their own (test_guest.py)
    harness = sampled(FakeHost([realistic_domain()]), everything)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DomainFamilies(harness))
    rendered = {"realistic.prom": generate_latest(registry), "realistic.om": generate_openmetrics(registry)}
    if os.environ.get("UPDATE_GOLDEN"):
        for name, body in rendered.items():
            (GOLDEN / name).write_bytes(body)
    for name, body in rendered.items():
        assert body == (GOLDEN / name).read_bytes(), f"{name} differs: review, then UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize(
    ("collector", "family", "call"),
    [
        ("block", "libvirt_domain_block_read_bytes_total", "blockInfo"),
        ("vcpu", "libvirt_domain_vcpu_time_seconds_total", "vcpus"),
        ("job", "libvirt_domain_job_elapsed_seconds", "jobStats"),
        ("storage_pool", "libvirt_storage_pool_capacity_bytes", "listAllStoragePools"),
    ],
)
def test_turning_off_a_sampled_collector_removes_its_families_and_its_calls(
    collector: str, family: str, call: str
) -> None:
    on = sampled(FakeHost([realistic_domain()]), frozenset(COLLECTOR_DEFAULTS))
    assert any(name == family for name, _ in on.scrape())
    host = FakeHost([realistic_domain()])
    off = sampled(host, frozenset(COLLECTOR_DEFAULTS) - {collector})
    assert not any(name.startswith(family.rsplit("_", 2)[0]) for name, _ in off.scrape() if collector in name)
    assert not any(name == family for name, _ in off.scrape())
    assert not any(method == call for _, method in host.calls)


@pytest.mark.parametrize(
    ("collector", "family"),
    [
        ("cpu", "libvirt_domain_cpu_time_seconds_total"),
        ("balloon", "libvirt_domain_memory_current_bytes"),
        ("vcpu", "libvirt_domain_vcpu_time_seconds_total"),
        ("interface", "libvirt_domain_interface_receive_bytes_total"),
        ("perf", "libvirt_domain_perf_cpu_cycles_total"),
    ],
)
def test_turning_off_a_stat_group_removes_its_families_and_asks_libvirt_less(
    collector: str, family: str
) -> None:
    everything = frozenset(COLLECTOR_DEFAULTS)
    assert any(name == family for name, _ in sampled(FakeHost([realistic_domain()]), everything).scrape())
    host = FakeHost([realistic_domain()])
    series = sampled(host, everything - {collector}).scrape()
    assert not any(name == family for name, _ in series)
    group = {
        "cpu": 2,
        "balloon": 4,
        "vcpu": 8,
        "interface": 16,
        "perf": 64,
    }[collector]  # fmt: skip  (libvirt's VIR_DOMAIN_STATS_* values)
    assert host.stat_groups_asked and not any(asked & group for asked in host.stat_groups_asked)


def test_the_io_thread_group_is_asked_for_only_when_a_domain_defines_io_threads() -> None:
    """libvirt asks each QEMU's monitor for it, whatever the domain's XML says: for none, no group."""
    iothread = 128  # VIR_DOMAIN_STATS_IOTHREAD
    host = FakeHost([FakeDomain("plain", 1), FakeDomain("other", 2)])
    series = sampled(host, frozenset(COLLECTOR_DEFAULTS)).scrape()
    assert not any(name == "libvirt_domain_iothread_poll_max_seconds" for name, _ in series)
    monitor_calls = [asked for asked in host.stat_groups_asked if asked & 4]  # those with balloon
    assert monitor_calls and not any(asked & iothread for asked in monitor_calls)

    host = FakeHost([FakeDomain("plain", 1), FakeDomain("threaded", 2, iothreads=(1,))])
    series = sampled(host, frozenset(COLLECTOR_DEFAULTS)).scrape()
    assert any(asked & iothread for asked in host.stat_groups_asked)
    assert (
        value(series, "libvirt_domain_iothread_poll_max_seconds", domain="threaded", iothread="1") is not None
    )


def test_perf_dirty_rate_and_guest_are_off_by_default_and_the_rest_on() -> None:
    assert {name for name, on in COLLECTOR_DEFAULTS.items() if not on} == {"perf", "dirtyrate", "guest"}


def test_shut_off_domains_are_exported_only_when_asked_for() -> None:
    domains = [FakeDomain("up", 1), FakeDomain("down", -1)]
    default = Harness(FakeHost(domains), make_config())
    series = default.cycle(default.exporter.bulk)
    assert domains_in(series) == {"up"}
    assert value(series, "libvirt_domains", state="shutoff") == 1
    assert value(series, "libvirt_domains", state="running") == 1

    included = Harness(FakeHost(domains), replace(make_config(), include_inactive=True))
    series = included.cycle(included.exporter.bulk)
    assert domains_in(series) == {"up", "down"}
    assert value(series, "libvirt_domain_state", domain="down", state="shutoff", reason="destroyed") == 1
    assert value(series, "libvirt_domains", state="shutoff") == 1


def test_label_values_are_escaped_whatever_the_domain_name_holds() -> None:
    odd = 'we"ird\\name\nwith ünïcødé'
    harness = Harness(FakeHost([FakeDomain(odd, 1)]), make_config())
    harness.cycle(harness.exporter.bulk)
    text = plain_text(harness.exporter.snapshot.current)
    assert 'domain="we\\"ird\\\\name\\nwith ünïcødé"' in text.decode()
    assert odd in domains_in(parse(text))


def test_promtool_accepts_the_exposition_of_the_fake_host() -> None:
    """promtool lints the Prometheus text format (it reads OpenMetrics' HELP of a counter as missing)."""
    domains = [realistic_domain(), FakeDomain('q"uote', 2), agent_vm("with-agent")]
    harness = sampled(FakeHost(domains), frozenset(COLLECTOR_DEFAULTS))
    assert (
        "libvirt_domain_guest_filesystem_size_bytes" in plain_text(harness.exporter.snapshot.current).decode()
    )
    assert_promtool_accepts(plain_text(harness.exporter.snapshot.current))


def test_memory_used_is_what_the_guest_sees_less_what_it_could_use_and_absent_without_its_figures() -> None:
    host = FakeHost([FakeDomain("guest", 1), FakeDomain("no-driver", 2, guest_balloon=False)])
    series = sampled(host, frozenset(COLLECTOR_DEFAULTS)).scrape()
    available = value(series, "libvirt_domain_memory_available_bytes", domain="guest")
    usable = value(series, "libvirt_domain_memory_usable_bytes", domain="guest")
    assert available == 1_000_000 * 1024 and usable == 700_000 * 1024
    assert value(series, "libvirt_domain_memory_used_bytes", domain="guest") == available - usable
    assert value(series, "libvirt_domain_memory_current_bytes", domain="no-driver") == 1_048_576 * 1024
    assert value(series, "libvirt_domain_memory_used_bytes", domain="no-driver") is None, "never a made-up 0"


def test_a_disk_s_throttles_are_exported_from_its_xml_with_no_call_of_their_own() -> None:
    host = FakeHost([realistic_domain()])
    harness = sampled(host, frozenset(COLLECTOR_DEFAULTS))
    series = harness.scrape()

    def limit(name: str, device: str = "vda") -> float | None:
        return value(series, f"libvirt_domain_block_limit_{name}", domain="web-01", device=device)

    assert limit("total_bytes_per_second") == 50 * 2**20
    assert limit("read_requests_per_second") == 400
    assert limit("write_requests_per_second") == 200
    assert limit("burst_write_requests_per_second") == 1000
    assert limit("burst_write_requests_duration_seconds") == 10
    assert limit("request_size_bytes") == 16384
    assert limit("read_bytes_per_second") is None, "a throttle not set has no series"
    assert limit("total_bytes_per_second", device="vdb") is None
    assert {method for _, method in host.calls} <= {
        "XMLDesc", "controlInfo", "getCPUStats", "survey stats", "domainListGetStats", "blockInfo",
        "jobStats", "lookupByUUID", "listAllStoragePools", "vcpus",
    }  # fmt: skip


OPS = "https://example.com/ns/ops/1.0"


def test_metadata_named_by_the_flags_title_and_description_are_labels_of_one_info_family() -> None:
    hostile = '"} 1\nevil{a="b"} 1 ' + "z" * 10_000
    tagged = FakeDomain(
        "tagged",
        1,
        title="Shop front",
        description="Serves the shop.\nOwned by web.",
        metadata=f'<ops:service xmlns:ops="{OPS}"><ops:team>web</ops:team>'
        f'<ops:owner email="alice@example.com"/></ops:service>',
    )
    tenant = FakeDomain("tenant", 2, title=hostile, metadata=f'<ops:service xmlns:ops="{OPS}"/>')
    plain = FakeDomain("plain", 3)
    flags = parse_metadata_flag(f"{OPS}=service/team,owner:service/owner/@email")
    harness = Harness(FakeHost([tagged, tenant, plain]), replace(make_config(), metadata=flags))
    harness.cycle(harness.exporter.bulk)
    text = plain_text(harness.exporter.snapshot.current)
    series = parse(text)
    info = {
        dict(labels)["domain"]: dict(labels)
        for name, labels in series
        if name == "libvirt_domain_metadata_info"
    }
    assert info["tagged"] == {
        "domain": "tagged",
        "title": "Shop front",
        "description": "Serves the shop. Owned by web.",
        "team": "web",
        "owner": "alice@example.com",
    }
    assert info["tenant"]["title"] == " ".join(hostile.split())[:256]
    assert (info["tenant"]["team"], info["tenant"]["owner"], info["tenant"]["description"]) == ("", "", "")
    assert "plain" not in info, "a domain with none of them set has no series"
    assert (
        len([line for line in text.decode().splitlines() if line.startswith("libvirt_domain_metadata_info")])
        == 2
    )
    assert_promtool_accepts(text)


def test_vcpu_pinning_comes_from_the_xml_and_goes_with_the_vcpu_collector() -> None:
    host = FakeHost([realistic_domain(), FakeDomain("free", 2, vcpus=2)])
    series = sampled(host, frozenset(COLLECTOR_DEFAULTS)).scrape()
    pins = {
        (dict(labels)["domain"], dict(labels)["vcpu"]): dict(labels)["cpus"]
        for name, labels in series
        if name == "libvirt_domain_vcpu_pinning_info"
    }
    assert pins == {
        ("web-01", "0"): "2",
        ("web-01", "1"): "3",
        ("web-01", "2"): "4-5",
        ("web-01", "3"): "4-5",
    }
    off = sampled(FakeHost([realistic_domain()]), frozenset(COLLECTOR_DEFAULTS) - {"vcpu"}).scrape()
    assert not any(name == "libvirt_domain_vcpu_pinning_info" for name, _ in off)


NETWORK_DEVICES = """
  <disk type='network' device='disk'><driver name='qemu' type='raw'/>
    <source protocol='rbd' name='volumes/volume-7f3a'><host name='ceph-mon1' port='6789'/></source>
    <target dev='vdb' bus='virtio'/></disk>
  <disk type='network' device='disk'><driver name='qemu' type='raw'/>
    <source protocol='iscsi' name='iqn.2013-07.com.example:storage/1'><host name='10.0.0.5'/></source>
    <target dev='sdb' bus='scsi'/></disk>
  <interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/>
    <source><address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source>
    <alias name='hostdev0'/></interface>
"""


def test_network_disks_and_a_hostdev_nic_are_exported_without_errors_saying_what_they_are() -> None:
    host = FakeHost([FakeDomain("ceph-vm", 1, devices=NETWORK_DEVICES)])
    harness = sampled(host, frozenset(COLLECTOR_DEFAULTS))
    text = plain_text(harness.exporter.snapshot.current)
    series = parse(text)
    disks = {
        dict(labels)["device"]: dict(labels) for name, labels in series if name == "libvirt_domain_block_info"
    }
    assert {device: (d["path"], d["type"], d["protocol"]) for device, d in disks.items()} == {
        "vda": (f"{IMAGES}/ceph-vm-vda.qcow2", "file", ""),
        "vdb": ("volumes/volume-7f3a", "network", "rbd"),
        "sdb": ("iqn.2013-07.com.example:storage/1", "network", "iscsi"),
    }
    for device in ("vdb", "sdb"):
        assert (
            value(series, "libvirt_domain_block_capacity_bytes", domain="ceph-vm", device=device)
            == 64 * 2**20
        )
    assert value(series, "libvirt_storage_domains", storage=IMAGES) == 1, (
        "a network disk is on no local storage"
    )
    nic = {"domain": "ceph-vm", "device": "hostdev0", "mac": "52:54:00:6d:90:02", "model": ""}
    assert value(series, "libvirt_domain_interface_info", **nic, source="0000:03:10.2", type="hostdev") == 1
    for sampler in ("basic", "bulk", "block"):
        assert value(series, "libvirt_domain_sample_errors_total", domain="ceph-vm", sampler=sampler) == 0
        assert value(series, "libvirt_domain_sample_stale", domain="ceph-vm", sampler=sampler) == 0
    assert_promtool_accepts(text)

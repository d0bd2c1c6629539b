"""End to end: the compatibility recording rules, loaded into a real Prometheus that scrapes the
exporter serving the tiny VMs, answer queries of the other exporters' dashboards.

inovex's queries are the panels of the dashboard in inovex/prometheus-libvirt-exporter
(dashboards/openstack-libvirt-dashboard/libvirt-openstack.json), with `$dom_id` set to a VM and
`$__rate_interval` to 1m; its two panels that only a guest OS's balloon driver feeds (memory used
and swap) are left to the promtool unit tests, as the tiny VMs run no guest. For Debian's exporter
no dashboard's JSON was at hand: its queries use the names and labels its README documents, in the
forms its dashboards use (rates per device, a UUID filter, memory used over maximum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.exposition import parse
from tests.integration.prometheus import Prometheus, query_until, start_prometheus
from tests.integration.vms import FAST_SAMPLING as ARGS
from tests.integration.vms import MEMORY_MIB, Exporter, TinyVM, start_exporter

DASHBOARDS = Path(__file__).parents[2] / "dashboards"
DEBIAN_EXPORTER = "/usr/bin/prometheus-libvirt-exporter"  # installed by scripts/ensure-libvirtd.sh
NOT_RECORDED = {"libvirt_up", "libvirt_domain_state_code"}  # ours serves these names itself
MEMORY_BYTES = MEMORY_MIB * 2**20
TIMEOUT_S = 60
Result = list[dict[str, Any]]


@pytest.fixture
def prometheus_with_rules(
    tiny_vms: list[TinyVM], run_exporter: Callable[..., Exporter], tmp_path: Path
) -> Iterator[Callable[[str], Prometheus]]:
    """Factory: a Prometheus that scrapes one exporter every 2 s and evaluates the rules of
    dashboards/compat-<exporter>.yml every 2 s."""
    started: list[Prometheus] = []

    def start(exporter: str) -> Prometheus:
        target = run_exporter(*ARGS)
        rules = DASHBOARDS / f"compat-{exporter}.yml"
        started.append(start_prometheus(tmp_path, f"127.0.0.1:{target.port}", [rules]))
        return started[-1]

    yield start
    for prometheus in started:
        prometheus.stop()
        print("--- prometheus log ---\n" + prometheus.log_path.read_text(errors="replace"))


def by_domain(result: Result) -> dict[str, list[dict[str, Any]]]:
    domains: dict[str, list[dict[str, Any]]] = {}
    for series in result:
        domains.setdefault(series["metric"].get("domain", ""), []).append(series)
    return domains


def value(series: dict[str, Any]) -> float:
    return float(series["value"][1])


def at_least(count: int) -> Callable[[Result], bool]:
    return lambda result: len(result) >= count


def answer_for(prometheus: Prometheus, expr: str, vms: list[TinyVM]) -> dict[str, list[dict[str, Any]]]:
    """The series of each VM that `expr` answers, once it answers for all of them (rates need two
    scrapes and two rule evaluations). Other tests' VMs on the shared libvirtd are left out."""
    names = {vm.name for vm in vms}
    result = query_until(prometheus, expr, lambda r: names <= by_domain(r).keys(), TIMEOUT_S)
    return {name: series for name, series in by_domain(result).items() if name in names}


def test_debian_exporter_queries_answer_from_our_series(
    prometheus_with_rules: Callable[[str], Prometheus], tiny_vms: list[TinyVM]
) -> None:
    prometheus = prometheus_with_rules("debian")

    cpu = answer_for(prometheus, "rate(libvirt_domain_info_cpu_time_seconds_total[1m])", tiny_vms)
    for vm in tiny_vms:
        [series] = cpu[vm.name]
        assert series["metric"]["uuid"] == vm.uuid
        assert 0 <= value(series) < vm.vcpus

    by_uuid = f'libvirt_domain_info_virtual_cpus{{uuid="{tiny_vms[1].uuid}"}}'
    assert [value(s) for s in query_until(prometheus, by_uuid, bool, TIMEOUT_S)] == [tiny_vms[1].vcpus]

    maximum = answer_for(prometheus, "libvirt_domain_info_maximum_memory_bytes", tiny_vms)
    assert {name: [value(s) for s in series] for name, series in maximum.items()} == {
        vm.name: [MEMORY_BYTES] for vm in tiny_vms
    }
    used = answer_for(
        prometheus,
        "libvirt_domain_info_memory_usage_bytes / libvirt_domain_info_maximum_memory_bytes",
        tiny_vms,
    )
    assert all(0 < value(series) <= 1 for serieses in used.values() for series in serieses)

    for counter in ("read_bytes", "write_bytes", "read_requests", "write_requests"):
        disks = answer_for(
            prometheus,
            f"sum by (domain, uuid, source_file, target_device) "
            f"(rate(libvirt_domain_block_stats_{counter}_total[1m]))",
            tiny_vms,
        )
        for vm in tiny_vms:
            labels = {
                (s["metric"]["uuid"], s["metric"]["source_file"], s["metric"]["target_device"])
                for s in disks[vm.name]
            }
            files = zip(vm.disk_paths, vm.disk_targets, strict=True)
            assert labels == {(vm.uuid, str(path), target) for path, target in files}
            assert all(value(series) >= 0 for series in disks[vm.name])

    for direction in ("receive", "transmit"):
        interfaces = answer_for(
            prometheus, f"rate(libvirt_domain_interface_stats_{direction}_bytes_total[1m])", tiny_vms
        )
        for vm in tiny_vms:
            [series] = interfaces[vm.name]
            assert series["metric"]["target_device"] == vm.interface_name
            assert series["metric"]["uuid"] == vm.uuid
            assert "source_bridge" not in series["metric"]  # an ethernet interface has no bridge

    [domains] = query_until(prometheus, "libvirt_domains_number", bool, TIMEOUT_S)
    assert value(domains) >= len(tiny_vms)


def test_debian_exporter_series_are_recorded_with_its_names_and_labels(
    prometheus_with_rules: Callable[[str], Prometheus],
    tiny_vms: list[TinyVM],
    libvirt_uri: str,
    tmp_path: Path,
) -> None:
    """Debian's exporter itself, scraped once on the same VMs: every per-domain series it serves
    is recorded under its name with its labels (values move on between the two reads)."""
    prometheus = prometheus_with_rules("debian")
    debians = start_exporter(libvirt_uri, (), tmp_path / "debian-exporter.log", program=(DEBIAN_EXPORTER,))
    try:
        served = parse(debians.scrape(timeout=30))
    finally:
        debians.stop()
    names = {vm.name for vm in tiny_vms}
    theirs: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for name, labels in served:
        if dict(labels).get("domain") in names and name not in NOT_RECORDED:
            # Prometheus stores a label with an empty value as no label (their source_bridge="").
            theirs.setdefault(name, set()).add(frozenset((k, v) for k, v in labels if v))
    assert len(theirs) >= 16, sorted(theirs)  # 4 domain figures, 4+ block and 8 interface counters
    for name, label_sets in sorted(theirs.items()):
        selector = f'{name}{{domain=~"{"|".join(sorted(names))}"}}'
        result = query_until(prometheus, selector, at_least(len(label_sets)), TIMEOUT_S)
        ours = {
            frozenset((k, v) for k, v in s["metric"].items() if k not in {"__name__", "job", "instance"})
            for s in result
        }
        assert ours == label_sets, name


# (panel title, query): the inovex dashboard's panels fed by a host without a guest OS.
INOVEX_PANELS = {
    "VM • Power State": 'libvirt_domain_info_state{domain="$dom_id"}',
    "CPU • Allocated vCPUs": 'libvirt_domain_vcpu_current{domain="$dom_id"}',
    "Memory • Allocated RAM": 'libvirt_domain_memory_stats_maximum_bytes{domain="$dom_id"}',
    "Storage • Disk Count": 'count(libvirt_domain_block_stats_info{domain="$dom_id"})',
    "Network • Port Count": 'count(libvirt_domain_interface_stats_info{domain="$dom_id"})',
    "CPU • Usage %": '(rate(libvirt_domain_info_cpu_time_seconds_total{domain="$dom_id"}[$__rate_interval])'
    ' / libvirt_domain_vcpu_current{domain="$dom_id"}) * 100',
    "CPU • Steal Time %": "(sum by (domain) (rate(libvirt_domain_vcpu_delay_seconds_total"
    '{domain="$dom_id"}[$__rate_interval])) / sum by (domain) (rate('
    'libvirt_domain_vcpu_time_seconds_total{domain="$dom_id"}[$__rate_interval]))) * 100',
    "Storage • Total IOPS": "sum by (domain, target_device) ("
    'rate(libvirt_domain_block_stats_read_requests_total{domain="$dom_id"}[$__rate_interval])'
    ' + rate(libvirt_domain_block_stats_write_requests_total{domain="$dom_id"}[$__rate_interval]))',
    "Storage • Read IOPS": "sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_read_requests_total", domain="$dom_id"}[$__rate_interval]))',
    "Storage • Write Throughput": "sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_write_bytes_total", domain="$dom_id"}[$__rate_interval]))',
    "Storage • Read Latency": "(sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_read_time_seconds_total", domain="$dom_id"}[$__rate_interval]))'
    " / sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_read_requests_total", domain="$dom_id"}[$__rate_interval]))) * 1000',
    "Storage • Write Latency": "(sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_write_time_seconds_total", domain="$dom_id"}[$__rate_interval]))'
    " / sum by (domain, target_device) (rate({__name__=~"
    '"libvirt_domain_block_stats_write_requests_total", domain="$dom_id"}[$__rate_interval]))) * 1000',
    "Storage • Average Block Size": "sum by (domain, target_device) ("
    'rate(libvirt_domain_block_stats_read_bytes_total{domain="$dom_id"}[$__rate_interval])'
    ' + rate(libvirt_domain_block_stats_write_bytes_total{domain="$dom_id"}[$__rate_interval]))'
    " / sum by (domain, target_device) ("
    'rate(libvirt_domain_block_stats_read_requests_total{domain="$dom_id"}[$__rate_interval])'
    ' + rate(libvirt_domain_block_stats_write_requests_total{domain="$dom_id"}[$__rate_interval]))',
    **{
        f"Network • {title}": "sum by (domain, target_device) ("
        + " + ".join(
            f'rate(libvirt_domain_interface_stats_{family}_total{{domain="$dom_id"}}[$__rate_interval])'
            for family in families
        )
        + ")"
        for title, families in {
            "Total Throughput": ("receive_bytes", "transmit_bytes"),
            "Total Packets": ("transmit_packets", "receive_packets"),
            "Receive Errors": ("receive_errors",),
            "Transmit Errors": ("transmit_errors",),
            "Receive Drops": ("receive_drops",),
        }.items()
    },
}


def inovex_query(panel: str, vm: TinyVM) -> str:
    return INOVEX_PANELS[panel].replace("$dom_id", vm.name).replace("$__rate_interval", "1m")


def test_inovex_dashboard_panels_answer_from_our_series(
    prometheus_with_rules: Callable[[str], Prometheus], tiny_vms: list[TinyVM]
) -> None:
    prometheus = prometheus_with_rules("inovex")
    for vm in tiny_vms:

        def panel(title: str, vm: TinyVM = vm) -> Result:
            return query_until(prometheus, inovex_query(title, vm), bool, TIMEOUT_S)

        [state] = panel("VM • Power State")
        assert (state["metric"]["state_desc"], value(state)) == ("the domain is running", 1)
        assert [value(s) for s in panel("CPU • Allocated vCPUs")] == [vm.vcpus]
        assert [value(s) for s in panel("Memory • Allocated RAM")] == [MEMORY_BYTES]
        assert [value(s) for s in panel("Storage • Disk Count")] == [len(vm.disk_targets)]
        assert [value(s) for s in panel("Network • Port Count")] == [1]
        [cpu] = panel("CPU • Usage %")
        assert 0 <= value(cpu) <= 100
        assert len(panel("CPU • Steal Time %")) == 1  # a value (NaN while the vCPUs have not run)
        for title in INOVEX_PANELS:
            if title.startswith("Storage • ") and title != "Storage • Disk Count":
                devices = {series["metric"]["target_device"] for series in panel(title)}
                assert devices == set(vm.disk_targets), title
            if title.startswith("Network • ") and title != "Network • Port Count":
                devices = {series["metric"]["target_device"] for series in panel(title)}
                assert devices == {vm.interface_name}, title

        capacity = f'libvirt_domain_block_stats_capacity_bytes{{domain="{vm.name}"}}'
        sizes = {s["metric"]["target_device"]: value(s) for s in query_until(prometheus, capacity, bool, 60)}
        assert sizes == dict.fromkeys(vm.disk_targets, vm.disk_virtual_size_bytes)

"""Per-domain families from the `bulk` sampler's stat groups and from the domain XML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from libvirt_exporter.collector.families import KIBIBYTES, NANOSECONDS, Families, Kind, Spec, fields, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.stat_keys import Device, devices, memory_bandwidth
from libvirt_exporter.store import Sample

G, C = Kind.GAUGE, Kind.COUNTER
KIB = KIBIBYTES
MEBIBYTES = 1024.0 * 1024.0

D = ("domain",)
INFO = gauge(
    "libvirt_domain_info",
    "Identity of the domain, from its XML, with value 1.",
    ("domain", "uuid", "os_type", "arch", "machine"),
    source="domain XML",
)
OPENSTACK_INFO = gauge(
    "libvirt_domain_openstack_info",
    "The OpenStack instance the domain is, from Nova's metadata in its XML, with value 1.",
    (
        "domain",
        "instance_name",
        "instance_id",
        "flavor",
        "project_id",
        "project_name",
        "user_id",
        "user_name",
    ),
    source="domain XML <nova:instance>",
)
MEMORY_USED = gauge(
    "libvirt_domain_memory_used_bytes",
    "Memory the guest uses: what its OS sees less what it could still use without swapping "
    "(balloon.available - balloon.usable); needs the guest's balloon driver and a stats period "
    "(last sample).",
    D,
    KIB,
    source="balloon.available, balloon.usable",
    collector="balloon",
)
"""What operators read `current` as, wrongly: the guest's MemTotal - MemAvailable, the "used" of
`free`, so that page cache the guest could drop counts as free (docs/metrics.md)."""
METADATA_INFO = gauge(
    "libvirt_domain_metadata_info",
    "The domain's title and description, and one label per element or attribute of its <metadata> "
    "named by --libvirt.metadata, from its XML, with value 1; each value on one line, at most 256 "
    "characters.",
    ("domain", "title", "description"),
    source="domain XML `<title>`, `<description>`, `<metadata>`",
)
VCPU_PINNING_INFO = gauge(
    "libvirt_domain_vcpu_pinning_info",
    "The host CPUs a pinned vCPU may run on (cpus, a cpuset such as 0-3,8), from the domain XML, "
    "with value 1; a vCPU free to run on any host CPU has no series.",
    ("domain", "vcpu", "cpus"),
    source="domain XML `<cputune><vcpupin>`, `<vcpu cpuset>`",
    collector="vcpu",
)
STATE = gauge(
    "libvirt_domain_state",
    "The domain's state and the reason for it, as words, with value 1 (last sample).",
    ("domain", "state", "reason"),
    source="state.state, state.reason",
)
INTERFACE_INFO = gauge(
    "libvirt_domain_interface_info",
    "A network interface of the domain, from its XML, with value 1: device is its host-side device, "
    "or libvirt's alias for one that has none (a hostdev NIC, an SR-IOV VF passed through, whose "
    "source is the VF's PCI address); type is the interface's (bridge, network, direct, hostdev, ...).",
    ("domain", "device", "mac", "source", "model", "type"),
    source="domain XML",
    collector="interface",
)

# fmt: off
SCALARS = (
    fields("", D, [("state.state", G, "libvirt_domain_state_code", "virDomainState number", 1)])
    + fields("cpu", D, [
        ("cpu.time", C, "libvirt_domain_cpu_time_seconds", "CPU time used by the domain", NANOSECONDS),
        ("cpu.user", C, "libvirt_domain_cpu_user_seconds", "User CPU time used by the domain", NANOSECONDS),
        ("cpu.system", C, "libvirt_domain_cpu_system_seconds", "System CPU time used by the domain",
         NANOSECONDS),
    ])
    + fields("vcpu", D, [
        ("vcpu.current", G, "libvirt_domain_vcpus_current", "vCPUs online", 1),
        ("vcpu.maximum", G, "libvirt_domain_vcpus_maximum", "vCPUs the domain may have", 1),
    ])
    + fields("balloon", D, [
        ("balloon.maximum", G, "libvirt_domain_memory_maximum_bytes", "Memory the domain may have", KIB),
        ("balloon.current", G, "libvirt_domain_memory_current_bytes", "Memory the balloon leaves the domain",
         KIB),
        ("balloon.rss", G, "libvirt_domain_memory_rss_bytes", "Resident memory of the QEMU process", KIB),
        ("balloon.usable", G, "libvirt_domain_memory_usable_bytes",
         "Memory the guest could use without swapping", KIB),
        ("balloon.available", G, "libvirt_domain_memory_available_bytes", "Memory the guest OS sees", KIB),
        ("balloon.unused", G, "libvirt_domain_memory_unused_bytes", "Memory the guest leaves unused", KIB),
        ("balloon.disk_caches", G, "libvirt_domain_memory_disk_caches_bytes",
         "Guest memory used as disk cache", KIB),
        ("balloon.swap_in", C, "libvirt_domain_memory_swap_in_bytes", "Memory the guest swapped in", KIB),
        ("balloon.swap_out", C, "libvirt_domain_memory_swap_out_bytes", "Memory the guest swapped out", KIB),
        ("balloon.major_fault", C, "libvirt_domain_memory_major_faults",
         "Guest page faults that needed disk I/O", 1),
        ("balloon.minor_fault", C, "libvirt_domain_memory_minor_faults", "Guest page faults without I/O", 1),
        ("balloon.last-update", G, "libvirt_domain_memory_stats_timestamp_seconds",
         "When the guest last updated its memory statistics", 1),
    ])
    + fields("perf", D, [
        ("perf.cmt", G, "libvirt_domain_perf_cache_occupancy_bytes", "Last-level cache the domain uses", 1),
        ("perf.mbmt", G, "libvirt_domain_perf_memory_bandwidth_bytes_per_second",
         "Memory bandwidth of the domain to all NUMA nodes", 1),
        ("perf.mbml", G, "libvirt_domain_perf_memory_bandwidth_local_bytes_per_second",
         "Memory bandwidth of the domain to its local NUMA node", 1),
        ("perf.cpu_clock", C, "libvirt_domain_perf_cpu_clock_seconds", "CPU clock time (perf cpu_clock)",
         NANOSECONDS),
        ("perf.task_clock", C, "libvirt_domain_perf_task_clock_seconds", "Task clock time (perf task_clock)",
         NANOSECONDS),
        *((f"perf.{event}", C, f"libvirt_domain_perf_{event}", f"perf event {event}", 1) for event in (
            "cpu_cycles", "instructions", "cache_references", "cache_misses", "branch_instructions",
            "branch_misses", "bus_cycles", "stalled_cycles_frontend", "stalled_cycles_backend",
            "ref_cpu_cycles", "page_faults", "context_switches", "cpu_migrations", "page_faults_min",
            "page_faults_maj", "alignment_faults", "emulation_faults")),
    ])
    + fields("dirtyrate", D, [
        ("dirtyrate.megabytes_per_second", G, "libvirt_domain_dirty_rate_bytes_per_second",
         "Guest memory dirtied per second, as last measured", MEBIBYTES),
    ])
)

VCPU_FIELDS = fields("vcpu", ("domain", "vcpu"), [
    ("state", G, "libvirt_domain_vcpu_state", "virVcpuState of the vCPU", 1),
    ("time", C, "libvirt_domain_vcpu_time_seconds", "Time the vCPU ran", NANOSECONDS),
    ("wait", C, "libvirt_domain_vcpu_wait_seconds",
     "Time the vCPU was runnable but waited for a host CPU, by the kernel's scheduler statistics "
     "(0 while kernel.sched_schedstats is off)", NANOSECONDS),
    ("delay", C, "libvirt_domain_vcpu_delay_seconds",
     "Time the vCPU was runnable but waited for a host CPU: steal", NANOSECONDS),
])

NET_FIELDS = fields("interface", ("domain", "device"), [  # net.N.<field>
    (f"{short}.{stat}", C, f"libvirt_domain_interface_{direction}_{unit}", text.format(direction), 1)
    for short, direction in (("rx", "receive"), ("tx", "transmit"))
    for stat, unit, text in (
        ("bytes", "bytes", "Bytes {}d"), ("pkts", "packets", "Packets {}d"),
        ("errs", "errors", "Errors on {}"), ("drop", "drops", "Packets dropped on {}"),
    )
])

IOTHREAD_FIELDS = fields("iothread", ("domain", "iothread"), [
    ("poll-max-ns", G, "libvirt_domain_iothread_poll_max_seconds", "Longest polling time of the I/O thread",
     NANOSECONDS),
    ("poll-grow", G, "libvirt_domain_iothread_poll_grow", "Factor the polling time grows by", 1),
    ("poll-shrink", G, "libvirt_domain_iothread_poll_shrink", "Divisor the polling time shrinks by", 1),
])

MEMORY_BANDWIDTH_FIELDS = fields("memory", ("domain", "monitor", "node"), [
    ("bytes.total", C, "libvirt_domain_memory_bandwidth_bytes",
     "Memory traffic of the monitored vCPUs to all memory controllers (resctrl)", 1),
    ("bytes.local", C, "libvirt_domain_memory_bandwidth_local_bytes",
     "Memory traffic of the monitored vCPUs to the local memory controller (resctrl)", 1),
])
# fmt: on

SPECS = (
    INFO,
    OPENSTACK_INFO,
    METADATA_INFO,
    STATE,
    INTERFACE_INFO,
    VCPU_PINNING_INFO,
    MEMORY_USED,
    *(spec for _, spec in SCALARS + VCPU_FIELDS + NET_FIELDS + IOTHREAD_FIELDS + MEMORY_BANDWIDTH_FIELDS),
)

STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")
REASON_NAMES: dict[int, tuple[str, ...]] = {
    1: ("unknown", "booted", "migrated", "restored", "from_snapshot", "unpaused", "migration_canceled",
        "save_canceled", "wakeup", "crashed", "postcopy", "postcopy_failed"),
    3: ("unknown", "user", "migration", "save", "dump", "ioerror", "watchdog", "from_snapshot",
        "shutting_down", "snapshot", "crashed", "starting_up", "postcopy", "postcopy_failed", "api_error"),
    4: ("unknown", "user"),
    5: ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot",
        "daemon"),
    6: ("unknown", "panicked"),
}  # fmt: skip

_BANDWIDTH_SPECS = dict(MEMORY_BANDWIDTH_FIELDS)


def _word(names: tuple[str, ...], number: int) -> str:
    return names[number] if 0 <= number < len(names) else str(number)


def state_name(stats: Mapping[str, Any]) -> str:
    return _word(STATE_NAMES, int(stats["state.state"]))


def reason_name(stats: Mapping[str, Any]) -> str:
    return _word(REASON_NAMES.get(int(stats["state.state"]), ("unknown",)), int(stats.get("state.reason", 0)))


def _add_devices(
    families: Families, fields: tuple[tuple[str, Spec], ...], name: str, found: list[Device]
) -> None:
    for device, values in found:
        labels = (name, device)  # one tuple for all the device's families
        for field, spec in fields:
            if (value := values.get(field)) is not None:
                families.add(spec, labels, value)


def _add_stats(families: Families, name: str, stats: Mapping[str, Any]) -> None:
    if "state.state" in stats:
        families.add(STATE, (name, state_name(stats), reason_name(stats)), 1)
    for key, spec in SCALARS:
        if key in stats:
            families.add(spec, (name,), stats[key])
    if "balloon.available" in stats and "balloon.usable" in stats:
        families.add(MEMORY_USED, (name,), stats["balloon.available"] - stats["balloon.usable"])
    by_group = devices(stats)
    _add_devices(families, VCPU_FIELDS, name, by_group.get("vcpu", []))
    _add_devices(families, NET_FIELDS, name, by_group.get("net", []))
    _add_devices(families, IOTHREAD_FIELDS, name, by_group.get("iothread", []))
    for monitor, node, field, value in memory_bandwidth(stats):
        if field in _BANDWIDTH_SPECS:
            families.add(_BANDWIDTH_SPECS[field], (name, monitor, node), value)


def metadata_info(labels: tuple[str, ...]) -> Spec:
    """`libvirt_domain_metadata_info` with the labels of the `--libvirt.metadata` fields."""
    return replace(METADATA_INFO, labels=METADATA_INFO.labels + labels)


def _add_description(
    families: Families, entry: DomainEntry, collectors: frozenset[str], metadata: Spec
) -> None:
    description = entry.description
    if description is None:
        return
    families.add(
        INFO, (entry.name, description.uuid, description.os_type, description.arch, description.machine), 1
    )
    if (nova := description.openstack) is not None:
        labels = (entry.name, nova.instance_name, description.uuid, nova.flavor, nova.project_id,
                  nova.project_name, nova.user_id, nova.user_name)  # fmt: skip
        families.add(OPENSTACK_INFO, labels, 1)
    values = (description.title, description.description_text, *description.metadata)
    if any(values):  # where none is set, the family would say nothing
        families.add(metadata, (entry.name, *values), 1)
    for nic in description.interfaces if "interface" in collectors else ():
        if nic.device:
            families.add(
                INTERFACE_INFO, (entry.name, nic.device, nic.mac, nic.source, nic.model, nic.type), 1
            )
    for vcpu, cpus in description.vcpu_pins if "vcpu" in collectors else ():
        families.add(VCPU_PINNING_INFO, (entry.name, str(vcpu), cpus), 1)


def _values(sample: Sample | None) -> Mapping[str, Any]:
    return {} if sample is None else sample.values


def collect(state: State) -> Families:
    families = Families()
    metadata = metadata_info(state.metadata_labels)
    for entry in state.domains:
        _add_description(families, entry, state.collectors, metadata)
        values = {  # the survey's (basic) values are the fresher
            **_values(state.store.sample(SamplerName.BULK, entry.subject)),
            **_values(state.store.sample(SamplerName.BASIC, entry.subject)),
        }
        if values:
            _add_stats(families, entry.name, values)
    return families

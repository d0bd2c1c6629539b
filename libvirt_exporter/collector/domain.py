"""Per-domain families from the `bulk` sampler's stat groups and from the domain XML."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric

from libvirt_exporter.collector.families import (
    KIBIBYTES,
    NANOSECONDS,
    Families,
    Spec,
    counter,
    gauge,
)
from libvirt_exporter.collector.view import View
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers.bulk import NAME as BULK

D = ("domain",)
DV = ("domain", "vcpu")
DD = ("domain", "device")

INFO = gauge(
    "libvirt_domain_info",
    "Identity of the domain, from its XML, with value 1.",
    ("domain", "uuid", "os_type", "arch", "machine"),
)
STATE = gauge(
    "libvirt_domain_state",
    "The domain's state and the reason for it, as words, with value 1 (last sample).",
    ("domain", "state", "reason"),
)
INTERFACE_INFO = gauge(
    "libvirt_domain_interface_info",
    "A network interface of the domain, from its XML, with value 1.",
    ("domain", "device", "mac", "source", "model"),
)

SCALARS: tuple[tuple[str, Spec], ...] = (
    ("state.state", gauge("libvirt_domain_state_code", "virDomainState number (last sample).", D)),
    (
        "cpu.time",
        counter(
            "libvirt_domain_cpu_time_seconds",
            "CPU time used by the domain (last sample).",
            D,
            NANOSECONDS,
        ),
    ),
    (
        "cpu.user",
        counter(
            "libvirt_domain_cpu_user_seconds",
            "User CPU time used by the domain (last sample).",
            D,
            NANOSECONDS,
        ),
    ),
    (
        "cpu.system",
        counter(
            "libvirt_domain_cpu_system_seconds",
            "System CPU time used by the domain (last sample).",
            D,
            NANOSECONDS,
        ),
    ),
    ("vcpu.current", gauge("libvirt_domain_vcpus_current", "vCPUs online (last sample).", D)),
    (
        "vcpu.maximum",
        gauge("libvirt_domain_vcpus_maximum", "vCPUs the domain may have (last sample).", D),
    ),
    (
        "balloon.maximum",
        gauge(
            "libvirt_domain_memory_maximum_bytes",
            "Memory the domain may have (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.current",
        gauge(
            "libvirt_domain_memory_current_bytes",
            "Memory the balloon leaves the domain (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.rss",
        gauge(
            "libvirt_domain_memory_rss_bytes",
            "Resident memory of the QEMU process (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.usable",
        gauge(
            "libvirt_domain_memory_usable_bytes",
            "Memory the guest could use without swapping (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.available",
        gauge(
            "libvirt_domain_memory_available_bytes",
            "Memory the guest OS sees (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.unused",
        gauge(
            "libvirt_domain_memory_unused_bytes",
            "Memory the guest leaves unused (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.disk_caches",
        gauge(
            "libvirt_domain_memory_disk_caches_bytes",
            "Guest memory used as disk cache (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.swap_in",
        counter(
            "libvirt_domain_memory_swap_in_bytes",
            "Memory the guest swapped in (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.swap_out",
        counter(
            "libvirt_domain_memory_swap_out_bytes",
            "Memory the guest swapped out (last sample).",
            D,
            KIBIBYTES,
        ),
    ),
    (
        "balloon.major_fault",
        counter(
            "libvirt_domain_memory_major_faults",
            "Guest page faults that needed disk I/O (last sample).",
            D,
        ),
    ),
    (
        "balloon.minor_fault",
        counter(
            "libvirt_domain_memory_minor_faults",
            "Guest page faults without disk I/O (last sample).",
            D,
        ),
    ),
    (
        "balloon.last-update",
        gauge(
            "libvirt_domain_memory_stats_timestamp_seconds",
            "When the guest last updated its memory statistics.",
            D,
        ),
    ),
)

VCPU_FIELDS: tuple[tuple[str, Spec], ...] = (
    ("state", gauge("libvirt_domain_vcpu_state", "virVcpuState of the vCPU (last sample).", DV)),
    (
        "time",
        counter("libvirt_domain_vcpu_time_seconds", "Time the vCPU ran (last sample).", DV, NANOSECONDS),
    ),
    (
        "wait",
        counter(
            "libvirt_domain_vcpu_wait_seconds",
            "Time the vCPU waited on I/O (last sample).",
            DV,
            NANOSECONDS,
        ),
    ),
    (
        "delay",
        counter(
            "libvirt_domain_vcpu_delay_seconds",
            "Time the vCPU was runnable but waited for a host CPU: steal (last sample).",
            DV,
            NANOSECONDS,
        ),
    ),
)

NET_FIELDS: tuple[tuple[str, Spec], ...] = tuple(
    (
        f"{short}.{stat}",
        counter(f"libvirt_domain_interface_{direction}_{unit}", f"{text} (last sample).", DD),
    )
    for short, direction in (("rx", "receive"), ("tx", "transmit"))
    for stat, unit, text in (
        ("bytes", "bytes", f"Bytes {direction}d"),
        ("pkts", "packets", f"Packets {direction}d"),
        ("errs", "errors", f"Errors on {direction}"),
        ("drop", "drops", f"Packets dropped on {direction}"),
    )
)

SPECS = (INFO, STATE, INTERFACE_INFO, *(spec for _, spec in SCALARS + VCPU_FIELDS + NET_FIELDS))

STATE_NAMES = (
    "nostate",
    "running",
    "blocked",
    "paused",
    "shutdown",
    "shutoff",
    "crashed",
    "pmsuspended",
)
REASON_NAMES: dict[int, tuple[str, ...]] = {
    1: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from_snapshot",
        "unpaused",
        "migration_canceled",
        "save_canceled",
        "wakeup",
        "crashed",
        "postcopy",
        "postcopy_failed",
    ),
    3: (
        "unknown",
        "user",
        "migration",
        "save",
        "dump",
        "ioerror",
        "watchdog",
        "from_snapshot",
        "shutting_down",
        "snapshot",
        "crashed",
        "starting_up",
        "postcopy",
        "postcopy_failed",
        "api_error",
    ),
    4: ("unknown", "user"),
    5: (
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from_snapshot",
        "daemon",
    ),
    6: ("unknown", "panicked"),
}


def _word(names: tuple[str, ...], number: int) -> str:
    return names[number] if 0 <= number < len(names) else str(number)


def state_name(stats: Mapping[str, Any]) -> str:
    return _word(STATE_NAMES, int(stats["state.state"]))


def reason_name(stats: Mapping[str, Any]) -> str:
    return _word(REASON_NAMES.get(int(stats["state.state"]), ("unknown",)), int(stats.get("state.reason", 0)))


def _add_stats(families: Families, name: str, stats: Mapping[str, Any]) -> None:
    if "state.state" in stats:
        families.add(STATE, (name, state_name(stats), reason_name(stats)), 1)
    for key, spec in SCALARS:
        if key in stats:
            families.add(spec, (name,), stats[key])
    for vcpu in range(int(stats.get("vcpu.maximum", 0))):
        for field, spec in VCPU_FIELDS:
            if (value := stats.get(f"vcpu.{vcpu}.{field}")) is not None:
                families.add(spec, (name, str(vcpu)), value)
    for index in range(int(stats.get("net.count", 0))):
        device = stats.get(f"net.{index}.name", str(index))
        for field, spec in NET_FIELDS:
            if (value := stats.get(f"net.{index}.{field}")) is not None:
                families.add(spec, (name, device), value)


def _add_description(families: Families, entry: DomainEntry) -> None:
    description = entry.description
    if description is None:
        return
    families.add(
        INFO,
        (entry.name, description.uuid, description.os_type, description.arch, description.machine),
        1,
    )
    for interface in description.interfaces:
        if interface.target:
            labels = (
                entry.name,
                interface.target,
                interface.mac,
                interface.source,
                interface.model,
            )
            families.add(INTERFACE_INFO, labels, 1)


def collect(view: View) -> Iterator[Metric]:
    families = Families()
    for entry in view.inventory.domains():
        _add_description(families, entry)
        sample = view.store.sample(BULK, entry.name)
        if sample is not None:
            _add_stats(families, entry.name, sample.values)
    yield from families

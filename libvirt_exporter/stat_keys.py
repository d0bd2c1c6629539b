"""libvirt's statistics come as flat keys (`block.0.name`, `block.0.rd.reqs`, `net.1.tx.bytes`,
`vcpu.2.time`, `iothread.7.poll-grow`, `memory.bandwidth.monitor.0.node.1.bytes.total`); here, and
only here, they become values per device. Samplers store the flat keys as libvirt gives them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEVICE_GROUPS = ("vcpu", "net", "block", "iothread", "fs", "if")
"""Groups whose keys are `group.N.field`: N counts devices, or is an I/O thread's id (`fs` and `if`
are virDomainGetGuestInfo's file systems and interfaces)."""
_BANDWIDTH_KEY = re.compile(r"^memory\.bandwidth\.monitor\.(\d+)\.node\.(\d+)\.(bytes\.\w+)$")

Device = tuple[str, dict[str, Any]]
"""A device's name (`name` where libvirt gives one, else its number) and its fields."""


def devices(stats: Mapping[str, Any]) -> dict[str, list[Device]]:
    """Per group of DEVICE_GROUPS, its devices in libvirt's order; one pass over the keys, one split
    of each (every render splits every domain's keys: the cheapest way counts)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in stats.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] not in DEVICE_GROUPS or not parts[1].isdigit():
            continue
        group, number, field = parts
        by_number = found.get(group)
        if by_number is None:
            by_number = found[group] = {}
        fields = by_number.get(number)
        if fields is None:
            fields = by_number[number] = {}
        fields[field] = value
    return {
        group: [
            (str(fields.get("name", number)), fields)
            for number, fields in sorted(by_number.items(), key=lambda item: int(item[0]))
        ]
        for group, by_number in found.items()
    }


def is_kvm_statistic(key: str) -> bool:
    """Whether the key is one of QEMU's KVM statistics, which libvirt 9.0 adds to the `vcpu` group
    (`query-stats`: 45 per vCPU on QEMU 7.2, `vcpu.0.exits.sum`, `vcpu.0.blocking.cur`). No family
    exports them (the vCPU fields exported are one word: `vcpu.0.time`), so the samplers drop them
    rather than store them and split them at every render."""
    return key.startswith("vcpu.") and key.count(".") > 2


def memory_bandwidth(stats: Mapping[str, Any]) -> list[tuple[str, str, str, Any]]:
    """(monitor name, node, field, value) of each resctrl memory-bandwidth counter."""
    counters = []
    for key, value in stats.items():
        if key.startswith("memory.bandwidth.") and (match := _BANDWIDTH_KEY.match(key)):
            monitor, node, field = match.groups()
            name = str(stats.get(f"memory.bandwidth.monitor.{monitor}.name", monitor))
            counters.append((name, node, field, value))
    return counters

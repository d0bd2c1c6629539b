"""The `block` sampler: statistics and capacity / allocation / physical size of every disk.

Both calls need the domain's job and QEMU monitor, so on a frozen VM they hang: each domain gets
its own call under its own deadline, and none while the domain's monitor is stuck on another call.
The "block-info calls stuck for N minutes" alert watches for a domain whose block values are stale
while a call on it is outstanding (`libvirt_domain_call_in_flight_seconds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import libvirt

from libvirt_exporter.domain_xml import Disk
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.lanes import Lane
from libvirt_exporter.libvirt_client import is_unsupported
from libvirt_exporter.samplers.per_domain import DomainSampler

NAME = "block"


_BLOCK_STATS_FIELDS = ("rd_operations", "rd_bytes", "wr_operations", "wr_bytes", "errs")


def _io_counters(domain: Any, target: str) -> dict[str, int]:
    """virDomainBlockStatsFlags, or the older virDomainBlockStats where a driver lacks it."""
    try:
        return dict(domain.blockStatsFlags(target, 0))
    except libvirt.libvirtError as error:
        if not is_unsupported(error):
            raise
    return dict(zip(_BLOCK_STATS_FIELDS, domain.blockStats(target), strict=True))


def read_disks(domain: Any, disks: tuple[Disk, ...], lane: Lane) -> dict[str, Mapping[str, int]]:
    """Runs in a pool thread: per disk target, its I/O counters and its sizes in bytes."""
    domain = lane.domain(domain)
    by_target: dict[str, Mapping[str, int]] = {}
    for disk in disks:
        stats = _io_counters(domain, disk.target)
        capacity, allocation, physical = domain.blockInfo(disk.target, 0)
        stats.update(capacity=capacity, allocation=allocation, physical=physical)
        by_target[disk.target] = stats
    return by_target


def sampled_disks(entry: DomainEntry) -> tuple[Disk, ...]:
    """Disks with a medium: an empty CD-ROM drive has no statistics to read."""
    if entry.description is None:
        return ()
    return tuple(disk for disk in entry.description.disks if disk.target and disk.path)


class BlockSampler(DomainSampler):
    def subjects(self) -> list[str]:
        return [entry.name for entry in self._inventory.domains() if entry.active]

    def run_cycle(self) -> None:
        self._connection.require_up()
        active = self._callable(entry for entry in self._inventory.domains() if entry.active)
        self._sample_each(
            (entry.name, partial(read_disks, entry.domain, sampled_disks(entry))) for entry in active
        )

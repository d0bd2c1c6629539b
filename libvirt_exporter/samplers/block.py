"""The `block` sampler: I/O counters and capacity / allocation / physical size of every disk.

Sizes come from virDomainGetBlockInfo, disk by disk; the I/O counters of all the domain's disks from
one read of its block stats group, which asks QEMU once where virDomainBlockStatsFlags asks it once
per disk (docs/benchmarks.md). The group's own `allocation` and `physical` mean other things than
blockInfo's (the highest offset written; what blockInfo calls allocation), so blockInfo's replace them.

Both calls need the domain's job and QEMU monitor, so on a hung VM they hang: each domain gets one
read under its own deadline, and none while the domain's monitor is stuck on another call. The
"block-info call stuck for N minutes" alert watches `libvirt_domain_call_in_flight_seconds`.
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
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainSampler, read_domain_stats

_FLAGS_FIELDS = {
    "rd_operations": "rd.reqs",
    "rd_bytes": "rd.bytes",
    "rd_total_times": "rd.times",
    "wr_operations": "wr.reqs",
    "wr_bytes": "wr.bytes",
    "wr_total_times": "wr.times",
    "flush_operations": "fl.reqs",
    "flush_total_times": "fl.times",
    "errs": "errors",
}
"""virDomainBlockStatsFlags' names of the block group's fields."""
_BLOCK_STATS_FIELDS = ("rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes", "errors")
"""The fields of the older virDomainBlockStats' tuple, in its order."""


def _disk_by_disk(domain: Any, targets: list[str]) -> dict[str, Any]:
    """The block group's keys read disk by disk, for a driver whose group lacks the counters
    (libvirt's test driver): virDomainBlockStatsFlags, or virDomainBlockStats where it lacks that."""
    stats: dict[str, Any] = {"block.count": len(targets)}
    for number, target in enumerate(targets):
        try:
            fields = {
                _FLAGS_FIELDS[k]: v
                for k, v in domain.blockStatsFlags(target, 0).items()
                if k in _FLAGS_FIELDS
            }
        except libvirt.libvirtError as error:
            if not is_unsupported(error):
                raise
            fields = dict(zip(_BLOCK_STATS_FIELDS, domain.blockStats(target), strict=True))
        stats.update({f"block.{number}.{field}": value for field, value in fields.items()})
        stats[f"block.{number}.name"] = target
    return stats


def read_disks(domain: Any, disks: tuple[Disk, ...], lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread: the block group's keys of the domain's disks, with blockInfo's sizes."""
    if not disks:
        return {}
    domain = lane.domain(domain)
    sizes = {disk.target: domain.blockInfo(disk.target, 0) for disk in disks}
    stats = dict(read_domain_stats(domain, libvirt.VIR_DOMAIN_STATS_BLOCK, lane))
    if not any(key.endswith(".rd.reqs") for key in stats):
        stats = _disk_by_disk(domain, list(sizes))
    for number in range(int(stats.get("block.count", 0))):
        size = sizes.get(stats.get(f"block.{number}.name", ""))
        if size is not None:
            for field, value in zip(("capacity", "allocation", "physical"), size, strict=True):
                stats[f"block.{number}.{field}"] = value
    return stats


class BlockSampler(DomainSampler):
    name = SamplerName.BLOCK
    needs_storage = True

    def entries(self) -> list[DomainEntry]:
        return [entry for entry in self._inventory.domains() if entry.active]

    def _sample(self) -> None:
        ready = self._callable(self.entries())
        self._sample_each(
            (entry.subject, partial(read_disks, entry.domain, entry.disks_with_media)) for entry in ready
        )

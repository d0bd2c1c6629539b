"""The `block` values: each running domain's disk I/O counters, read with the bulk sampler's calls.

The counters of all a domain's disks come from its block stats group, which asks QEMU once where
virDomainBlockStatsFlags asks it once per disk (docs/benchmarks.md), and the bulk sampler asks for
that group in the calls it sends anyway: one host-wide call for every domain whose disks may be
touched, where a call of its own per domain would take each domain's job a second time each cycle
(and often meet the bulk call holding it), and cost a call, a thread hand-off and a round trip to
libvirtd each. So this sampler has no cycle of its own: it names the values, says which domains they
are expected for, and the bulk sampler's cycles are recorded under its name too.

The group makes QEMU touch the disks: no domain whose storage does not answer its probe is asked
for it (samplers/bulk.py). Disk sizes come from virDomainGetBlockInfo on a slower cadence of their
own (samplers/block_info.py). The "block-info call stuck for N minutes" alert watches
`libvirt_domain_call_in_flight_seconds` with these values stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import libvirt

from libvirt_exporter.calls import Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.libvirt_client import is_unsupported
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import Sampler
from libvirt_exporter.store import Store

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
BLOCK_KEYS = "block."
"""The prefix of the block group's keys."""


def has_counters(disks: Mapping[str, Any]) -> bool:
    """Whether the block group's keys hold I/O counters: they do not while another call holds the
    domain's job (NOWAIT), nor from a driver that leaves them out (libvirt's test driver)."""
    return any(key.endswith(".rd.reqs") for key in disks)


def disk_by_disk(domain: Any, targets: list[str]) -> dict[str, Any]:
    """Runs in a pool thread: the block group's keys read disk by disk, for a driver whose group
    lacks the counters: virDomainBlockStatsFlags, or virDomainBlockStats where it lacks that."""
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


class BlockSampler(Sampler):
    """The block values' name, and the domains they are expected for: the running ones."""

    name = SamplerName.BLOCK

    def __init__(self, config: SamplerConfig, store: Store, inventory: Inventory) -> None:
        super().__init__(config, store)
        self._inventory = inventory

    def entries(self) -> list[DomainEntry]:
        return [entry for entry in self._inventory.domains() if entry.active]

    def subjects(self) -> list[Subject]:
        return [entry.subject for entry in self.entries()]

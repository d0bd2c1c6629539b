"""The `block_info` values: capacity, allocation and physical size of every disk, from
virDomainGetBlockInfo, read with the bulk sampler's calls on a cadence of their own
(`--sampler.block_info.interval`, 5 minutes by default).

Sizes change slowly where I/O counters change every second, and virDomainGetBlockInfo costs a job
on the domain and a round trip to QEMU per disk: read every 15 s, with a call of its own per
domain, it cost libvirtd about as much as everything else the exporter read (docs/benchmarks.md).
The block stats group carries sizes too, but its `allocation` and `physical` mean other things than
blockInfo's (the highest offset written; what blockInfo calls allocation), so the sizes come from
here alone.

A domain whose sizes are due is left out of the bulk sampler's host-wide call and gets the call of
its own that the bulk sampler sends a domain whose monitor is busy: one job on the domain per cycle,
never two calls that meet on its job. The call makes QEMU touch the disks, so it is sent to no
domain whose storage does not answer its probe, and one that runs past its deadline has the
domain's storages probed again (samplers/base.py). So that these calls do not all come in the same
cycle, each domain's first refresh after its first read comes after a share of the interval that
its name picks.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from libvirt_exporter.calls import Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.domain_xml import Disk
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import Sampler
from libvirt_exporter.store import Store

SIZE_FIELDS = ("capacity", "allocation", "physical")
"""virDomainGetBlockInfo's values, in its order."""


def read_sizes(domain: Any, disks: tuple[Disk, ...]) -> dict[str, Any]:
    """Runs in a pool thread: each disk's sizes, as `<target>.<field>` keys, on a domain handle of
    the call's lane."""
    sizes = {}
    for disk in disks:
        for field, value in zip(SIZE_FIELDS, domain.blockInfo(disk.target, 0), strict=True):
            sizes[f"{disk.target}.{field}"] = value
    return sizes


def _share(name: str) -> float:
    """A share of the interval in (0, 1], the same for a name whatever the process."""
    return (zlib.crc32(name.encode()) % 1000 + 1) / 1000


class BlockInfoSampler(Sampler):
    """The sizes' name, the domains they are expected for (the running ones with a disk), and
    when each domain's are due. It has no cycle of its own: the bulk sampler's reads them."""

    name = SamplerName.BLOCK_INFO

    def __init__(
        self, config: SamplerConfig, store: Store, inventory: Inventory, round_interval: float
    ) -> None:
        super().__init__(config, store)
        self._inventory = inventory
        self._tolerance = round_interval / 2
        """Sizes due within half a round are read in this one: the next comes a round later, and
        values an interval plus a round old would be flagged stale."""
        self._due_at: dict[str, float] = {}
        """Per domain, the monotonic time its sizes are due again; none: never read."""
        self._disks_read: dict[str, frozenset[str]] = {}
        """Per domain, the disks (targets) in the sizes read last; none: never read."""

    def entries(self) -> list[DomainEntry]:
        return [entry for entry in self._inventory.domains() if entry.active and entry.disks_with_media]

    def subjects(self) -> list[Subject]:
        return [entry.subject for entry in self.entries()]

    def due(self, entry: DomainEntry, now: float) -> bool:
        """Whether the domain's sizes are to be read in the round that runs at `now`: they are due,
        or a disk has none in the sizes read last (hot-plugged since). Sizes never read (a failed
        read) are due again by time only."""
        if now + self._tolerance >= self._due_at.get(entry.name, -float("inf")):
            return True
        read = self._disks_read.get(entry.name)
        return read is not None and any(disk.target not in read for disk in entry.disks_with_media)

    def read(self, name: str, now: float, sizes: Mapping[str, Any] | None) -> None:
        """The domain's sizes were read at `now` (None: the read failed): due again an interval
        later, or, after its first read, after the share of an interval its name picks."""
        first = name not in self._due_at
        self._due_at[name] = now + self.config.interval * (_share(name) if first else 1.0)
        if sizes is not None:
            self._disks_read[name] = frozenset(key.rpartition(".")[0] for key in sizes)

    def keep_only(self, names: set[str]) -> None:
        """Forget the domains that are gone: one that comes back is read at once."""
        for name in self._due_at.keys() - names:
            del self._due_at[name]
        for name in self._disks_read.keys() - names:
            del self._disks_read[name]

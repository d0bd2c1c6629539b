"""The `storage` sampler: a probe of each storage that running domains' disks live on.

A VM on storage that stops answering (a dead NFS server, a lost SAN path) keeps running, and its
QEMU answers what does not touch the disks, until a call makes it touch them: from then on QEMU's
main loop is stuck, and so is every call to it (docs/libvirt-behaviour.md). So each storage, named by
its mount point, is probed from one of the exporter's own threads (statfs, which blocks on dead
storage as the disk's I/O does) under the sampler's deadline, before the round's calls are sent;
no call that touches the disks goes to a domain on a storage whose probe does not answer. A probe
that is stuck holds a thread of this sampler's own pool, never one of libvirtd's workers, and its
storage gets no second probe until it returns: one stuck thread per dead storage, whatever the
number of VMs on it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from libvirt_exporter.calls import CallKey, CallRunner, LateHandler, Outcome, Storage, Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.host import HostAccess
from libvirt_exporter.inventory import Inventory
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import Sampler
from libvirt_exporter.store import Store

MAX_CONCURRENT_PROBES = 8
MAX_STUCK_PROBES = 64
"""Storages whose probes may hang at once; past that, other storages count as unresponsive."""


def probe(host: HostAccess, mount_point: str) -> dict[str, Any]:
    """Runs in a thread of the probes' pool."""
    host.probe(mount_point)
    return {}


class StorageSampler(Sampler):
    """Run by the survey (samplers/basic.py), once per round, before the other samplers' calls."""

    name = SamplerName.STORAGE

    def __init__(self, config: SamplerConfig, store: Store, inventory: Inventory, host: HostAccess) -> None:
        super().__init__(config, store)
        self._inventory = inventory
        self._host = host
        self.runner = CallRunner(MAX_CONCURRENT_PROBES, MAX_STUCK_PROBES)
        self._probed: set[Storage] = set()

    def subjects(self) -> list[Subject]:
        return list(self._storages())

    def _storages(self) -> list[Storage]:
        return [Storage(mount_point) for mount_point in sorted(self._inventory.storages())]

    def run_cycle(self) -> None:
        """Probe every storage at once; the storages that did not answer are the inventory's to
        tell the samplers."""
        storages = self._storages()
        self._store.forget(self._probed - set(storages))
        self._probed = set(storages)
        self._inventory.unresponsive_storages = self._probe(storages)

    def recheck(self, mount_points: tuple[str, ...]) -> None:
        """Probe these storages now (a call that touches their disks ran past its deadline): the
        inventory learns at once which answer and which do not. A storage whose probe is in flight
        already is left to it."""
        storages = [
            Storage(mount_point)
            for mount_point in mount_points
            if not self.runner.is_in_flight(CallKey(self.name, Storage(mount_point)))
        ]
        failing = self._probe(storages)
        self._inventory.storages_probed({storage.name for storage in storages} - failing, failing)

    def _probe(self, storages: list[Storage]) -> frozenset[str]:
        """Probe `storages` at once; the mount points of those that did not answer."""
        self._sample_each((storage, partial(probe, self._host, storage.name)) for storage in storages)
        return frozenset(s.name for s in storages if self._store.counters_of(self.name, s).failing)

    def _call(self, key: CallKey, read: Any, on_late: LateHandler) -> Outcome[Any]:
        return self.runner.run(key, lambda: read, self.config.deadline, on_late=on_late)

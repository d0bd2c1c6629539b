"""The `storage_pool` sampler: state and sizes of each storage pool.

Pool calls hang on dead storage (an NFS pool whose server is gone) as QEMU calls hang on hung VMs,
so each pool gets its own call under its own deadline, a pool whose call is still stuck gets no new
one, and its values are flagged stale like a domain's.
"""

from __future__ import annotations

from functools import partial

from libvirt_exporter.calls import CallKey, Pool, Status, Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.lanes import Dispatcher, Lane
from libvirt_exporter.samplers import CycleFailed, SamplerName
from libvirt_exporter.samplers.base import LibvirtSampler
from libvirt_exporter.store import Store

LIST = CallKey(SamplerName.STORAGE_POOL)


def list_pools(lane: Lane) -> list[str]:
    """Runs in a pool thread: the name of every pool, active or not."""
    return [pool.name() for pool in lane.conn.listAllStoragePools(0)]


def read_pool(name: str, lane: Lane) -> dict[str, int]:
    """Runs in a pool thread: virStoragePoolGetInfo, on a pool looked up on the call's own lane."""
    state, capacity, allocation, available = lane.conn.storagePoolLookupByName(name).info()
    return {"state": state, "capacity": capacity, "allocation": allocation, "available": available}


class StoragePoolSampler(LibvirtSampler):
    """Pools are listed each cycle, then sampled at once, so that one hung pool delays no other."""

    name = SamplerName.STORAGE_POOL
    _listed: list[Pool]

    def __init__(self, config: SamplerConfig, dispatcher: Dispatcher, store: Store) -> None:
        super().__init__(config, dispatcher, store)
        self._listed = []

    def subjects(self) -> list[Subject]:
        return list(self._listed)

    def _sample(self) -> None:
        listed = self._dispatcher.call(LIST, list_pools, self.config.deadline)
        if listed.status is not Status.OK or listed.value is None:
            raise CycleFailed(f"listing storage pools failed: {listed.error or listed.status.value}")
        pools = [Pool(name) for name in listed.value]
        self._store.forget(set(self._listed) - set(pools))
        self._listed = pools
        self._sample_each((pool, partial(read_pool, pool.name)) for pool in pools)

"""The `storage_pool` sampler: state and sizes of each storage pool.

Pool calls hang on dead storage (an NFS pool whose server is gone) as QEMU calls hang on frozen
VMs, so each pool gets its own call under its own deadline, and a pool whose call is still stuck
gets no new one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gevent

from libvirt_exporter.calls import CallKey, Outcome, Status
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.connection import Connection
from libvirt_exporter.cycle import CycleFailed
from libvirt_exporter.lanes import Lane
from libvirt_exporter.store import Sample, Store

NAME = "storage_pool"
LIST = CallKey(NAME)


def list_pools(lane: Lane) -> list[str]:
    """Runs in a pool thread: the name of every pool, active or not."""
    return [pool.name() for pool in lane.conn.listAllStoragePools(0)]


def read_pool(name: str, lane: Lane) -> dict[str, int]:
    """Runs in a pool thread: virStoragePoolGetInfo, on a pool looked up on the call's own lane."""
    state, capacity, allocation, available = lane.conn.storagePoolLookupByName(name).info()
    return {"state": state, "capacity": capacity, "allocation": allocation, "available": available}


class StoragePoolSampler:
    """Keeps the last values of each pool that still exists; pools are sampled at once, so that
    one hung pool delays none of the others."""

    def __init__(self, config: SamplerConfig, connection: Connection) -> None:
        self.config = config
        self._connection = connection
        self._store = Store()  # its own: pool names are not domain names
        self._listed: set[str] = set()

    @property
    def pools(self) -> dict[str, Sample]:
        return self._store.samples[NAME]

    def subjects(self) -> list[str]:
        return []  # pools are not domains: their health is the sampler's own

    def run_cycle(self) -> None:
        self._connection.require_up()
        listed = self._connection.call(LIST, list_pools, self.config.deadline)
        if listed.status is not Status.OK or listed.value is None:
            raise CycleFailed(f"listing storage pools failed: {listed.error or listed.status.value}")
        self._listed = set(listed.value)
        self._store.forget(self.pools.keys() - self._listed)
        gevent.joinall([gevent.spawn(self._sample, name) for name in listed.value])

    def _sample(self, name: str) -> None:
        take = partial(self._take, name)
        read = partial(read_pool, name)
        take(self._connection.call(CallKey(NAME, name), read, self.config.deadline, on_late=take))

    def _take(self, name: str, outcome: Outcome[Any]) -> None:
        """Values of a pool still listed; a late result never replaces a newer one (Store.offer)."""
        values, call = outcome.value, outcome.call
        if outcome.status is Status.OK and values is not None and call is not None and name in self._listed:
            self._store.offer(NAME, name, Sample(values, call.started_at))

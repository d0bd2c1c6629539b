"""The `storage_pool` sampler: state and sizes of each storage pool.

Pool calls hang on dead storage (an NFS pool whose server is gone) as QEMU calls hang on frozen
VMs, so each pool gets its own call under its own deadline, and a pool whose call is still stuck
gets no new one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from libvirt_exporter.calls import CallKey, Status
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.connection import Connection
from libvirt_exporter.cycle import CycleFailed
from libvirt_exporter.store import Sample

NAME = "storage_pool"
LIST = CallKey(NAME)


def list_pools(conn: Any) -> list[tuple[str, Any]]:
    """Runs in a pool thread: (name, virStoragePool) of every pool, active or not."""
    return [(pool.name(), pool) for pool in conn.listAllStoragePools(0)]


def read_pool(pool: Any) -> dict[str, int]:
    """Runs in a pool thread: virStoragePoolGetInfo."""
    state, capacity, allocation, available = pool.info()
    return {"state": state, "capacity": capacity, "allocation": allocation, "available": available}


class StoragePoolSampler:
    """Keeps the last values of each pool that still exists."""

    def __init__(self, config: SamplerConfig, connection: Connection) -> None:
        self.config = config
        self._connection = connection
        self.pools: dict[str, Sample] = {}

    def subjects(self) -> list[str]:
        return []  # pools are not domains: their health is the sampler's own

    def run_cycle(self) -> None:
        conn = self._connection.current()
        if conn is None:
            raise CycleFailed("not connected to libvirt")
        listed = self._connection.call(LIST, conn, partial(list_pools, conn), self.config.deadline)
        if listed.status is not Status.OK or listed.value is None:
            raise CycleFailed(f"listing storage pools failed: {listed.error or listed.status.value}")
        pools = dict(listed.value)
        self.pools = {name: sample for name, sample in self.pools.items() if name in pools}
        for name, pool in pools.items():
            self._sample(conn, name, pool)

    def _sample(self, conn: Any, name: str, pool: Any) -> None:
        outcome = self._connection.call(
            CallKey(NAME, name), conn, partial(read_pool, pool), self.config.deadline,
            on_late=lambda late: self._take(name, late.value, late.call),
        )  # fmt: skip
        if outcome.status is Status.OK:
            self._take(name, outcome.value, outcome.call)

    def _take(self, name: str, values: Any, call: Any) -> None:
        if values is None or call is None:
            return
        held = self.pools.get(name)
        if held is None or held.taken_at < call.started_at:
            self.pools[name] = Sample(values, call.started_at)

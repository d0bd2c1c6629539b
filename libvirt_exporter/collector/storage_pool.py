"""Storage pools from the `storage_pool` sampler."""

from __future__ import annotations

from libvirt_exporter.collector.families import Families, Kind, fields
from libvirt_exporter.collector.view import State

# fmt: off
FIELDS = fields("storage_pool", ("pool",), [
    ("state", Kind.GAUGE, "libvirt_storage_pool_state",
     "virStoragePoolState: 0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible", 1),
    ("capacity", Kind.GAUGE, "libvirt_storage_pool_capacity_bytes", "Size of the pool", 1),
    ("allocation", Kind.GAUGE, "libvirt_storage_pool_allocation_bytes", "Bytes allocated in the pool", 1),
    ("available", Kind.GAUGE, "libvirt_storage_pool_available_bytes", "Bytes still free in the pool", 1),
])
# fmt: on
SPECS = tuple(spec for _, spec in FIELDS)


def collect(state: State) -> Families:
    families = Families()
    if state.storage_pools is not None:
        for name, sample in sorted(state.storage_pools.items()):
            for field, spec in FIELDS:
                families.add(spec, (name,), sample.values[field])
    return families

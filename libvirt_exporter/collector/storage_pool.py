"""Storage pools from the `storage_pool` sampler."""

from __future__ import annotations

from libvirt_exporter.calls import Pool
from libvirt_exporter.collector.families import Families, Kind, fields
from libvirt_exporter.collector.view import State
from libvirt_exporter.samplers import SamplerName

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
    for sampler in state.samplers:
        if sampler.name is not SamplerName.STORAGE_POOL:
            continue
        for pool in sorted((p for p in sampler.subjects if isinstance(p, Pool)), key=lambda p: p.name):
            sample = state.store.sample(sampler.name, pool)
            if sample is not None:
                for field, spec in FIELDS:
                    families.add(spec, (pool.name,), sample.values[field])
    return families

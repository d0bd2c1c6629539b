"""Everything a collector may read to render the snapshot: nothing here calls libvirt."""

from __future__ import annotations

from dataclasses import dataclass

from libvirt_exporter.calls import CallRunner
from libvirt_exporter.connection import Connection
from libvirt_exporter.cycle import Sampler
from libvirt_exporter.inventory import Inventory
from libvirt_exporter.samplers.storage_pool import StoragePoolSampler
from libvirt_exporter.store import Store


@dataclass(frozen=True)
class View:
    connection: Connection
    inventory: Inventory
    store: Store
    runner: CallRunner
    samplers: tuple[Sampler, ...]
    collectors: frozenset[str]
    """The enabled `--collector.<name>` switches."""
    storage_pools: StoragePoolSampler | None

"""Collectors: each renders one group of families from the cached state, without calling libvirt.

Like node_exporter's collectors, one module per group; unlike them, they run when a snapshot is
rendered after a sampling cycle, never when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from libvirt_exporter.collector import block, domain, exporter, guest, health, job, storage_pool
from libvirt_exporter.collector.families import Families
from libvirt_exporter.collector.view import State, View

Collect = Callable[[State], Families]

ALWAYS: tuple[Collect, ...] = (exporter.collect, health.collect, domain.collect)
SWITCHED: dict[str, Collect] = {
    "block": block.collect,
    "job": job.collect,
    "storage_pool": storage_pool.collect,
    "guest": guest.collect,
}
"""Collectors with a sampler of their own; the other switches choose stat groups of `bulk`."""

SPECS = (
    exporter.SPECS + health.SPECS + domain.SPECS + block.SPECS + job.SPECS + storage_pool.SPECS + guest.SPECS
)


class SnapshotCollector:
    """The collectors that are on, over the whole cached state.

    `collect` runs in the render thread, over a state taken on the hub, one group at a time, so
    that each group's rows are gone once they are formatted.
    """

    def __init__(self, view: View) -> None:
        self._collectors = ALWAYS + tuple(c for name, c in SWITCHED.items() if name in view.collectors)

    def collect(self, state: State) -> Iterator[Families]:
        return (collect(state) for collect in self._collectors)

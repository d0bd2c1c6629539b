"""Collectors: each renders one group of families from the cached state, without calling libvirt.

Like node_exporter's collectors, one module per group; unlike them, they run when a snapshot is
rendered after a sampling cycle, never when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from libvirt_exporter.collector import block, domain, exporter, health
from libvirt_exporter.collector.view import View

COLLECTORS: tuple[Callable[[View], Iterator[Metric]], ...] = (
    exporter.collect,
    health.collect,
    domain.collect,
    block.collect,
)

SPECS = exporter.SPECS + health.SPECS + domain.SPECS + block.SPECS


class SnapshotCollector:
    """A prometheus_client collector over the whole cached state."""

    def __init__(self, view: View) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        for collect in COLLECTORS:
            yield from collect(self._view)

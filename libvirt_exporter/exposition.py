"""The snapshot that scrapes are answered from: rendered once per refresh, in both formats.

A scrape only picks bytes. Rendering (the per-domain Python work) happens after each sampling
cycle, so a scrape costs the same whatever the number of domains, and nothing a scrape does can
wait on libvirt. Gzip is done at most once per snapshot and format, on the first request for it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept_header: str) -> bool:
    """Prometheus asks for OpenMetrics first when it can take it; anything else gets plain text."""
    return any(
        part.split(";")[0].strip() == "application/openmetrics-text" for part in accept_header.split(",")
    )


def accepts_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


@dataclass
class Exposition:
    """One rendered snapshot."""

    text: bytes
    openmetrics: bytes
    _gzipped: dict[bool, bytes] = field(default_factory=dict)

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        plain = self.openmetrics if openmetrics else self.text
        if not gzipped:
            return plain
        if openmetrics not in self._gzipped:
            self._gzipped[openmetrics] = gzip.compress(plain, compresslevel=6)
        return self._gzipped[openmetrics]


class Snapshot:
    """Holds the latest exposition of a registry; `publish` renders a new one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.current = self._render()

    def publish(self) -> None:
        self.current = self._render()

    def _render(self) -> Exposition:
        openmetrics = generate_openmetrics(self._registry)  # type: ignore[no-untyped-call]
        return Exposition(text=generate_latest(self._registry), openmetrics=openmetrics)

"""Everything a collector may read to render the snapshot: nothing here calls libvirt.

The collectors run in a render thread while greenlets on the hub go on sampling, so they read a
`State`: the live state as it was at one moment, taken on the hub by `View.state`. Taking it costs
copies of dictionaries and lists (under a millisecond at 500 domains), where collecting the families
in the hub held it for 25 to 45 ms, long enough to delay the scrapes that came meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from libvirt_exporter.calls import HOST, CallRunner
from libvirt_exporter.connection import Connection, HostInfo
from libvirt_exporter.cycle import Sampler
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.samplers.storage_pool import StoragePoolSampler
from libvirt_exporter.store import Sample, Store


@dataclass(frozen=True)
class SamplerState:
    name: str
    stale_after: float
    subjects: list[str]
    """The domains it is expected to have fresh values for."""


@dataclass(frozen=True)
class State:
    """The cached state at one moment; later sampling leaves it as it is."""

    up: bool
    reconnects: int
    uri: str
    host: HostInfo | None
    domains: list[DomainEntry]
    """The domains to export (`Inventory.domains`)."""
    inactive_left_out: int
    store: Store
    samplers: tuple[SamplerState, ...]
    in_flight: Mapping[tuple[str, str], float]
    """Per (domain, sampler), how long its outstanding call has run."""
    busy_threads: int
    stuck_threads: int
    collectors: frozenset[str]
    """The enabled `--collector.<name>` switches."""
    storage_pools: Mapping[str, Sample] | None
    taken_at: float
    """Unix time: what the age of a sample is measured against."""


@dataclass(frozen=True)
class View:
    """The live parts of the exporter that the state is taken from."""

    connection: Connection
    inventory: Inventory
    store: Store
    runner: CallRunner
    samplers: tuple[Sampler, ...]
    collectors: frozenset[str]
    storage_pools: StoragePoolSampler | None

    def state(self) -> State:
        """The state as it is now; only on the hub, where no greenlet changes it meanwhile."""
        pools = self.storage_pools
        return State(
            up=self.connection.up,
            reconnects=self.connection.reconnects,
            uri=self.connection.uri,
            host=self.connection.host,
            domains=self.inventory.domains(),
            inactive_left_out=self.inventory.inactive_left_out(),
            store=self.store.copy(),
            samplers=tuple(
                SamplerState(s.config.name, s.config.stale_after, s.subjects()) for s in self.samplers
            ),
            in_flight=self._in_flight_seconds(),
            busy_threads=self.runner.busy_count(),
            stuck_threads=self.runner.stuck_count(),
            collectors=self.collectors,
            storage_pools=dict(pools.pools) if pools is not None else None,
            taken_at=time.time(),
        )

    def _in_flight_seconds(self) -> dict[tuple[str, str], float]:
        """Per (domain, sampler), how long its call has run; a stuck host-wide call counts for the
        domains it is blamed on."""
        now = time.monotonic()
        seconds: dict[tuple[str, str], float] = {}
        for call in self.runner.in_flight():
            domains = call.blamed if call.key.subject == HOST else (call.key.subject,)
            for domain in domains:
                key = (domain, call.key.sampler)
                seconds[key] = max(seconds.get(key, 0.0), call.running_for(now))
        return seconds

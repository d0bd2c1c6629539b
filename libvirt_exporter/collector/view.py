"""Everything a collector may read to render the snapshot: nothing here calls libvirt.

The collectors run in a render thread while greenlets on the hub go on sampling, so they read a
`State`: the live state as it was at one moment, taken on the hub by `View.state`. Taking it costs
copies of dictionaries and lists only, so that the hub is not held while families are collected.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from libvirt_exporter.calls import Call, CallRunner, Host, Subject
from libvirt_exporter.connection import HostInfo, MainConnection
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import Sampler
from libvirt_exporter.store import CallCounters, Key, Sample, Store


@dataclass(frozen=True)
class SamplerState:
    name: SamplerName
    stale_after: float
    deadline: float
    """How long one of its calls may run before it counts as stuck."""
    subjects: list[Subject]
    """The domains or pools it is expected to have fresh values for."""


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
    in_flight: Mapping[Key, float]
    """Per (sampler, subject), how long its outstanding call has run."""
    hang_signals: Mapping[str, frozenset[str]]
    """Per domain, the signals that hold for it (inventory.HangSignal)."""
    storages: Mapping[str, int]
    """Each storage (mount point) running domains' disks live on, with how many domains use it."""
    unresponsive_storages: frozenset[str]
    """The storages that did not answer their latest probe."""
    busy_threads: int
    stuck_threads: int
    collectors: frozenset[str]
    """The enabled `--collector.<name>` switches."""
    metadata_labels: tuple[str, ...]
    """The labels of the `--libvirt.metadata` fields, in the order of each domain's values."""
    taken_at: float
    """Unix time: what the age of a sample is measured against."""

    def stale(self, sampler: SamplerState, sample: Sample | None, counters: CallCounters) -> bool:
        """Whether the values a sampler serves for a subject, its `sample` and `counters` in the
        store, are not current: libvirtd is unreachable, there are none, its latest call brought
        none, or they are too old. The caller has looked them up already (every render does so
        for every sampler and subject)."""
        return (
            not self.up
            or sample is None
            or counters.failing
            or self.taken_at - sample.taken_at > sampler.stale_after
        )


@dataclass(frozen=True)
class View:
    """The live parts of the exporter that the state is taken from."""

    connection: MainConnection
    inventory: Inventory
    store: Store
    runner: CallRunner
    """The libvirt calls' runner, whose threads `libvirt_sampler_threads` counts."""
    probes: CallRunner
    """The storage probes' runner."""
    samplers: tuple[Sampler, ...]
    collectors: frozenset[str]
    busy_for: float
    """Seconds a domain's monitor must have been busy to count as a hang signal (a deadline)."""
    metadata_labels: tuple[str, ...] = ()

    def state(self) -> State:
        """The state as it is now; only on the hub, where no greenlet changes it meanwhile."""
        store = self.store.copy()
        return State(
            up=self.connection.up,
            reconnects=self.connection.reconnects,
            uri=self.connection.uri,
            host=self.connection.host,
            domains=self.inventory.domains(),
            inactive_left_out=self.inventory.inactive_left_out(),
            store=store,
            samplers=tuple(
                SamplerState(s.name, s.config.stale_after, s.config.deadline, s.subjects())
                for s in self.samplers
            ),
            in_flight=self._in_flight_seconds(store),
            hang_signals={
                entry.name: self.inventory.hang_signals(entry, busy_for=self.busy_for)
                for entry in self.inventory.domains()
                if entry.active
            },
            storages=self.inventory.storages(),
            unresponsive_storages=self.inventory.unresponsive_storages,
            busy_threads=self.runner.busy_count(),
            stuck_threads=self.runner.stuck_count(),
            collectors=self.collectors,
            metadata_labels=self.metadata_labels,
            taken_at=time.time(),
        )

    def _in_flight_seconds(self, store: Store) -> dict[Key, float]:
        """Per (sampler, subject), how long its call has run; a stuck host-wide call counts for
        the domains it is blamed on."""
        now = time.monotonic()
        samplers = {sampler.name for sampler in self.samplers}
        calls: list[tuple[Key, Call]] = list(store.blamed.items())
        for call in self.runner.in_flight() + self.probes.in_flight():
            sent = call.key
            if sent is not None and sent.sender in samplers and not isinstance(sent.subject, Host):
                calls.append(((SamplerName(sent.sender), sent.subject), call))
        seconds: dict[Key, float] = {}
        for key, call in calls:
            seconds[key] = max(seconds.get(key, 0.0), call.running_for(now))
        return seconds

"""The sampler contract, and what every sampler shares: one call per subject, all sent at once,
each under its own deadline, which is how a sampler isolates a hung VM or pool from the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import gevent

from libvirt_exporter.calls import CallKey, Domain, Outcome, Status, Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.lanes import Dispatcher, Lane
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import CycleFailed, SamplerName
from libvirt_exporter.store import Sample, Store

log = get_logger(__name__)

Read = Callable[[Lane], Mapping[str, Any]]
"""Reads one subject's values on the lane it is given (see Dispatcher.call)."""


def read_domain_stats(domain: Any, groups: int, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread: the stat groups of one domain, waiting for its job if need be."""
    return next((stats for _, stats in lane.conn.domainListGetStats([lane.domain(domain)], groups, 0)), {})


class Sampler:
    """A sampler: its name, the subjects it is expected to have fresh values for, and its cycle.

    The cycle loop (cycle.py) runs `run_cycle` every interval; the collectors read what it stored
    under `name`, and flag each subject of `subjects()` whose values are not current.
    """

    name: ClassVar[SamplerName]

    def __init__(self, config: SamplerConfig, dispatcher: Dispatcher, store: Store) -> None:
        self.config = config
        self._dispatcher = dispatcher
        self._store = store

    def subjects(self) -> list[Subject]:
        raise NotImplementedError

    def run_cycle(self) -> None:
        """Sample once; raise CycleFailed when nothing could be sampled."""
        if not self._dispatcher.up:
            raise CycleFailed("not connected to libvirt")
        self._sample()

    def _sample(self) -> None:
        raise NotImplementedError

    def _sample_each(self, reads: Iterable[tuple[Subject, Read]]) -> None:
        """Sample each (subject, read) at once, and return when each returned or timed out. A
        connection lost meanwhile fails the calls not yet dispatched, as libvirt errors do."""
        gevent.joinall([gevent.spawn(self._sample_one, subject, read) for subject, read in reads])

    def _sample_one(self, subject: Subject, read: Read) -> None:
        outcome = self._dispatcher.call(
            CallKey(self.name, subject),
            read,
            self.config.deadline,
            on_late=lambda late: self._record_late(subject, late),
        )
        self._record(subject, outcome)

    def _record(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """Store the values of a call that returned, or count why there are none."""
        if outcome.status is Status.OK and outcome.call is not None:
            self._store.offer(self.name, subject, Sample(outcome.value or {}, outcome.call.started_at))
            return
        self._store.count_failure(self.name, subject, outcome.status)
        if outcome.status is Status.ERROR:
            err = describe(outcome.error or Exception())
            log.info("libvirt call failed", sampler=self.name, subject=subject, err=err)
        elif outcome.status is Status.TIMEOUT:
            deadline = self.config.deadline
            log.warning(
                "libvirt call ran past its deadline", sampler=self.name, subject=subject, deadline=deadline
            )

    def _record_late(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """A late result counts only for a subject that is still sampled."""
        if subject in self.subjects():
            self._record(subject, outcome)


class DomainSampler(Sampler):
    """A sampler of domains, which it takes from the inventory's latest survey."""

    def __init__(
        self, config: SamplerConfig, dispatcher: Dispatcher, store: Store, inventory: Inventory
    ) -> None:
        super().__init__(config, dispatcher, store)
        self._inventory = inventory

    def entries(self) -> list[DomainEntry]:
        """The domains this sampler samples: its one filter of the inventory."""
        return self._inventory.domains()

    def subjects(self) -> list[Subject]:
        return [Domain(entry.name) for entry in self.entries()]

    def _callable(self, entries: Iterable[DomainEntry]) -> list[DomainEntry]:
        """The entries whose QEMU monitor is free, or busy for a moment only. A monitor busy for
        longer than the deadline is stuck on a call already (this sampler's or another's): a new
        call would only wait for the domain's job, 30 s in libvirt, holding a thread and one of
        libvirtd's workers meanwhile. So each hung VM holds one stuck call, not one per sampler;
        the skip is counted and flags the values stale."""
        ready = []
        for entry in entries:
            if entry.monitor_free or entry.monitor_busy_seconds < self.config.deadline:
                ready.append(entry)
            else:
                self._store.count_failure(self.name, Domain(entry.name), Status.SKIPPED)
        return ready

"""What every sampler shares: where it reads the host from, and one call per domain, all sent at
once, each under its own deadline, which is how a sampler isolates a frozen VM from the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent

from libvirt_exporter.calls import CallKey, CallRunner, Outcome, Status
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.connection import Connection
from libvirt_exporter.inventory import DomainEntry, Inventory
from libvirt_exporter.lanes import Lane
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.store import Sample, Store

log = logging.getLogger(__name__)

Read = Callable[[Lane], Mapping[str, Any]]
"""Reads one domain's values on the lane it is given (see Connection.call)."""


def read_domain_stats(domain: Any, groups: int, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread: the stat groups of one domain, waiting for its job if need be."""
    return next((stats for _, stats in lane.conn.domainListGetStats([lane.domain(domain)], groups, 0)), {})


class DomainSampler:
    """Base of the samplers: sends per-domain calls and books their outcomes in the store."""

    def __init__(
        self,
        config: SamplerConfig,
        connection: Connection,
        inventory: Inventory,
        runner: CallRunner,
        store: Store,
    ) -> None:
        self.config = config
        self._connection = connection
        self._inventory = inventory
        self._runner = runner
        self._store = store

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
                self._store.count_failure(self.config.name, entry.name, Status.SKIPPED)
        return ready

    def _sample_each(self, reads: Iterable[tuple[str, Read]]) -> None:
        """Sample each (domain, read) at once, and return when each returned or timed out. A
        connection lost meanwhile fails the calls not yet dispatched, as libvirt errors do."""
        gevent.joinall([gevent.spawn(self._sample_one, domain, read) for domain, read in reads])

    def _sample_one(self, domain: str, read: Read) -> None:
        outcome = self._connection.call(
            CallKey(self.config.name, domain),
            read,
            self.config.deadline,
            on_late=lambda late: self._record_late(domain, late),
            one_per_domain=True,
        )
        self._record(domain, outcome)

    def _record(self, domain: str, outcome: Outcome[Any]) -> None:
        """Store the values of a call that returned, or count why there are none."""
        if outcome.status is Status.OK and outcome.call is not None:
            self._store.offer(self.config.name, domain, Sample(outcome.value or {}, outcome.call.started_at))
            return
        self._store.count_failure(self.config.name, domain, outcome.status)
        fields = {"sampler": self.config.name, "domain": domain}
        if outcome.status is Status.ERROR:
            log.info(
                "libvirt call failed",
                extra={"fields": {**fields, "err": describe(outcome.error or Exception())}},
            )
        elif outcome.status is Status.TIMEOUT:
            log.warning(
                "libvirt call ran past its deadline",
                extra={"fields": {**fields, "deadline": self.config.deadline}},
            )

    def _record_late(self, domain: str, outcome: Outcome[Any]) -> None:
        if self._inventory.get(domain) is not None:
            self._record(domain, outcome)

"""The sampler contract, and what every sampler shares: one call per subject, all sent at once,
each under its own deadline, which is how a sampler isolates a hung VM or storage from the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import gevent
import gevent.pool

from libvirt_exporter.calls import CallKey, Domain, LateHandler, Outcome, Status, Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.inventory import DomainEntry, HangSignal, Inventory
from libvirt_exporter.lanes import Dispatcher, Lane
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import CycleFailed, SamplerName
from libvirt_exporter.store import Sample, Store

log = get_logger(__name__)

Read = Callable[[Lane], Any]
"""Reads one subject's values on the lane it is given (see Dispatcher.call)."""
SENDERS_AT_ONCE = 16
"""Greenlets that send a cycle's calls, one subject after another: the calls run a few at a time
anyway (`--sampler.max-concurrent-calls`), and a greenlet per subject, all started at once, held
the hub for milliseconds at each cycle's start at 500 domains, which the calls' deadlines (timed
on the hub) waited for (docs/benchmarks.md). Each waits at most a deadline for its subject's
call, so the cycle still ends."""


def read_domain_stats(domain: Any, groups: int, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread: the stat groups of one domain, waiting for its job if need be."""
    return next((stats for _, stats in lane.conn.domainListGetStats([lane.domain(domain)], groups, 0)), {})


class Sampler:
    """A sampler: its name, the subjects it is expected to have fresh values for, and its cycle.

    The cycle loop (cycle.py) runs `run_cycle` every interval; the collectors read what it stored
    under `name`, and flag each subject of `subjects()` whose values are not current.
    """

    name: ClassVar[SamplerName]
    holds_domain: ClassVar[bool] = True
    """Its calls hold their domain: no other call on it runs meanwhile (`CallKey.holds_domain`)."""

    def __init__(self, config: SamplerConfig, store: Store) -> None:
        self.config = config
        self._store = store

    def subjects(self) -> list[Subject]:
        raise NotImplementedError

    def run_cycle(self) -> None:
        """Sample once; raise CycleFailed when nothing could be sampled."""
        raise NotImplementedError

    def _call(self, key: CallKey, read: Any, on_late: LateHandler) -> Outcome[Any]:
        """Send one call under the sampler's deadline."""
        raise NotImplementedError

    def accounts(self) -> tuple[SamplerName, ...]:
        """The names its cycles are recorded under: its own, and those of the values its calls
        bring for another sampler (the bulk sampler's bring the block sampler's)."""
        return (self.name,)

    def _sample_each(self, reads: Iterable[tuple[Subject, Any]]) -> None:
        """Sample each (subject, read), SENDERS_AT_ONCE at a time, and return when each returned or
        timed out."""
        senders = gevent.pool.Pool(SENDERS_AT_ONCE)
        for subject, read in reads:
            senders.spawn(self._sample_one, subject, read)  # waits while every sender is busy
        senders.join()

    def _sample_one(self, subject: Subject, read: Any) -> None:
        key = CallKey(self.name, subject, self.holds_domain)
        outcome = self._call(key, read, lambda late: self._record_late(subject, late))
        self._record(subject, outcome)

    def _offer(self, subject: Subject, values: Any, taken_at: float) -> None:
        """Keep what a call returned (its values, unless the sampler's reads return more)."""
        self._store.offer(self.name, subject, Sample(values, taken_at))

    def _accounts_of(self, subject: Subject) -> tuple[SamplerName, ...]:
        """The names a call for `subject` that brought nothing counts against."""
        return (self.name,)

    def _record(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """Store the values of a call that returned, or count why there are none."""
        if outcome.status is Status.OK and outcome.call is not None:
            self._offer(subject, outcome.value or {}, outcome.call.started_at)
            return
        for name in self._accounts_of(subject):
            self._store.count_failure(name, subject, outcome.status)
            if outcome.status is Status.TIMEOUT and outcome.call is not None and name != self.name:
                self._store.blame(name, subject, outcome.call)  # in flight for each value it brings
        if outcome.status is Status.ERROR:
            err = describe(outcome.error or Exception())
            log.info("call failed", sampler=self.name, subject=subject, err=err)
        elif outcome.status is Status.TIMEOUT:
            deadline = self.config.deadline
            log.warning("call ran past its deadline", sampler=self.name, subject=subject, deadline=deadline)

    def _record_late(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """A late result counts only for a subject that is still sampled."""
        if subject in self.subjects():
            self._record(subject, outcome)


class LibvirtSampler(Sampler):
    """A sampler whose calls go to libvirtd, each on a lane of its own (lanes.py)."""

    def __init__(self, config: SamplerConfig, dispatcher: Dispatcher, store: Store) -> None:
        super().__init__(config, store)
        self._dispatcher = dispatcher

    def run_cycle(self) -> None:
        if not self._dispatcher.up:
            raise CycleFailed("not connected to libvirt")
        self._sample()

    def _sample(self) -> None:
        raise NotImplementedError

    def _call(self, key: CallKey, read: Read, on_late: LateHandler) -> Outcome[Any]:
        return self._dispatcher.call(key, read, self.config.deadline, on_late=on_late)


class Surveyor(Protocol):
    """The round's survey of the host (samplers/basic.py), which the other domain samplers read."""

    def ensure_recent(self) -> None:
        """Survey now, unless this round's survey ran already; wait for one that runs."""
        ...

    def refresh(self) -> None:
        """Survey now (or wait for the survey that runs)."""
        ...


class StorageCheck(Protocol):
    """Probes storages at once (samplers/storage.py)."""

    def recheck(self, mount_points: tuple[str, ...]) -> None: ...


@dataclass(frozen=True)
class DomainParts:
    """What every domain sampler works with: where its calls go, where its values go, the domains
    as of the round's survey, and the storage probes."""

    dispatcher: Dispatcher
    store: Store
    inventory: Inventory
    storage: StorageCheck


class DomainSampler(LibvirtSampler):
    """A sampler of domains, which it takes from the round's survey of the host."""

    needs_storage: ClassVar[bool] = False
    """Its calls make QEMU touch the domain's disks: none goes to a domain on unresponsive storage.
    A sampler whose calls touch the disks of some domains only says which in `_touches_disks`."""

    def __init__(self, config: SamplerConfig, parts: DomainParts, survey: Surveyor | None = None) -> None:
        super().__init__(config, parts.dispatcher, parts.store)
        self._inventory = parts.inventory
        self._storage = parts.storage
        self._surveyor = survey
        self._rechecks: dict[str, gevent.Greenlet] = {}
        """Per storage suspected dead by a call that ran past its deadline: its probe, running."""

    def entries(self) -> list[DomainEntry]:
        """The domains this sampler samples: its one filter of the inventory."""
        return self._inventory.domains()

    def subjects(self) -> list[Subject]:
        return [entry.subject for entry in self.entries()]

    def run_cycle(self) -> None:
        if self._surveyor is not None:
            self._surveyor.ensure_recent()
        super().run_cycle()

    def _call(self, key: CallKey, read: Read, on_late: LateHandler) -> Outcome[Any]:
        """A call still wanted once it has a slot and a thread: storage found dead meanwhile
        (another call that touched its disks ran past its deadline) takes it off the round."""
        subject = key.subject
        still_wanted = (lambda: self._still_callable(subject)) if isinstance(subject, Domain) else None
        return self._dispatcher.call(
            key, read, self.config.deadline, on_late=on_late, still_wanted=still_wanted
        )

    def _touches_disks(self, subject: Domain) -> bool:
        """Whether this cycle's call for the domain makes its QEMU touch the disks."""
        return self.needs_storage

    def _still_callable(self, subject: Domain) -> bool:
        """Waits for the probe of a storage of the domain that is suspected dead (at most the
        probe's deadline): a call to a healthy storage goes on, one to a dead storage does not."""
        entry = self._inventory.get(subject.name)
        if entry is None:
            return False
        touches_disks = self._touches_disks(subject)
        if touches_disks:
            for recheck in [self._rechecks[s] for s in entry.storages if s in self._rechecks]:
                recheck.join()
        return not self._hung(entry, touches_disks)

    def _record(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """A call that touches the disks and runs past its deadline may have met storage that died
        after the round's probe: its storages are probed again at once, and the calls for them
        still queued wait for the verdict (`_still_callable`). A frozen QEMU also makes such a call
        run past its deadline: the probe then answers, and nothing else is held up for long."""
        if (
            outcome.status is Status.TIMEOUT
            and isinstance(subject, Domain)
            and self._touches_disks(subject)
            and (entry := self._inventory.get(subject.name)) is not None
        ):
            self._suspect(entry.storages)
        super()._record(subject, outcome)

    def _suspect(self, storages: tuple[str, ...]) -> None:
        """Probe these storages again, those not being probed again already."""
        storages = tuple(s for s in storages if s not in self._rechecks)
        if not storages:
            return
        recheck = gevent.spawn(self._storage.recheck, storages)
        for storage in storages:
            self._rechecks[storage] = recheck
        recheck.link(lambda _: [self._rechecks.pop(storage, None) for storage in storages])

    def _callable(self, entries: Iterable[DomainEntry]) -> list[DomainEntry]:
        """The entries no hang signal holds for: a call to a domain whose QEMU is stopped, whose
        monitor is busy for longer than the deadline (stuck on a call already, this sampler's or
        another's: a new call would wait 30 s for the job in one of libvirtd's workers) or, for a
        call that touches the disks, with a disk on storage that does not answer, would only get
        stuck too. The skip is counted and flags the values stale."""
        ready = []
        for entry in entries:
            if self._hung(entry, self.needs_storage):
                for name in self._accounts_of(entry.subject):
                    self._store.count_failure(name, entry.subject, Status.SKIPPED)
            else:
                ready.append(entry)
        return ready

    def _hung(self, entry: DomainEntry, touches_disks: bool) -> bool:
        signals = self._inventory.hang_signals(entry, busy_for=self.config.deadline)
        return bool(signals if touches_disks else signals - {HangSignal.STORAGE_UNRESPONSIVE})

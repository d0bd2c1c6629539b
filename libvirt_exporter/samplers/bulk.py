"""The `bulk` sampler: the stat groups that need QEMU's monitor (balloon, vCPU, I/O threads, ...) of
every domain, with the block group that brings the `block` sampler's I/O counters
(samplers/block.py), in one call when the host is healthy.

`virConnectGetAllDomainStats` with NOWAIT answers at once for a domain whose job another call
holds, but leaves out what needs the job (the balloon driver's statistics, the disks' counters),
and whoever first touches a hung QEMU's monitor blocks until QEMU resumes. So, by the round's survey:
- a domain a hang signal holds for (its QEMU stopped, its monitor busy for longer than the
  deadline) gets no call and is counted as skipped;
- a domain with a disk on storage that does not answer its probe is not asked for the block group,
  which would make its QEMU touch the disks and hang its main loop (docs/storage-outages.md): its
  block values count a skip, and its other groups are asked all the same, since its QEMU answers
  what does not touch the disks;
- a domain whose monitor is busy for a moment (another call) gets a call of its own that waits for
  the job, and so does one whose answer lacked what needs the job, so that its values are complete;
- the others are asked in one host-wide NOWAIT call, those asked for the block group in one and, in
  an outage, the others in a second. When such a call runs past its deadline, the survey runs again
  (which probes every storage again), the one domain whose monitor the call now waits on is blamed,
  and every other domain of the call is asked at once with a call of its own, the block group only
  where its storage still answers; while it stays stuck, each cycle asks domain by domain, so that
  the healthy domains stay fresh however long the hung one stays hung.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import gevent
import libvirt

from libvirt_exporter.calls import Call, CallKey, Domain, Outcome, Status, Subject
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.domain_xml import Disk
from libvirt_exporter.inventory import DomainEntry, HangSignal
from libvirt_exporter.lanes import Lane
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainParts, DomainSampler, Read, Surveyor, read_domain_stats
from libvirt_exporter.samplers.block import BLOCK_KEYS, BlockSampler, disk_by_disk, has_counters
from libvirt_exporter.samplers.block_info import BlockInfoSampler, read_sizes
from libvirt_exporter.stat_keys import is_kvm_statistic
from libvirt_exporter.store import Sample

log = get_logger(__name__)

STAT_GROUPS = {
    "balloon": libvirt.VIR_DOMAIN_STATS_BALLOON,
    "vcpu": libvirt.VIR_DOMAIN_STATS_VCPU,
    "perf": libvirt.VIR_DOMAIN_STATS_PERF,
    "iothread": libvirt.VIR_DOMAIN_STATS_IOTHREAD,
    "memory": libvirt.VIR_DOMAIN_STATS_MEMORY,
    "dirtyrate": libvirt.VIR_DOMAIN_STATS_DIRTYRATE,
}
"""The stat group each collector switch asks libvirt for. State, CPU time and interfaces, which need
no QEMU, come from the `basic` sampler's survey instead, and so do the vCPU figures where the host
gives them (host_counters.py)."""
HOST_WIDE = CallKey(SamplerName.BULK)
"""The host-wide call without the block group."""
HOST_WIDE_DISKS = CallKey(SamplerName.BLOCK)
"""The host-wide call with the block group: it can hang on storage, the other one cannot."""
BLOCK_GROUP = int(libvirt.VIR_DOMAIN_STATS_BLOCK)
IOTHREAD_GROUP = int(libvirt.VIR_DOMAIN_STATS_IOTHREAD)
VCPU_GROUP = int(libvirt.VIR_DOMAIN_STATS_VCPU)
DISK_SAMPLERS = frozenset((SamplerName.BLOCK, SamplerName.BLOCK_INFO))
"""The samplers whose values make QEMU touch the disks."""


def stat_groups(collectors: frozenset[str]) -> int:
    groups = 0
    for collector, group in STAT_GROUPS.items():
        if collector in collectors:
            groups |= group
    return int(groups)


@dataclass(frozen=True)
class Answer:
    """One domain's answer to a call, split by the sampler whose values each part is, in the call's
    thread: split on the hub, 500 domains' keys held it for milliseconds, which everything on the hub
    (the calls' deadlines among it) waited for."""

    own: Mapping[str, Any]
    """This sampler's groups."""
    disks: Mapping[str, Any] | None
    """The block group's keys (the block sampler's values); None when the answer has no such group."""
    counters: bool
    """The block group's keys hold I/O counters."""
    sizes: Mapping[str, Any]
    """The disks' sizes (the block_info sampler's values), when they were read."""
    sizes_error: libvirt.libvirtError | None = None
    """Why the sizes could not be read, when the rest of the answer could."""


def split(stats: Mapping[str, Any], sizes: Mapping[str, Any] | None = None) -> Answer:
    """Runs in a pool thread."""
    own: dict[str, Any] = {}
    disks: dict[str, Any] = {}
    for key, value in stats.items():
        if not is_kvm_statistic(key):
            (disks if key.startswith(BLOCK_KEYS) else own)[key] = value
    return Answer(own, disks if "block.count" in disks else None, has_counters(disks), sizes or {})


def read_stats(domains: list[Any], groups: int, lane: Lane) -> dict[str, Answer]:
    """Runs in a pool thread: the stat groups of `domains`, by name, without waiting for jobs."""
    handles = [lane.domain(domain) for domain in domains]
    nowait = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    records = lane.conn.domainListGetStats(handles, groups, nowait)
    return {dom.name(): split(stats) for dom, stats in records}


def read_one(domain: Any, groups: int, disks: tuple[Disk, ...], sizes: bool, lane: Lane) -> Answer:
    """Runs in a pool thread: the stat groups of one domain, waiting for its job if need be; the
    disks' counters read disk by disk from a driver whose block group lacks them; with `sizes`,
    the disks' sizes."""
    answer = split(read_domain_stats(domain, groups, lane))
    if groups & BLOCK_GROUP and disks and not answer.counters:
        counters = disk_by_disk(lane.domain(domain), [disk.target for disk in disks])
        answer = replace(answer, disks=counters, counters=True)
    if not sizes:
        return answer
    try:
        return replace(answer, sizes=read_sizes(lane.domain(domain), disks))
    except libvirt.libvirtError as error:  # a disk blockInfo cannot size costs the others nothing
        return replace(answer, sizes_error=error)


def waited_on(entries: list[DomainEntry], call_age: float) -> DomainEntry | None:
    """The domain a host-wide call that runs for `call_age` seconds is stuck on, if any.

    libvirt reads the domains one after the other and, with NOWAIT, passes over a domain whose job
    another call holds: the call waits on at most one monitor, which it made busy after it
    started. Of the monitors busy for no longer than the call, that one has been busy the longest;
    others are busy for a moment with another sampler's call, and are not to blame."""
    since_call = [e for e in entries if not e.monitor_free and e.monitor_busy_seconds <= call_age]
    return max(since_call, key=lambda e: e.monitor_busy_seconds, default=None)


class BulkSampler(DomainSampler):
    name = SamplerName.BULK

    def __init__(
        self,
        config: SamplerConfig,
        parts: DomainParts,
        survey: Surveyor,
        groups: int,
        disks: tuple[BlockSampler, BlockInfoSampler] | None = None,
    ) -> None:
        super().__init__(config, parts, survey)
        self.groups = groups
        """The stat groups asked for (`stat_groups` of the enabled collectors); none: no calls."""
        self._disks = disks
        """The samplers whose values its calls bring too: the disks' counters and sizes, when the
        block collector is on."""
        self._asked: dict[str, tuple[SamplerName, ...]] = {}
        """Per domain, the samplers whose values this cycle's call for it brings."""

    def accounts(self) -> tuple[SamplerName, ...]:
        return (self.name, *(sampler.name for sampler in self._disks or ()))

    def entries(self) -> list[DomainEntry]:
        return super().entries() if self.groups else []

    def _sample(self) -> None:
        callees = self.entries() if self.groups or self._disks is None else self._disks[0].entries()
        now = time.monotonic()
        self._asked = {entry.name: self._samplers_of(entry, now) for entry in callees}
        if self._disks is not None:
            self._disks[1].keep_only(set(self._asked))
        ready = self._with_disks_readable(self._callable(e for e in callees if self._asked[e.name]))
        alone = [e for e in ready if SamplerName.BLOCK_INFO in self._asked[e.name]]
        with_disks = [e for e in ready if self._asked[e.name] == self._with(SamplerName.BLOCK)]
        without = [e for e in ready if self._asked[e.name] == self._with()]
        calls = [
            gevent.spawn(self._sample_host_wide, key, entries, groups)
            for key, entries, groups in (
                (HOST_WIDE_DISKS, with_disks, self._own_groups(with_disks) | BLOCK_GROUP),
                (HOST_WIDE, without, self._own_groups(without)),
            )
            if entries
        ]
        gevent.joinall(calls, raise_error=True)
        leftovers = [e for call in calls for e in call.value]
        self._sample_each((e.subject, self._read_one(e)) for e in alone + leftovers)

    def _with(self, *disks: SamplerName) -> tuple[SamplerName, ...]:
        """What a call brings that brings these disk values: this sampler's, if it has groups."""
        return ((self.name,) if self.groups else ()) + disks

    def _samplers_of(self, entry: DomainEntry, now: float) -> tuple[SamplerName, ...]:
        """The samplers whose values a call for the domain brings, by the collectors that are on,
        and whether its disks' sizes are due."""
        if self._disks is None or not entry.active:
            return self._with()
        if entry.disks_with_media and self._disks[1].due(entry, now):
            return self._with(SamplerName.BLOCK, SamplerName.BLOCK_INFO)
        return self._with(SamplerName.BLOCK)

    def _with_disks_readable(self, entries: list[DomainEntry]) -> list[DomainEntry]:
        """The entries still asked for something once what touches the disks (the block group,
        the sizes) is left out for those with a disk on storage that does not answer its probe
        (their skips counted)."""
        asked = []
        for entry in entries:
            samplers = self._asked[entry.name]
            signals = self._inventory.hang_signals(entry, busy_for=self.config.deadline)
            if self._touches_disks(entry.subject) and HangSignal.STORAGE_UNRESPONSIVE in signals:
                for name in set(samplers) & DISK_SAMPLERS:
                    self._store.count_failure(name, entry.subject, Status.SKIPPED)
                samplers = self._asked[entry.name] = tuple(s for s in samplers if s not in DISK_SAMPLERS)
            if samplers:
                asked.append(entry)
        return asked

    def _own_groups(self, entries: Sequence[DomainEntry]) -> int:
        """This sampler's groups for a call about `entries`, without those libvirt would ask every
        QEMU's monitor for in vain: the I/O thread group unless one of them defines I/O threads
        or has an XML not read yet (the others' QEMUs answer nothing), the vCPU group when the
        survey read all their vCPU figures from the host. All kept when none would be left: a
        call for no group at all asks for every group."""
        left_out = 0
        if all(e.description is not None and not e.description.iothreads for e in entries):
            left_out |= IOTHREAD_GROUP
        if all(e.vcpus_from_host for e in entries):
            left_out |= VCPU_GROUP
        return (self.groups & ~left_out) or self.groups

    def _groups_of(self, entry: DomainEntry) -> int:
        samplers = self._asked.get(entry.name, ())
        bulk = self._own_groups((entry,)) if self.name in samplers else 0
        return bulk | (BLOCK_GROUP if SamplerName.BLOCK in samplers else 0)

    def _read_one(self, entry: DomainEntry) -> Read:
        sizes = SamplerName.BLOCK_INFO in self._asked.get(entry.name, ())
        return partial(read_one, entry.domain, self._groups_of(entry), entry.disks_with_media, sizes)

    def _touches_disks(self, subject: Domain) -> bool:
        return not DISK_SAMPLERS.isdisjoint(self._asked.get(subject.name, ()))

    def _accounts_of(self, subject: Subject) -> tuple[SamplerName, ...]:
        return self._asked.get(subject.name, ()) if isinstance(subject, Domain) else ()

    def _sample_host_wide(self, key: CallKey, ready: list[DomainEntry], groups: int) -> list[DomainEntry]:
        """One call for the `ready` domains whose monitor is free, all asked for `groups`; returns
        the domains still to be sampled one by one."""
        free = [e for e in ready if e.monitor_free]
        busy = [e for e in ready if not e.monitor_free]
        if not free or self._dispatcher.is_in_flight(key):
            return ready
        outcome = self._dispatcher.call(
            key,
            partial(read_stats, [entry.domain for entry in free], groups),
            self.config.deadline,
            on_late=partial(self._take_late_host_wide, groups),
        )
        if outcome.status is Status.OK and outcome.call is not None:
            without_job = self._offer_all(outcome.value or {}, outcome.call.started_at, groups)
            return busy + [entry for entry in free if entry.name in without_job]
        if outcome.status is Status.TIMEOUT and outcome.call is not None:
            return self._blame_stuck_monitors(outcome.call, ready)
        log.info(
            "host-wide stats call failed, sampling domain by domain",
            err=describe(outcome.error or Exception(outcome.status.value)),
        )
        return ready

    def _blame_stuck_monitors(self, call: Call, ready: list[DomainEntry]) -> list[DomainEntry]:
        """Find the domain the stuck call waits on: its values count a timeout, and the call
        counts as its own while it runs. Every other domain is asked at once with a call of its
        own, since the host-wide call holds no other domain's job; the survey that finds the
        stuck domain probes the storages again, so the block group goes only where they answer."""
        if self._surveyor is not None:
            self._surveyor.refresh()
        now = [entry for e in ready if (entry := self._inventory.get(e.name)) is not None]
        stuck = waited_on(now, call.running_for(time.monotonic()))
        if stuck is not None:
            for name in self._asked.get(stuck.name, ()):
                self._store.count_failure(name, stuck.subject, Status.TIMEOUT)
                self._store.blame(name, stuck.subject, call)
        log.warning(
            "host-wide stats call ran past its deadline",
            deadline=self.config.deadline,
            stuck_on=stuck.name if stuck is not None else "",
        )
        others = [e for e in now if (stuck is None or e.name != stuck.name)]
        return self._with_disks_readable(self._callable(others))

    def _take_late_host_wide(self, groups: int, outcome: Outcome[Any]) -> None:
        if outcome.status is Status.OK and outcome.call is not None:
            self._offer_all(outcome.value or {}, outcome.call.started_at, groups)

    def _record_late(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """A late result counts only for a domain that is still there."""
        if isinstance(subject, Domain) and self._inventory.get(subject.name) is not None:
            self._record(subject, outcome)

    def _offer_all(self, answers: Mapping[str, Answer], taken_at: float, groups: int) -> set[str]:
        """Store complete answers to a call for `groups`; returns the domains whose answers lack
        what needs the job."""
        without_job = set()
        for name, answer in answers.items():
            entry = self._inventory.get(name)
            if entry is None:
                continue
            if self._lacks_job_stats(entry, answer, groups):
                without_job.add(name)
            else:
                self._offer(entry.subject, answer, taken_at)
        return without_job

    def _offer(self, subject: Subject, values: Any, taken_at: float) -> None:
        """Each sampler's part of the answer, if the call asked for it: a late answer may come from
        a call that asked for other groups than this cycle's."""
        if not isinstance(subject, Domain) or not isinstance(values, Answer):
            return
        samplers = self._asked.get(subject.name, ())
        if self.name in samplers:
            self._store.offer(self.name, subject, Sample(values.own, taken_at))
        if SamplerName.BLOCK in samplers and values.disks is not None:
            self._store.offer(SamplerName.BLOCK, subject, Sample(values.disks, taken_at))
        if SamplerName.BLOCK_INFO in samplers and self._disks is not None:
            self._offer_sizes(self._disks[1], subject, values, taken_at)

    def _offer_sizes(self, sizes: BlockInfoSampler, subject: Domain, answer: Answer, taken_at: float) -> None:
        """Sizes that could not be read count an error, and are asked again when due again, not at
        every cycle: the domain's other values come with the host-wide call meanwhile."""
        if answer.sizes:
            self._store.offer(SamplerName.BLOCK_INFO, subject, Sample(answer.sizes, taken_at))
            sizes.read(subject.name, time.monotonic(), answer.sizes)
        elif answer.sizes_error is not None:
            self._store.count_failure(SamplerName.BLOCK_INFO, subject, Status.ERROR)
            log.info("cannot read disk sizes", subject=subject, err=describe(answer.sizes_error))
            sizes.read(subject.name, time.monotonic(), None)

    def _lacks_job_stats(self, entry: DomainEntry, answer: Answer, groups: int) -> bool:
        """NOWAIT leaves out what needs the domain's job when another call holds it (the job
        sampler's, another client's, for a moment): of a running domain's balloon group, at least
        `rss`; of its block group, the counters (which libvirt's test driver never gives). Such a
        domain is asked again with a call of its own that waits for the job."""
        if not entry.active:
            return False
        balloon = bool(groups & libvirt.VIR_DOMAIN_STATS_BALLOON) and "balloon.rss" not in answer.own
        disks = bool(groups & BLOCK_GROUP) and bool(entry.disks_with_media) and not answer.counters
        return balloon or disks

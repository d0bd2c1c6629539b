"""The `bulk` sampler: the stat groups that need QEMU's monitor (balloon, vCPU, I/O threads, ...) of
every domain, in one call when the host is healthy.

`virConnectGetAllDomainStats` with NOWAIT answers at once for a domain whose job another call
holds, but leaves out what needs the job (the balloon driver's statistics, for one), and
whoever first touches a hung QEMU's monitor blocks until QEMU resumes. So, by the round's survey:
- a domain a hang signal holds for (its QEMU stopped, its monitor busy for longer than the
  deadline) gets no call and is counted as skipped; one on unresponsive storage is asked all the
  same, since its QEMU answers what does not touch the disks;
- a domain whose monitor is busy for a moment (another call, often the block sampler's) gets a
  call of its own that waits for the job, so that its values are complete;
- the others are asked in one host-wide NOWAIT call. When that call runs past its deadline, the
  one domain whose monitor it now waits on is blamed, and every other domain is asked at once
  with a call of its own; while it stays stuck, each cycle asks domain by domain, so that the
  healthy domains stay fresh however long the frozen one stays frozen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import libvirt

from libvirt_exporter.calls import Call, CallKey, Domain, Outcome, Status
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.lanes import Lane
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainParts, DomainSampler, Surveyor, read_domain_stats
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
no QEMU, come from the `basic` sampler's survey instead."""
HOST_WIDE = CallKey(SamplerName.BULK)


def stat_groups(collectors: frozenset[str]) -> int:
    groups = 0
    for collector, group in STAT_GROUPS.items():
        if collector in collectors:
            groups |= group
    return int(groups)


def read_stats(domains: list[Any], groups: int, lane: Lane) -> dict[str, Mapping[str, Any]]:
    """Runs in a pool thread: the stat groups of `domains`, by name, without waiting for jobs."""
    handles = [lane.domain(domain) for domain in domains]
    nowait = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    records = lane.conn.domainListGetStats(handles, groups, nowait)
    return {dom.name(): stats for dom, stats in records}


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

    def __init__(self, config: SamplerConfig, parts: DomainParts, survey: Surveyor, groups: int) -> None:
        super().__init__(config, parts, survey)
        self.groups = groups
        """The stat groups asked for (`stat_groups` of the enabled collectors); none: no calls."""

    def entries(self) -> list[DomainEntry]:
        return super().entries() if self.groups else []

    def _sample(self) -> None:
        ready = self._callable(self.entries())
        if not ready:
            return
        free = [e for e in ready if e.monitor_free]
        busy = [e for e in ready if not e.monitor_free]
        if free and not self._dispatcher.is_in_flight(HOST_WIDE):
            free = self._sample_host_wide(free)
        self._sample_each((e.subject, partial(read_domain_stats, e.domain, self.groups)) for e in free + busy)

    def _sample_host_wide(self, ready: list[DomainEntry]) -> list[DomainEntry]:
        """One call for all `ready` domains; returns the domains still to be sampled one by one."""
        outcome = self._dispatcher.call(
            HOST_WIDE,
            partial(read_stats, [entry.domain for entry in ready], self.groups),
            self.config.deadline,
            on_late=self._take_late_host_wide,
        )
        if outcome.status is Status.OK and outcome.call is not None:
            without_job = self._offer_all(outcome.value or {}, outcome.call.started_at)
            return [entry for entry in ready if entry.name in without_job]
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
        own, since the host-wide call holds no other domain's job."""
        if self._surveyor is not None:
            self._surveyor.refresh()
        now = [entry for e in ready if (entry := self._inventory.get(e.name)) is not None]
        stuck = waited_on(now, call.running_for(time.monotonic()))
        if stuck is not None:
            self._store.count_failure(self.name, Domain(stuck.name), Status.TIMEOUT)
            self._store.blame(self.name, Domain(stuck.name), call)
        log.warning(
            "host-wide stats call ran past its deadline",
            deadline=self.config.deadline,
            stuck_on=stuck.name if stuck is not None else "",
        )
        return [e for e in self.entries() if (stuck is None or e.name != stuck.name) and not self._hung(e)]

    def _take_late_host_wide(self, outcome: Outcome[Any]) -> None:
        if outcome.status is Status.OK and outcome.call is not None:
            self._offer_all(outcome.value or {}, outcome.call.started_at)

    def _offer_all(self, stats_by_domain: Mapping[str, Mapping[str, Any]], taken_at: float) -> set[str]:
        """Store complete stats; returns the domains whose stats lack what needs the job."""
        without_job = set()
        for name, stats in stats_by_domain.items():
            entry = self._inventory.get(name)
            if entry is None:
                continue
            if self._lacks_job_stats(entry, stats):
                without_job.add(name)
            else:
                self._store.offer(self.name, Domain(name), Sample(stats, taken_at))
        return without_job

    def _lacks_job_stats(self, entry: DomainEntry, stats: Mapping[str, Any]) -> bool:
        """NOWAIT leaves out what needs the domain's job when another call holds it (often the
        block sampler's, for a moment): of a running domain's balloon group, at least `rss`.
        Such a domain is asked again with a call of its own that waits for the job."""
        asked = bool(self.groups & libvirt.VIR_DOMAIN_STATS_BALLOON)
        return asked and entry.active and "balloon.rss" not in stats

"""The values sampled so far and the bookkeeping of every call: what a snapshot is rendered from.

Everything is kept per (sampler, subject), the subject being a domain or a storage pool, so that a
pool whose call hangs is flagged exactly as a domain is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from libvirt_exporter.calls import Call, Status, Subject
from libvirt_exporter.samplers import SamplerName

Key = tuple[SamplerName, Subject]


@dataclass(frozen=True)
class Sample:
    """The values one call returned for one subject, and the unix time the call was sent."""

    values: Mapping[str, Any]
    taken_at: float


@dataclass(frozen=True)
class CallCounters:
    timeouts: int = 0
    errors: int = 0
    skipped: int = 0
    failing: bool = False
    """The latest call brought no values (timeout, error or skip): what is served is not current."""


@dataclass(frozen=True)
class SamplerStatus:
    last_duration: float | None = None
    last_success: float | None = None
    errors: int = 0


@dataclass
class Store:
    """Per (sampler, subject), the latest sample and the call counters; per sampler, its cycles.

    Samples, counters and statuses are immutable and replaced as they change, so that `copy` is a
    copy of the dictionaries alone: cheap enough for the hub, and safe to read in another thread.
    """

    samples: dict[Key, Sample] = field(default_factory=dict)
    counters: dict[Key, CallCounters] = field(default_factory=lambda: defaultdict(CallCounters))
    status: dict[SamplerName, SamplerStatus] = field(default_factory=lambda: defaultdict(SamplerStatus))
    blamed: dict[Key, Call] = field(default_factory=dict)
    """A call about more than one subject (the host-wide stats call) that is stuck on this one."""

    def offer(self, sampler: SamplerName, subject: Subject, sample: Sample) -> bool:
        """Keep `sample` unless a newer one is already held: a late result never hides a fresh one."""
        key = (sampler, subject)
        held = self.samples.get(key)
        if held is not None and held.taken_at >= sample.taken_at:
            return False
        self.samples[key] = sample
        self.blamed.pop(key, None)
        if self.counters[key].failing:
            self.counters[key] = replace(self.counters[key], failing=False)
        return True

    def count_failure(self, sampler: SamplerName, subject: Subject, status: Status) -> None:
        """A call that brought no values: count why, and mark the values served as not current."""
        key = (sampler, subject)
        counters = self.counters[key]
        if status is Status.TIMEOUT:
            counters = replace(counters, timeouts=counters.timeouts + 1)
        elif status is Status.ERROR:
            counters = replace(counters, errors=counters.errors + 1)
        else:
            counters = replace(counters, skipped=counters.skipped + 1)
        self.counters[key] = replace(counters, failing=True)

    def blame(self, sampler: SamplerName, subject: Subject, call: Call) -> None:
        self.blamed[(sampler, subject)] = call

    def sample(self, sampler: SamplerName, subject: Subject) -> Sample | None:
        return self.samples.get((sampler, subject))

    def counters_of(self, sampler: SamplerName, subject: Subject) -> CallCounters:
        return self.counters.get((sampler, subject), _NO_COUNTS)

    def copy(self) -> Store:
        """The state as it is now, which later samples and counts leave as it is."""
        return Store(
            dict(self.samples),
            defaultdict(CallCounters, self.counters),
            defaultdict(SamplerStatus, self.status),
            {key: call for key, call in self.blamed.items() if not call.ended.is_set()},
        )

    def forget(self, subjects: Iterable[Subject]) -> None:
        """Drop everything about subjects that no longer exist, so that their series disappear."""
        gone = set(subjects)
        if not gone:
            return
        for table in (self.samples, self.counters, self.blamed):
            for key in [key for key in table if key[1] in gone]:
                del table[key]

    def cycle_succeeded(self, sampler: SamplerName, duration: float, now: float) -> None:
        self.status[sampler] = replace(self.status[sampler], last_duration=duration, last_success=now)

    def cycle_failed(self, sampler: SamplerName, duration: float) -> None:
        status = self.status[sampler]
        self.status[sampler] = replace(status, last_duration=duration, errors=status.errors + 1)


_NO_COUNTS = CallCounters()

"""The values sampled so far and the bookkeeping of every call: what a snapshot is rendered from."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from libvirt_exporter.calls import Status


@dataclass(frozen=True)
class Sample:
    """The values one call returned for one domain, and the unix time the call was sent."""

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
    """Per sampler, the latest sample of each domain; per (sampler, domain), the call counters.

    Samples, counters and statuses are immutable and replaced as they change, so that `copy` is a
    copy of the dictionaries alone: cheap enough for the hub, and safe to read in another thread.
    """

    samples: dict[str, dict[str, Sample]] = field(default_factory=lambda: defaultdict(dict))
    counters: dict[tuple[str, str], CallCounters] = field(default_factory=lambda: defaultdict(CallCounters))
    status: dict[str, SamplerStatus] = field(default_factory=lambda: defaultdict(SamplerStatus))

    def offer(self, sampler: str, domain: str, sample: Sample) -> bool:
        """Keep `sample` unless a newer one is already held: a late result never hides a fresh one."""
        held = self.samples[sampler].get(domain)
        if held is not None and held.taken_at >= sample.taken_at:
            return False
        self.samples[sampler][domain] = sample
        key = (sampler, domain)
        if self.counters[key].failing:
            self.counters[key] = replace(self.counters[key], failing=False)
        return True

    def count_failure(self, sampler: str, domain: str, status: Status) -> None:
        """A call that brought no values: count why, and mark the values served as not current."""
        key = (sampler, domain)
        counters = self.counters[key]
        if status is Status.TIMEOUT:
            counters = replace(counters, timeouts=counters.timeouts + 1)
        elif status is Status.ERROR:
            counters = replace(counters, errors=counters.errors + 1)
        else:
            counters = replace(counters, skipped=counters.skipped + 1)
        self.counters[key] = replace(counters, failing=True)

    def sample(self, sampler: str, domain: str) -> Sample | None:
        return self.samples[sampler].get(domain)

    def counters_of(self, sampler: str, domain: str) -> CallCounters:
        return self.counters[(sampler, domain)]

    def copy(self) -> Store:
        """The state as it is now, which later samples and counts leave as it is."""
        return Store(
            defaultdict(dict, {sampler: dict(samples) for sampler, samples in self.samples.items()}),
            defaultdict(CallCounters, self.counters),
            defaultdict(SamplerStatus, self.status),
        )

    def forget(self, domains: Iterable[str]) -> None:
        """Drop everything about domains that no longer exist, so that their series disappear."""
        gone = set(domains)
        for per_domain in self.samples.values():
            for name in gone & per_domain.keys():
                del per_domain[name]
        for key in [key for key in self.counters if key[1] in gone]:
            del self.counters[key]

    def cycle_succeeded(self, sampler: str, duration: float, now: float) -> None:
        self.status[sampler] = replace(self.status[sampler], last_duration=duration, last_success=now)

    def cycle_failed(self, sampler: str, duration: float) -> None:
        status = self.status[sampler]
        self.status[sampler] = replace(status, last_duration=duration, errors=status.errors + 1)

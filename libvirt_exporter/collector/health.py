"""Sampler health: what makes a stuck call, a stale value or a failing sampler visible."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from libvirt_exporter.calls import Domain, Host, Pool, Storage
from libvirt_exporter.collector.families import Families, Spec, counter, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.inventory import HangSignal

S = ("sampler",)

DURATION = gauge("libvirt_sampler_duration_seconds", "Wall time of the sampler's last completed cycle.", S)
LAST_SUCCESS = gauge(
    "libvirt_sampler_last_success_timestamp_seconds",
    "Unix time of the sampler's last cycle that succeeded.",
    S,
)
ERRORS = counter("libvirt_sampler_errors", "Sampler cycles that failed as a whole.", S)


@dataclass(frozen=True)
class SubjectFamilies:
    """The families that say how current the values of one kind of subject are."""

    sample_timestamp: Spec
    stale: Spec
    timeouts: Spec
    errors: Spec
    skipped: Spec
    in_flight: Spec

    def __iter__(self) -> Iterator[Spec]:
        return iter(
            (self.sample_timestamp, self.stale, self.timeouts, self.errors, self.skipped, self.in_flight)
        )


def _subject_families(prefix: str, label: str, noun: str) -> SubjectFamilies:
    labels = (label, "sampler")
    return SubjectFamilies(
        gauge(
            f"{prefix}_sample_timestamp_seconds",
            f"Unix time when the values now served for the {noun} were taken.",
            labels,
        ),
        gauge(
            f"{prefix}_sample_stale",
            f"1 when the values served for the {noun} are not current: libvirtd is unreachable, the "
            f"{noun}'s latest call brought none (timeout, error, skip), or they are older than interval "
            "plus three deadlines.",
            labels,
        ),
        counter(f"{prefix}_sample_timeouts", f"Calls for the {noun} that ran past their deadline.", labels),
        counter(f"{prefix}_sample_errors", f"Calls for the {noun} that failed with a libvirt error.", labels),
        counter(
            f"{prefix}_sample_skipped",
            f"Cycles that sent the {noun} no call because its previous call had not returned.",
            labels,
        ),
        gauge(
            f"{prefix}_call_in_flight_seconds",
            f"How long the {noun}'s outstanding call has been running; 0 when none.",
            labels,
        ),
    )


DOMAIN = _subject_families("libvirt_domain", "domain", "domain")
POOL = _subject_families("libvirt_storage_pool", "pool", "storage pool")
STORAGE = _subject_families("libvirt_storage", "storage", "storage")
FAMILIES_OF: dict[type, SubjectFamilies] = {Domain: DOMAIN, Pool: POOL, Storage: STORAGE}

HANG_SIGNAL = gauge(
    "libvirt_domain_hang_signal",
    "1 while the signal holds for the domain, read without a call to it: its QEMU process stopped "
    "(qemu_stopped), its monitor busy for longer than a deadline (monitor_busy), a storage of its "
    "disks unresponsive to its probe (storage_unresponsive); 0 otherwise.",
    ("domain", "signal"),
    source="/proc, virDomainGetControlInfo, the storage probe",
)
STORAGE_DOMAINS = gauge(
    "libvirt_storage_domains",
    "Running domains with a disk on the storage (the mount point its images live on).",
    ("storage",),
    source="domain XML, mount table",
)
MONITOR_BUSY = gauge(
    "libvirt_domain_monitor_busy_seconds",
    "How long the domain's QEMU monitor has been occupied (virDomainGetControlInfo); 0 when free.",
    ("domain",),
    source="virDomainGetControlInfo",
)
THREADS = gauge(
    "libvirt_sampler_threads",
    "OS threads running libvirt calls: busy ones, and stuck ones past their deadline.",
    ("state",),
)
SPECS = (
    DURATION,
    LAST_SUCCESS,
    ERRORS,
    *DOMAIN,
    *POOL,
    *STORAGE,
    MONITOR_BUSY,
    HANG_SIGNAL,
    STORAGE_DOMAINS,
    THREADS,
)


def _add_samplers(families: Families, state: State) -> None:
    for sampler in state.samplers:
        name = sampler.name
        status = state.store.status[name]
        if status.last_duration is not None:
            families.add(DURATION, (name,), status.last_duration)
        if status.last_success is not None:
            families.add(LAST_SUCCESS, (name,), status.last_success)
        families.add(ERRORS, (name,), status.errors)


def _add_subjects(families: Families, state: State) -> None:
    for sampler in state.samplers:
        name = sampler.name
        for subject in sampler.subjects:
            if isinstance(subject, Host):
                continue
            of = FAMILIES_OF[type(subject)]
            labels = (subject.name, name)
            sample = state.store.sample(name, subject)
            if sample is not None:
                families.add(of.sample_timestamp, labels, sample.taken_at)
            counters = state.store.counters_of(name, subject)
            families.add(of.stale, labels, 1 if state.stale(sampler, sample, counters) else 0)
            families.add(of.timeouts, labels, counters.timeouts)
            families.add(of.errors, labels, counters.errors)
            families.add(of.skipped, labels, counters.skipped)
            families.add(of.in_flight, labels, state.in_flight.get((name, subject), 0.0))
    for entry in state.domains:
        if entry.active:
            families.add(MONITOR_BUSY, (entry.name,), entry.monitor_busy_seconds)


def _add_hang_signals(families: Families, state: State) -> None:
    for domain, signals in state.hang_signals.items():
        for signal in HangSignal.ALL:
            families.add(HANG_SIGNAL, (domain, signal), 1 if signal in signals else 0)
    for storage, domains in sorted(state.storages.items()):
        families.add(STORAGE_DOMAINS, (storage,), domains)


def collect(state: State) -> Families:
    families = Families()
    _add_samplers(families, state)
    _add_subjects(families, state)
    _add_hang_signals(families, state)
    families.add(THREADS, ("busy",), state.busy_threads)
    families.add(THREADS, ("stuck",), state.stuck_threads)
    return families

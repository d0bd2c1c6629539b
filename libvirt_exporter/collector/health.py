"""Sampler health: what makes a stuck call, a stale value or a failing sampler visible."""

from __future__ import annotations

from libvirt_exporter.collector.families import Families, counter, gauge
from libvirt_exporter.collector.view import State

S = ("sampler",)
DS = ("domain", "sampler")

DURATION = gauge("libvirt_sampler_duration_seconds", "Wall time of the sampler's last completed cycle.", S)
LAST_SUCCESS = gauge(
    "libvirt_sampler_last_success_timestamp_seconds",
    "Unix time of the sampler's last cycle that succeeded.",
    S,
)
ERRORS = counter("libvirt_sampler_errors", "Sampler cycles that failed as a whole.", S)
SAMPLE_TIMESTAMP = gauge(
    "libvirt_domain_sample_timestamp_seconds",
    "Unix time when the values now served for the domain were taken.",
    DS,
)
STALE = gauge(
    "libvirt_domain_sample_stale",
    "1 when the values served for the domain are not current: libvirtd is unreachable, the domain's "
    "latest call brought none (timeout, error, skip), or they are older than interval plus three deadlines.",
    DS,
)
TIMEOUTS = counter("libvirt_domain_sample_timeouts", "Calls for the domain that ran past their deadline.", DS)
CALL_ERRORS = counter(
    "libvirt_domain_sample_errors", "Calls for the domain that failed with a libvirt error.", DS
)
SKIPPED = counter(
    "libvirt_domain_sample_skipped",
    "Cycles that sent the domain no call because its previous call had not returned.",
    DS,
)
IN_FLIGHT = gauge(
    "libvirt_domain_call_in_flight_seconds",
    "How long the domain's outstanding call has been running; 0 when none.",
    DS,
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
    SAMPLE_TIMESTAMP,
    STALE,
    TIMEOUTS,
    CALL_ERRORS,
    SKIPPED,
    IN_FLIGHT,
    MONITOR_BUSY,
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


def _add_domains(families: Families, state: State) -> None:
    for sampler in state.samplers:
        name = sampler.name
        for domain in sampler.subjects:
            labels = (domain, name)
            sample = state.store.sample(name, domain)
            if sample is not None:
                families.add(SAMPLE_TIMESTAMP, labels, sample.taken_at)
            counters = state.store.counters_of(name, domain)
            stale = (
                not state.up
                or sample is None
                or counters.failing
                or state.taken_at - sample.taken_at > sampler.stale_after
            )
            families.add(STALE, labels, 1 if stale else 0)
            families.add(TIMEOUTS, labels, counters.timeouts)
            families.add(CALL_ERRORS, labels, counters.errors)
            families.add(SKIPPED, labels, counters.skipped)
            families.add(IN_FLIGHT, labels, state.in_flight.get((domain, name), 0.0))
    for entry in state.domains:
        if entry.active:
            families.add(MONITOR_BUSY, (entry.name,), entry.monitor_busy_seconds)


def collect(state: State) -> Families:
    families = Families()
    _add_samplers(families, state)
    _add_domains(families, state)
    families.add(THREADS, ("busy",), state.busy_threads)
    families.add(THREADS, ("stuck",), state.stuck_threads)
    return families

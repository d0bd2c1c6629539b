"""Sampler health: what makes a stuck call, a stale value or a failing sampler visible."""

from __future__ import annotations

import time

from libvirt_exporter.calls import HOST
from libvirt_exporter.collector.families import Families, counter, gauge
from libvirt_exporter.collector.view import View

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


def _in_flight_seconds(view: View) -> dict[tuple[str, str], float]:
    """Per (domain, sampler), how long its call has run; a stuck host-wide call counts for the
    domains it is blamed on."""
    now = time.monotonic()
    seconds: dict[tuple[str, str], float] = {}
    for call in view.runner.in_flight():
        domains = call.blamed if call.key.subject == HOST else (call.key.subject,)
        for domain in domains:
            key = (domain, call.key.sampler)
            seconds[key] = max(seconds.get(key, 0.0), call.running_for(now))
    return seconds


def _add_samplers(families: Families, view: View) -> None:
    for sampler in view.samplers:
        name = sampler.config.name
        status = view.store.status[name]
        if status.last_duration is not None:
            families.add(DURATION, (name,), status.last_duration)
        if status.last_success is not None:
            families.add(LAST_SUCCESS, (name,), status.last_success)
        families.add(ERRORS, (name,), status.errors)


def _add_domains(families: Families, view: View) -> None:
    now = time.time()
    connected = view.connection.up
    in_flight = _in_flight_seconds(view)
    for sampler in view.samplers:
        name = sampler.config.name
        for domain in sampler.subjects():
            labels = (domain, name)
            sample = view.store.sample(name, domain)
            if sample is not None:
                families.add(SAMPLE_TIMESTAMP, labels, sample.taken_at)
            counters = view.store.counters_of(name, domain)
            stale = (
                not connected
                or sample is None
                or counters.failing
                or now - sample.taken_at > sampler.config.stale_after
            )
            families.add(STALE, labels, 1 if stale else 0)
            families.add(TIMEOUTS, labels, counters.timeouts)
            families.add(CALL_ERRORS, labels, counters.errors)
            families.add(SKIPPED, labels, counters.skipped)
            families.add(IN_FLIGHT, labels, in_flight.get((domain, name), 0.0))
    for entry in view.inventory.domains():
        if entry.active:
            families.add(MONITOR_BUSY, (entry.name,), entry.monitor_busy_seconds)


def collect(view: View) -> Families:
    families = Families()
    _add_samplers(families, view)
    _add_domains(families, view)
    families.add(THREADS, ("busy",), view.runner.busy_count())
    families.add(THREADS, ("stuck",), view.runner.stuck_count())
    return families

"""The promises a chaos run checks, and the summary tables it prints (Markdown, for the docs too)."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from libvirt_exporter.cli import parse_config
from tests.chaos.faults import FAULTS, RECOVERY_BOUND, FaultRecord
from tests.chaos.harness import LIBVIRTD_KINDS, RunResult
from tests.chaos.observe import SCRAPE_BOUND_S, ResourceSample

OWN_THREADS = 8
"""Threads beside the call pool: main, libvirt's event loop, gevent's own."""
_DEFAULTS, _ = parse_config([])
THREAD_CAP = _DEFAULTS.max_concurrent_calls + _DEFAULTS.max_stuck_calls + OWN_THREADS
STUCK_CAP = _DEFAULTS.max_stuck_calls
GREENLET_CAP = 200
"""Greenlets alive: one per sampler loop, one per call of a cycle (a few per domain), one per HTTP
connection; a leak of one per call or per scrape passes it within a minute."""
FD_GROWTH_LIMIT = 8
RSS_GROWTH_LIMIT_MIB = 32.0
MIB = 2**20


@dataclass(frozen=True)
class Check:
    promise: str
    passed: bool
    detail: str


def allowed_seconds(record: FaultRecord, libvirtd_faults: list[FaultRecord]) -> float:
    """A fault's detection bound; longer when a libvirtd fault overlapped its window, because
    nothing can be seen of a VM while libvirtd is down: then the bound counts from its recovery."""
    allowed = record.bound
    if record.kind in LIBVIRTD_KINDS:
        return allowed
    window_end = record.injected_at + record.bound
    for outage in libvirtd_faults:
        back = outage.recovered_at or outage.injected_at + RECOVERY_BOUND
        if outage.injected_at < window_end and back > record.injected_at:
            allowed = max(allowed, back - record.injected_at + record.bound)
    return allowed


def late_or_missing(result: RunResult) -> list[str]:
    libvirtd_faults = [r for r in result.records if r.kind in LIBVIRTD_KINDS]
    problems = []
    for record in result.records:
        took, allowed = record.detection_seconds, allowed_seconds(record, libvirtd_faults)
        if took is None:
            problems.append(f"{record.kind} {record.target} at {record.injected_at:.0f} s: never seen")
        elif took > allowed:
            problems.append(
                f"{record.kind} {record.target} at {record.injected_at:.0f} s: {took:.1f} s > {allowed:.1f} s"
            )
        if record.recovered_at is None:
            problems.append(f"{record.kind} {record.target} at {record.injected_at:.0f} s: never recovered")
    return problems


TRACEBACK = "Traceback (most recent call last)"
LOG_LINE = re.compile(r"^time=|^\{")
ERROR_LEVEL = re.compile(r"\blevel=error\b|\"level\": \"error\"")


def unexpected_exceptions(log: str) -> list[str]:
    """Exceptions in the exporter's log other than libvirt's errors, which chaos makes expected:
    a log line at level error or with a traceback in its `err`, or a traceback that gevent printed
    over several lines (of a greenlet that died), judged by its last line."""
    found = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if LOG_LINE.match(line):
            if (ERROR_LEVEL.search(line) or TRACEBACK in line) and "libvirtError" not in line:
                found.append(line[:300])
        elif line.startswith(TRACEBACK):
            last = next((ln for ln in lines[index + 1 :] if not ln.startswith(" ")), "")
            if "libvirtError" not in last:
                found.append(last[:300])
    return found


def _growth(resources: list[ResourceSample], baseline: ResourceSample | None) -> tuple[int, int, int, int]:
    """Baseline, max, end of threads, and fd growth, from the samples taken after the baseline."""
    after = [s for s in resources if baseline is None or s.at >= baseline.at] or resources
    first = baseline or after[0]
    return first.threads, max(s.threads for s in after), after[-1].threads, after[-1].fds - first.fds


def checks(result: RunResult, every_kind: bool) -> list[Check]:
    out = []
    total = sum(s.count for s in result.scrapes)
    bad = [
        f"{s.client}: {s.failed} failed, {s.slow} slow, {s.failures}"
        for s in result.scrapes
        if s.failed or s.slow
    ]
    slowest = max((s.max_seconds for s in result.scrapes), default=0.0)
    out.append(
        Check(
            f"every scrape answered within {SCRAPE_BOUND_S:g} s",
            not bad and total > 0,
            f"{total} scrapes, slowest {slowest:.3f} s" + (f"; {'; '.join(bad)}" if bad else ""),
        )
    )
    kinds = {r.kind for r in result.records}
    outages = "storage_outage" in kinds
    missing_kinds = sorted(set(FAULTS) - kinds) if every_kind else []
    problems = late_or_missing(result)
    out.append(
        Check(
            "each fault visible within its bound, and recovered",
            not problems and not missing_kinds and not result.harness_errors,
            f"{len(result.records)} faults"
            + (f"; kinds never injected: {missing_kinds}" if missing_kinds else "")
            + (f"; {'; '.join(problems[:10])}" if problems else "")
            + (
                f"; harness errors: {[e.splitlines()[-1] for e in result.harness_errors]}"
                if result.harness_errors
                else ""
            ),
        )
    )
    out.append(
        Check(
            "no series left for a domain or disk that is gone; the metrics match libvirt",
            result.settled is None,
            "settled" if result.settled is None else result.settled,
        )
    )
    healthy = result.healthy
    out.append(
        Check(
            "every healthy domain's values fresh",
            healthy.violations == 0 and healthy.checked > 0,
            f"{healthy.checked} checks, {healthy.violations} stale, "
            f"{healthy.busy_monitor} stale while libvirt said the VM's monitor was busy"
            + (f": {healthy.examples}" if healthy.examples else ""),
        )
    )
    out.append(
        Check(
            "no hang signal for a healthy domain (`qemu_stopped`, `storage_unresponsive`)",
            healthy.false_signals == 0 and healthy.checked > 0,
            f"{healthy.checked} checks, {healthy.false_signals} raised"
            + (f": {healthy.signal_examples}" if healthy.signal_examples else ""),
        )
    )
    dead = result.dead_storage
    out.append(
        Check(
            "VMs on a dead storage: state, CPU and network (`basic`) fresh",
            dead.violations == 0 and (dead.checked > 0 or not outages),
            f"{dead.checked} checks, {dead.violations} stale"
            + (f": {dead.examples}" if dead.examples else ""),
        )
    )
    stuck = result.stuck
    out.append(
        Check(
            f"stuck calls never above {STUCK_CAP} (--sampler.max-stuck-calls)",
            stuck.checked > 0 and stuck.most <= STUCK_CAP,
            f"{stuck.checked} scrapes, at most {stuck.most:g}"
            + (f" (at {stuck.most_at:.0f} s)" if stuck.most else ""),
        )
    )
    out.extend(_resource_checks(result))
    exceptions = unexpected_exceptions(result.exporter_log)
    out.append(
        Check(
            "no exception in the log but libvirt's errors; the exporter ran throughout",
            not exceptions and result.exporter_alive_at_end,
            f"{len(exceptions)} unexpected"
            + (f": {exceptions[:5]}" if exceptions else "")
            + ("" if result.exporter_alive_at_end else f"; exporter exited with {result.exporter_exit}"),
        )
    )
    return out


def _resource_checks(result: RunResult) -> list[Check]:
    if not result.resources:
        return [Check("the exporter's resources bounded", False, "no sample")]
    start, top, end, fd_growth = _growth(result.resources, result.baseline)
    first, last = result.baseline or result.resources[0], result.resources[-1]
    rss_growth = (last.rss_bytes - first.rss_bytes) / MIB
    counted = [s.greenlets for s in result.resources if s.greenlets is not None]
    return [
        Check(
            f"greenlets at most {GREENLET_CAP}",
            bool(counted) and max(counted) <= GREENLET_CAP,
            f"{counted[0]} -> max {max(counted)} -> {counted[-1]}" if counted else "never logged",
        ),
        Check(
            f"OS threads at most {THREAD_CAP} (the call pool's cap)",
            top <= THREAD_CAP,
            f"{start} -> max {top} -> {end}",
        ),
        Check(f"open fds grow by at most {FD_GROWTH_LIMIT}", fd_growth <= FD_GROWTH_LIMIT, f"{fd_growth:+d}"),
        Check(
            f"RSS grows by at most {RSS_GROWTH_LIMIT_MIB:g} MiB",
            rss_growth <= RSS_GROWTH_LIMIT_MIB,
            f"{first.rss_bytes / MIB:.1f} -> {last.rss_bytes / MIB:.1f} MiB ({rss_growth:+.1f})",
        ),
    ]


def _fault_rows(result: RunResult) -> list[str]:
    libvirtd_faults = [r for r in result.records if r.kind in LIBVIRTD_KINDS]
    rows = [
        "| fault | injected | seen in time | detection median / max (s) | bound (s) | recovered |",
        "|---|---|---|---|---|---|",
    ]
    for kind in FAULTS:
        records = [r for r in result.records if r.kind == kind]
        seen = [r.detection_seconds for r in records if r.detection_seconds is not None]
        in_time = sum(
            1
            for r in records
            if r.detection_seconds is not None and r.detection_seconds <= allowed_seconds(r, libvirtd_faults)
        )
        timing = f"{statistics.median(seen):.2f} / {max(seen):.2f}" if seen else "-"
        bound = f"{records[0].bound:g}" if records else "-"
        recovered = sum(1 for r in records if r.recovered_at is not None)
        rows.append(f"| {kind} | {len(records)} | {in_time} | {timing} | {bound} | {recovered} |")
    return rows


def _scrape_rows(result: RunResult) -> list[str]:
    rows = ["| client | scrapes | failed | over 1 s | slowest (s) |", "|---|---|---|---|---|"]
    rows += [
        f"| {s.client} | {s.count} | {s.failed} | {s.slow} | {s.max_seconds:.3f} |" for s in result.scrapes
    ]
    return rows


def _resource_rows(result: RunResult) -> list[str]:
    """Each resource at the baseline, at each quarter of the run after it, and its maximum."""
    rows = [
        "| exporter resource | baseline | 25 % | 50 % | 75 % | end | max |",
        "|---|---|---|---|---|---|---|",
    ]
    if not result.resources:
        return rows
    first = result.baseline or result.resources[0]
    after = [s for s in result.resources if s.at >= first.at]
    quarters = [after[min(len(after) - 1, len(after) * q // 4)] for q in (1, 2, 3)]
    for label, get in (
        ("greenlets", lambda s: float("nan") if s.greenlets is None else float(s.greenlets)),
        ("OS threads", lambda s: float(s.threads)),
        ("open fds", lambda s: float(s.fds)),
        ("RSS (MiB)", lambda s: s.rss_bytes / MIB),
    ):
        known = [x for x in map(get, after) if not math.isnan(x)]  # a greenlet count may be missing
        figures = [get(s) for s in (first, *quarters, after[-1])] + [max(known, default=math.nan)]
        rows.append(f"| {label} | " + " | ".join(f"{x:.1f}" if x % 1 else f"{x:g}" for x in figures) + " |")
    return rows


def summary(result: RunResult, found: list[Check]) -> str:
    lines = [
        f"Chaos run: {result.duration:g} s of faults, seed {result.seed}, "
        f"exporter flags {' '.join(result.exporter_args)}",
        "",
        "| promise | result | detail |",
        "|---|---|---|",
        *(f"| {c.promise} | {'PASS' if c.passed else 'FAIL'} | {c.detail} |" for c in found),
        "",
        *_fault_rows(result),
        "",
        *_scrape_rows(result),
        "",
        *_resource_rows(result),
    ]
    return "\n".join(lines)

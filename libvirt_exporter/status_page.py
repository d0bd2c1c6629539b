"""The landing page `/`: which VMs are stale, which calls are stuck and since when, for an operator
with no Grafana at hand.

It is rendered from the same taken state as the metrics, in a thread, by the first request for it
after each cycle, then kept (exposition.py `LazyPage`): a request for `/` never calls libvirt. Plain
HTML and CSS that reflow on a phone; no script, so that nothing on it runs in the reader's browser.
Every text that comes from libvirt or a tenant (domain, pool and storage names, the URI) is
HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from libvirt_exporter import __version__
from libvirt_exporter.calls import Pool, Storage, Subject
from libvirt_exporter.collector.domain import state_name
from libvirt_exporter.collector.view import SamplerState, State
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers import SamplerName

REFRESH_SECONDS = 15
"""How often the browser asks for the page again: about one sampling round."""


class Verdict(StrEnum):
    """What a domain's row says first, worst first."""

    STUCK = "stuck"
    """A call on it runs past its deadline, or a hang signal holds: nothing fresh comes until it
    is resolved."""
    STALE = "stale"
    """Some of its values are not current, for another reason (an error, libvirtd unreachable)."""
    FRESH = "fresh"


@dataclass(frozen=True)
class Cell:
    """One sampler's values for one subject, as the page shows them."""

    sampler: SamplerName
    age: float | None
    """Seconds since the values served were taken; None when there are none."""
    stale: bool
    in_flight: float
    """Seconds its outstanding call has run; 0 when none."""
    deadline: float

    @property
    def stuck(self) -> bool:
        return self.in_flight > self.deadline


@dataclass(frozen=True)
class DomainRow:
    name: str
    state: str
    signals: tuple[str, ...]
    cells: tuple[Cell, ...]

    @property
    def verdict(self) -> Verdict:
        if self.signals or any(cell.stuck for cell in self.cells):
            return Verdict.STUCK
        if any(cell.stale for cell in self.cells):
            return Verdict.STALE
        return Verdict.FRESH


def _cell(state: State, sampler: SamplerState, subject: Subject) -> Cell:
    sample = state.store.sample(sampler.name, subject)
    return Cell(
        sampler.name,
        None if sample is None else max(0.0, state.taken_at - sample.taken_at),
        state.stale(sampler, sample, state.store.counters_of(sampler.name, subject)),
        state.in_flight.get((sampler.name, subject), 0.0),
        sampler.deadline,
    )


def _domain_row(
    state: State, entry: DomainEntry, samplers: list[tuple[SamplerState, set[Subject]]]
) -> DomainRow:
    subject = entry.subject
    basic = state.store.sample(SamplerName.BASIC, subject)
    return DomainRow(
        entry.name,
        state_name(basic.values) if basic is not None and "state.state" in basic.values else "unknown",
        tuple(sorted(state.hang_signals.get(entry.name, ()))),
        tuple(_cell(state, sampler, subject) for sampler, subjects in samplers if subject in subjects),
    )


def domain_rows(state: State) -> list[DomainRow]:
    """Every exported domain, stuck ones first, then stale ones, each group by name."""
    samplers = [(sampler, set(sampler.subjects)) for sampler in state.samplers]
    rows = [_domain_row(state, entry, samplers) for entry in state.domains]
    order = list(Verdict)
    return sorted(rows, key=lambda row: (order.index(row.verdict), row.name))


def _others(state: State, kind: type[Pool] | type[Storage]) -> list[tuple[str, Cell]]:
    """Storages or pools, each with its sampler's cell."""
    return [
        (subject.name, _cell(state, sampler, subject))
        for sampler in state.samplers
        for subject in sorted(sampler.subjects, key=str)
        if isinstance(subject, kind)
    ]


def duration(seconds: float) -> str:
    """A short human duration: `0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell_html(cell: Cell) -> str:
    age = "no values yet" if cell.age is None else f"{duration(cell.age)} old"
    flags = []
    if cell.stuck:
        flags.append(f'<b class="bad">call stuck for {duration(cell.in_flight)}</b>')
    elif cell.in_flight > 0:
        flags.append(f"call running for {duration(cell.in_flight)}")
    if cell.stale:
        flags.append('<b class="warn">stale</b>')
    status = "stuck" if cell.stuck else "stale" if cell.stale else "fresh"
    detail = "".join(f"<br>{flag}" for flag in flags)
    name = _e(cell.sampler)
    return f'<td data-label="{name}" data-sampler="{name}" class="{status}">{age}{detail}</td>'


def _domain_html(row: DomainRow, samplers: list[SamplerName]) -> str:
    by_sampler = {cell.sampler: cell for cell in row.cells}
    cells = "".join(
        _cell_html(by_sampler[name]) if name in by_sampler else f'<td data-label="{_e(name)}">—</td>'
        for name in samplers
    )
    signals = ", ".join(_e(signal) for signal in row.signals) or "none"
    return (
        f'<tr class="{row.verdict}" data-domain="{_e(row.name)}" data-verdict="{row.verdict}">'
        f'<th scope="row">{_e(row.name)}</th>'
        f'<td data-label="verdict"><span class="badge {row.verdict}">{row.verdict}</span></td>'
        f'<td data-label="state">{_e(row.state)}</td>'
        f'<td data-label="hang signals">{signals}</td>{cells}</tr>'
    )


def _table(caption: str, header: Iterable[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f"<h2>{_e(caption)}</h2><p>{_e(empty)}</p>"
    head = "".join(f'<th scope="col">{_e(name)}</th>' for name in header)
    return f"<h2>{_e(caption)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _stuck_calls(state: State) -> list[tuple[float, str, str]]:
    """Every call past its deadline, longest first: (seconds, what it is about, the samplers whose
    values it was to bring). A call counts in flight for each sampler whose values it brings (the
    bulk sampler's bring the block sampler's), at the same age: one row each."""
    deadlines = {sampler.name: sampler.deadline for sampler in state.samplers}
    calls: dict[tuple[float, str], list[str]] = {}
    for (sampler, subject), seconds in state.in_flight.items():
        if seconds > deadlines.get(sampler, float("inf")):
            calls.setdefault((seconds, str(subject)), []).append(sampler)
    rows = [(seconds, about, ", ".join(samplers)) for (seconds, about), samplers in calls.items()]
    return sorted(rows, key=lambda call: (-call[0], call[1]))


def _summary(state: State, rows: list[DomainRow]) -> str:
    counts = {verdict: sum(1 for row in rows if row.verdict is verdict) for verdict in Verdict}
    connection = (
        '<b class="ok">connected</b>'
        if state.up
        else '<b class="bad">libvirtd does not answer: the values below are the last ones read</b>'
    )
    host = state.host
    described = f"{_e(host.hostname)}, libvirt {_e(host.libvirt_version)}" if host is not None else "unknown"
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.taken_at))
    return (
        f'<p id="connection">libvirtd at <code>{_e(state.uri)}</code> ({described}): {connection}</p>'
        f'<p id="counts"><span class="badge stuck">{counts[Verdict.STUCK]} stuck</span> '
        f'<span class="badge stale">{counts[Verdict.STALE]} stale</span> '
        f'<span class="badge fresh">{counts[Verdict.FRESH]} fresh</span> of {len(rows)} domains; '
        f"threads running libvirt calls: {state.busy_threads} busy, {state.stuck_threads} stuck.</p>"
        f'<p class="small">As of {taken}, the end of the latest sampling cycle; this page reloads '
        f"every {REFRESH_SECONDS} s.</p>"
    )


def _storages_html(state: State) -> str:
    rows = []
    for name, cell in _others(state, Storage):
        unresponsive = name in state.unresponsive_storages
        verdict = Verdict.STUCK if unresponsive else Verdict.FRESH
        label = "unresponsive" if unresponsive else "answering"
        rows.append(
            f'<tr class="{verdict}" data-storage="{_e(name)}"><th scope="row">{_e(name)}</th>'
            f'<td data-label="probe"><span class="badge {verdict}">{label}</span></td>'
            f'<td data-label="domains">{state.storages.get(name, 0)}</td>{_cell_html(cell)}</tr>'
        )
    header = ("storage", "probe", "domains", "last probe")
    return _table("Storages", header, rows, "No running domain has a disk on a local mount point.")


def _pools_html(state: State) -> str:
    rows = [
        f'<tr data-pool="{_e(name)}"><th scope="row">{_e(name)}</th>{_cell_html(cell)}</tr>'
        for name, cell in _others(state, Pool)
    ]
    return _table("Storage pools", ("pool", "values"), rows, "No storage pool is sampled.")


STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:0.5rem;max-width:80rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:0.3rem 0.5rem;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
.small{font-size:0.85rem;color:#555}
.badge{display:inline-block;padding:0.05rem 0.45rem;border-radius:0.6rem;font-weight:600}
.badge.stuck{background:#c62828;color:#fff}.badge.stale{background:#f9a825;color:#000}
.badge.fresh{background:#2e7d32;color:#fff}
tr.stuck{background:#fdecea}tr.stale{background:#fff8e1}
td.stuck,.bad{color:#b71c1c}td.stale,.warn{color:#8a6d00}.ok{color:#2e7d32}
code{word-break:break-all}
@media (max-width:40rem){
 thead{display:none}
 table,tbody,tr,th,td{display:block;width:auto}
 tr{border:1px solid #ccc;border-radius:0.4rem;margin:0 0 0.6rem;padding:0.2rem}
 th[scope=row]{font-size:1.05rem;border:0;word-break:break-all}
 td{border:0;padding:0.15rem 0.5rem}
 td::before{content:attr(data-label) ": ";font-weight:600}
}
"""


def _stuck_calls_html(state: State) -> str:
    rows = (
        f'<tr><th scope="row">{_e(about)}</th><td data-label="sampler">{_e(samplers)}</td>'
        f'<td data-label="stuck for">{duration(seconds)}</td></tr>'
        for seconds, about, samplers in _stuck_calls(state)
    )
    return _table("Stuck calls", ("about", "sampler", "stuck for"), rows, "No call runs past its deadline.")


def _domains_html(rows: list[DomainRow]) -> str:
    """One column per sampler that has values of some domain, in the samplers' order."""
    samplers = list(dict.fromkeys(cell.sampler for row in rows for cell in row.cells))
    order = list(SamplerName)
    samplers.sort(key=order.index)
    header = ("domain", "verdict", "state", "hang signals", *(f"{name} values" for name in samplers))
    body = (_domain_html(row, samplers) for row in rows)
    legend = "; ".join(
        f"<b>{name}</b>: {SAMPLER_VALUES[name]}" for name in samplers if name in SAMPLER_VALUES
    )
    return _table("Domains", header, body, "No domain is exported.") + f'<p class="small">{legend}.</p>'


SAMPLER_VALUES = {
    SamplerName.BASIC: "state, CPU time, network counters (read without QEMU)",
    SamplerName.BULK: "memory, vCPUs and what else QEMU's monitor reports",
    SamplerName.BLOCK: "disks' I/O counters and sizes",
    SamplerName.JOB: "a migration's or backup's progress",
}
"""What each sampler's column holds, said under the table."""


def render(state: State, telemetry_path: str) -> bytes:
    """The whole page for `state`, as UTF-8."""
    rows = domain_rows(state)
    footer = f'libvirt-exporter {_e(__version__)} · <a href="{_e(telemetry_path)}">metrics</a>'
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>libvirt exporter status</title><style>{STYLE}</style></head><body>"
        f"<h1>libvirt exporter status</h1>{_summary(state, rows)}{_domains_html(rows)}"
        f"{_stuck_calls_html(state)}{_storages_html(state)}{_pools_html(state)}"
        f'<p class="small">{footer}</p></body></html>\n'
    )
    return page.encode()

"""End to end: a real Prometheus scrapes the exporter serving a real libvirtd with real VMs.

Every query of every dashboard panel is evaluated through Prometheus' HTTP API and must return
data. The panels that show only trouble are evaluated in the trouble they show: stuck calls,
stale values, timeouts and skips with a VM frozen; call errors and sampler errors while libvirtd
restarts under a stuck call; the figures that only a guest's balloon driver and guest agent report
on the VM that boots a real kernel (the guest sampler on, as fast as the others). With the VM
frozen, the stuck-call alert (its `for` shortened in a test copy of the rules) fires for that VM
and no other.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.prometheus import (
    Prometheus,
    alert_expr,
    query_until,
    rules_with_short_for,
    start_prometheus,
)
from tests.integration.test_guest_agent import GUEST_SAMPLING
from tests.integration.vms import FAST_SAMPLING as ARGS
from tests.integration.vms import Exporter, LibvirtdControl, TinyVM, VMFactory
from tests.unit.dashboards import load_dashboards, markers, panels, substitute

SHORT_FOR_SECONDS = 6
STUCK = "LibvirtBlockInfoCallStuck"


@pytest.fixture(scope="module")
def two_vms(make_tiny_vms: VMFactory) -> list[TinyVM]:
    return make_tiny_vms(2)


@pytest.fixture
def scraped(
    two_vms: list[TinyVM], guest_vm: str, run_exporter: Callable[..., Exporter], tmp_path: Path
) -> Iterator[tuple[Prometheus, Path]]:
    exporter = run_exporter(*ARGS, *GUEST_SAMPLING)
    rules = rules_with_short_for(tmp_path / "alerts.yml", SHORT_FOR_SECONDS)
    prometheus = start_prometheus(tmp_path, f"127.0.0.1:{exporter.port}", [rules])
    yield prometheus, rules
    prometheus.stop()
    print("--- prometheus log ---\n" + prometheus.log_path.read_text(errors="replace"))


SHOWN_WHILE_LIBVIRTD_RESTARTS = {"Sampler errors"}
SHOWN_BY_OTHER_FAULTS = {
    "Calls in flight",
    "Call timeouts",
    "Call errors",
    "Storage pool calls in flight",
    "Unresponsive storage",
}
"""Trouble a stopped QEMU does not bring: it gets no call, so none is in flight, times out or fails
when libvirtd is killed (a VM hung with nothing to show it does); a storage pool or a storage that
does not answer. The unit tests (test_hang_signals.py, test_sampling.py) and the outage and chaos
runs cover those families."""


def _queries(kind: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of the panels of one kind: `healthy` (data on a healthy
    host), `fault` (only in trouble) or `guest` (figures only a guest OS reports)."""

    def kind_of(panel: dict[str, Any]) -> str:
        marker = markers(panel)
        return (
            "guest"
            if marker.get("guest_reported")
            else "fault"
            if marker.get("empty_when_healthy")
            else "healthy"
        )

    return [
        (name, panel.get("title", ""), target["expr"])
        for name, dashboard in sorted(load_dashboards().items())
        for panel in panels(dashboard)
        if kind_of(panel) == kind
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _assert_shows_data(
    prometheus: Prometheus, queries: list[tuple[str, str, str]], domain: str, when: str
) -> None:
    for dashboard, title, expr in queries:
        query = substitute(expr, domain)
        result = query_until(prometheus, query, bool, 45)
        assert result, f"{dashboard}: panel {title!r} shows no data {when}: {query}"


def test_every_panel_shows_data_and_the_stuck_call_alert_names_the_frozen_vm(
    scraped: tuple[Prometheus, Path], two_vms: list[TinyVM], guest_vm: str, libvirtd_control: LibvirtdControl
) -> None:
    prometheus, rules = scraped
    healthy, frozen = two_vms
    # Rates need two scrapes inside their window: wait until one has a value for every VM.
    query_until(prometheus, "rate(libvirt_domain_cpu_time_seconds_total[1m])", lambda r: len(r) == 3, 60)
    _assert_shows_data(prometheus, _queries("healthy"), healthy.name, "on a healthy host")
    _assert_shows_data(prometheus, _queries("guest"), guest_vm, "for a VM with a guest kernel")

    frozen.freeze()
    stuck = alert_expr(rules, STUCK)
    result = query_until(prometheus, stuck, bool, 60)
    assert {series["metric"]["domain"] for series in result} == {frozen.name}
    firing = f'ALERTS{{alertname="{STUCK}", alertstate="firing"}}'
    result = query_until(prometheus, firing, bool, 60)
    assert {series["metric"]["domain"] for series in result} == {frozen.name}

    faults = _queries("fault")
    assert {title for _, title, _ in faults} >= SHOWN_BY_OTHER_FAULTS
    in_freeze = [q for q in faults if q[1] not in SHOWN_WHILE_LIBVIRTD_RESTARTS | SHOWN_BY_OTHER_FAULTS]
    _assert_shows_data(prometheus, in_freeze, frozen.name, "with a VM frozen")

    # Killed, libvirtd makes cycles fail until it is back: it stays away until Prometheus has seen
    # a cycle fail, however fast the restart.
    # (SIGTERM would hang: libvirtd cannot shut down with a worker in a frozen monitor.)
    cycle_failed = "increase(libvirt_sampler_errors_total[1m]) > 0"
    libvirtd_control.restart(
        signal.SIGKILL, while_down=lambda: query_until(prometheus, cycle_failed, bool, 60)
    )
    in_restart = [q for q in faults if q[1] in SHOWN_WHILE_LIBVIRTD_RESTARTS]
    assert {title for _, title, _ in in_restart} == SHOWN_WHILE_LIBVIRTD_RESTARTS
    _assert_shows_data(prometheus, in_restart, frozen.name, "while libvirtd restarted")

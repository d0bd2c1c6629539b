"""End to end: a real Prometheus scrapes the exporter serving a real libvirtd with real VMs.

Every query of every dashboard panel is evaluated through Prometheus' HTTP API and must return
data; the panels that can only show something in a fault (stuck calls, stale values, timeouts)
are evaluated with a VM frozen. With that VM frozen, the stuck-call alert (its `for` shortened in
a test copy of the rules) fires for that VM and no other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.prometheus import (
    Prometheus,
    alert_expr,
    query_until,
    rules_with_short_for,
    start_prometheus,
)
from tests.integration.vms import Exporter, TinyVM, VMFactory
from tests.unit.dashboards import load_dashboards, panel_queries, substitute

ARGS = tuple(
    f"--sampler.{name}.{setting}={seconds}s"
    for name in ("bulk", "block")
    for setting, seconds in (("interval", 2), ("deadline", 1))
)
SHORT_FOR_SECONDS = 6
STUCK = "LibvirtBlockInfoCallStuck"


@pytest.fixture(scope="module")
def two_vms(make_tiny_vms: VMFactory) -> list[TinyVM]:
    return make_tiny_vms(2)


@pytest.fixture
def scraped(
    two_vms: list[TinyVM], run_exporter: Callable[..., Exporter], tmp_path: Path
) -> Iterator[tuple[Prometheus, Path]]:
    exporter = run_exporter(*ARGS)
    rules = rules_with_short_for(tmp_path / "alerts.yml", SHORT_FOR_SECONDS)
    prometheus = start_prometheus(tmp_path, f"127.0.0.1:{exporter.port}", [rules])
    yield prometheus, rules
    prometheus.stop()
    print("--- prometheus log ---\n" + prometheus.log_path.read_text(errors="replace"))


def _queries(empty_when_healthy: bool) -> list[tuple[str, str, str]]:
    return [
        (name, title, expr)
        for name, dashboard in sorted(load_dashboards().items())
        for title, expr, empty in panel_queries(dashboard)
        if empty is empty_when_healthy
    ]


def test_every_panel_shows_data_and_the_stuck_call_alert_names_the_frozen_vm(
    scraped: tuple[Prometheus, Path], two_vms: list[TinyVM]
) -> None:
    prometheus, rules = scraped
    healthy, frozen = two_vms
    # Rates need two scrapes inside their window: wait until one has a value for every VM.
    query_until(prometheus, "rate(libvirt_domain_cpu_time_seconds_total[1m])", lambda r: len(r) == 2, 60)

    for dashboard, title, expr in _queries(empty_when_healthy=False):
        query = substitute(expr, healthy.name)
        result = query_until(prometheus, query, bool, 30)
        assert result, f"{dashboard}: panel {title!r} shows no data: {query}"

    frozen.freeze()
    stuck = alert_expr(rules, STUCK)
    result = query_until(prometheus, stuck, bool, 60)
    assert {series["metric"]["domain"] for series in result} == {frozen.name}
    firing = f'ALERTS{{alertname="{STUCK}", alertstate="firing"}}'
    result = query_until(prometheus, firing, bool, 60)
    assert {series["metric"]["domain"] for series in result} == {frozen.name}

    for dashboard, title, expr in _queries(empty_when_healthy=True):
        query = substitute(expr, frozen.name)
        result = query_until(prometheus, query, bool, 30)
        assert result, f"{dashboard}: panel {title!r} shows nothing with a VM frozen: {query}"

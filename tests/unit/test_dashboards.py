"""The Grafana dashboards in dashboards/: well formed, on the `datasource` variable, filtered by job and
instance, with rates over $__rate_interval, and only on families the exporter serves."""

from __future__ import annotations

import re

import pytest

from libvirt_exporter.collector import SPECS
from tests.unit.dashboards import (
    DASHBOARD_DIR,
    RATE_INTERVAL,
    load_dashboards,
    markers,
    metric_names,
    panel_queries,
    panels,
    range_function_calls,
    ranges,
    selectors,
    substitute,
    variables_used,
    walk,
)

UIDS = {
    "libvirt-hosts.json": "libvirt-hosts",
    "libvirt-domain.json": "libvirt-domain",
    "libvirt-exporter-health.json": "libvirt-exporter-health",
}
PER_DOMAIN = {"libvirt-domain.json"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
KNOWN_METRICS = {spec.exposed_name for spec in SPECS} | {"up"}
LABELS_OF = {spec.exposed_name: set(spec.labels) for spec in SPECS} | {"up": set()}
VARIABLES = {"job", "instance", "domain", "__rate_interval", "__interval", "__range"}
UNITS = {"s", "bytes", "Bps", "percentunit", "iops", "short"}
JOB = ("job", "=~", '"$job"')
INSTANCE = ("instance", "=~", '"$instance"')
DOMAIN = ("domain", "=~", '"$domain"')

DASHBOARDS = load_dashboards()


each_dashboard = pytest.mark.parametrize("name", sorted(UIDS))


def queries(name: str) -> list[tuple[str, str, bool]]:
    return panel_queries(DASHBOARDS[name])


def test_the_three_dashboards_are_there() -> None:
    assert set(UIDS) <= set(DASHBOARDS), f"missing in {DASHBOARD_DIR}"


@each_dashboard
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["uid"] == UIDS[name]
    assert dashboard["title"]
    assert dashboard["description"]
    assert dashboard["tags"] == ["libvirt"]
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "a fixed id breaks provisioning and import"
    assert "__inputs" not in dashboard, "the datasource variable, not import inputs, picks the datasource"
    assert panels(dashboard)


@each_dashboard
def test_templating_has_datasource_job_and_instance(name: str) -> None:
    variables = {var["name"]: var for var in DASHBOARDS[name]["templating"]["list"]}
    expected = {"datasource", "job", "instance"} | ({"domain"} if name in PER_DOMAIN else set())
    assert set(variables) == expected

    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")

    queries = {
        "job": "label_values(libvirt_up, job)",
        "instance": 'label_values(libvirt_up{job=~"$job"}, instance)',
        "domain": 'label_values(libvirt_domain_info{job=~"$job", instance=~"$instance"}, domain)',
    }
    for var_name in expected - {"datasource"}:
        var = variables[var_name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["definition"] == queries[var_name]
        assert var["query"]["query"] == queries[var_name]
        if var_name == "domain":
            assert (var["multi"], var["includeAll"]) == (False, False)
        else:
            assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*")


@each_dashboard
def test_every_datasource_is_the_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    found = [value for key, value in walk(dashboard) if key == "datasource"]
    assert found, "no datasource at all"
    assert all(value == DATASOURCE for value in found), [v for v in found if v != DATASOURCE]
    for panel in panels(dashboard):
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, panel["title"]


@each_dashboard
def test_panels_have_ids_positions_titles_descriptions_and_units(name: str) -> None:
    dashboard = DASHBOARDS[name]
    everything = [p for key, p in walk(dashboard) if key == "panels" and isinstance(p, dict)]
    ids = [panel["id"] for panel in everything]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in everything:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles must be unique within a dashboard"
    for panel in panels(dashboard):
        assert panel["title"] and panel["description"], panel.get("title")
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@each_dashboard
def test_rates_are_over_the_rate_interval(name: str) -> None:
    for title, expr, _ in queries(name):
        for function, argument in range_function_calls(expr):
            assert ranges(argument) == [RATE_INTERVAL], f"{title}: {function}({argument})"
        assert set(ranges(expr)) <= {RATE_INTERVAL}, f"{title}: a range other than $__rate_interval"


@each_dashboard
def test_queries_use_only_known_variables(name: str) -> None:
    for title, expr, _ in queries(name):
        assert variables_used(expr) <= VARIABLES, f"{title}: {expr}"
        assert "$__all" not in expr


@each_dashboard
def test_every_selector_filters_job_and_instance(name: str) -> None:
    for title, expr, _ in queries(name):
        found = selectors(expr)
        assert found, f"{title}: no selector in {expr}"
        for metric, matchers in found:
            assert JOB in matchers and INSTANCE in matchers, f"{title}: {metric} in {expr}"


def test_the_vm_dashboard_filters_every_per_domain_family_on_the_domain() -> None:
    for name in PER_DOMAIN:
        for title, expr, _ in queries(name):
            for metric, matchers in selectors(expr):
                assert "domain" in LABELS_OF[metric], f"{title}: {metric} is not per domain"
                assert DOMAIN in matchers, f"{title}: {metric} in {expr}"


@each_dashboard
def test_every_metric_is_one_the_exporter_serves(name: str) -> None:
    for title, expr, _ in queries(name):
        unknown = metric_names(expr) - KNOWN_METRICS
        assert not unknown, f"{title}: {sorted(unknown)}"


@each_dashboard
def test_queries_substitute_to_plain_promql(name: str) -> None:
    for title, expr, _ in queries(name):
        substituted = substitute(expr, "web-01")
        assert "$" not in substituted, f"{title}: {substituted}"


def test_stuck_calls_panel_shows_what_the_stuck_call_alert_fires_on_and_is_empty_when_healthy() -> None:
    """Outstanding calls of any sampler on a VM whose block values are stale: the block sampler
    sends no call to a VM whose monitor another sampler's call is stuck on, nor to a stopped QEMU
    (LibvirtBlockInfoCallStuck)."""
    health = DASHBOARDS["libvirt-exporter-health.json"]
    [stuck] = [panel for panel in panels(health) if panel["title"] == "Stuck calls"]
    [expr] = [target["expr"] for target in stuck["targets"]]
    by_metric = dict(selectors(expr))
    in_flight, signal, stale = (
        "libvirt_domain_call_in_flight_seconds",
        "libvirt_domain_hang_signal",
        "libvirt_domain_sample_stale",
    )
    assert set(by_metric) == {in_flight, signal, stale}
    assert ("signal", "=", '"qemu_stopped"') in by_metric[signal]
    assert ("sampler", "=", '"block"') in by_metric["libvirt_domain_sample_stale"]
    assert not any(name == "sampler" for name, _, _ in by_metric["libvirt_domain_call_in_flight_seconds"])
    assert re.search(r"\)\s*>\s*0\s+or\s", expr) and re.search(
        r"==\s*1\)\s+and\s+on\s*\(instance, domain\)", expr
    ), expr
    assert re.search(r"==\s*1$", expr), expr
    assert markers(stuck) == {"empty_when_healthy": True}
    assert ("Stuck calls", expr, True) in panel_queries(health)


@each_dashboard
def test_panels_filtered_to_trouble_are_marked(name: str) -> None:
    """A query that keeps only series `> 0` or `== 1` shows trouble only: its panel says so."""
    for panel in panels(DASHBOARDS[name]):
        filtered = any(re.search(r"(>\s*0|==\s*1)\s*$", t["expr"]) for t in panel["targets"])
        assert filtered == bool(markers(panel).get("empty_when_healthy")), panel["title"]


# --- the helpers themselves ---------------------------------------------------------


def test_panels_flattens_rows() -> None:
    dashboard = {
        "panels": [
            {"type": "row", "title": "open", "panels": []},
            {"type": "stat", "title": "a"},
            {"type": "row", "title": "collapsed", "panels": [{"type": "timeseries", "title": "b"}]},
        ]
    }
    assert [panel["title"] for panel in panels(dashboard)] == ["a", "b"]


def test_panel_queries_carry_the_marker() -> None:
    dashboard = {
        "panels": [
            {"title": "ok", "targets": [{"expr": "libvirt_up"}]},
            {"title": "bad", "libvirt_exporter": {"empty_when_healthy": True}, "targets": [{"expr": "up"}]},
        ]
    }
    assert panel_queries(dashboard) == [("ok", "libvirt_up", False), ("bad", "up", True)]


def test_substitute() -> None:
    expr = (
        'rate(x{job=~"$job", instance=~"${instance}", domain=~"$domain"}[$__rate_interval])'
        " + y offset $__interval + z offset $__range"
    )
    assert substitute(expr, "web.01") == (
        'rate(x{job=~".*", instance=~".*", domain=~"web\\\\.01"}[1m]) + y offset 15s + z offset 5m'
    )
    assert substitute('d{domain=~"$domain"}', "lvexp-test-1") == 'd{domain=~"lvexp-test-1"}'
    with pytest.raises(ValueError, match="__interval_ms"):
        substitute("x[$__interval_ms]", "d")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('libvirt_up{job=~"$job"} == 0', {"libvirt_up"}),
        (
            'sum by (instance, domain) (rate(libvirt_domain_cpu_time_seconds_total{sampler="a"}[1m]))',
            {"libvirt_domain_cpu_time_seconds_total"},
        ),
        (
            "time() - libvirt_domain_sample_timestamp_seconds offset 5m",
            {"libvirt_domain_sample_timestamp_seconds"},
        ),
        (
            "topk(10, a_b{x='y'} * on (domain) group_left (uuid) libvirt_domain_info) > bool 1e-9",
            {"a_b", "libvirt_domain_info"},
        ),
        ('label_replace(foo{}, "dst", "libvirt_x", "src", "(.*)") unless bar', {"foo"}),
        ("sum(libvirt_domains) without (state) and ignoring (job) up", {"libvirt_domains", "up"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selectors_read_the_matchers() -> None:
    expr = 'x{job=~"$job", sampler!="a,b}"} / y'
    assert selectors(expr) == [("x", [("job", "=~", '"$job"'), ("sampler", "!=", '"a,b}"')])]

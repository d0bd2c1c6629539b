"""The alerting rules: valid for Prometheus, and each alert fires exactly when its unit test says.
The compatibility recording rules (compat-*.yml): valid, each one's output checked by its unit test,
computed from our families only, and named as the other exporter's series, never as one of ours."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_exporter.collector import SPECS
from tools import migration

RULES = Path(__file__).parents[2] / "dashboards" / "alerts.yml"
RULE_TESTS = RULES.parent / "tests" / "alerts_test.yml"
COMPAT_RULES = {"debian": RULES.parent / "compat-debian.yml", "inovex": RULES.parent / "compat-inovex.yml"}
COMPAT_MIGRATION_TABLES = {"debian": migration.DEBIAN, "inovex": migration.INOVEX}
SERVED = {spec.exposed_name for spec in SPECS}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_annotations_naming_host_and_vm() -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    for rule in alerts():
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and {"summary", "description"} <= annotations.keys()
        assert "$labels.instance" in annotations["summary"]
        if "domain" in str(rule["expr"]) or "libvirt_domain_" in str(rule["expr"]):
            assert "$labels.domain" in annotations["summary"], rule["alert"]


def test_the_rules_use_only_metrics_the_exporter_serves() -> None:
    served = {spec.exposed_name for spec in SPECS} | {"up"}
    for rule in alerts():
        used = set(re.findall(r"\b(libvirt_\w+|up)\b(?=[{[\s)]|$)", str(rule["expr"])))
        assert used <= served, f"{rule['alert']} uses {used - served}"


# --- compatibility recording rules ------------------------------------------------------------


def compat_groups(exporter: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(COMPAT_RULES[exporter].read_text())["groups"]
    return groups


def compat_rules(exporter: str) -> list[dict[str, Any]]:
    return [rule for group in compat_groups(exporter) for rule in group["rules"]]


def compat_rule_test(exporter: str) -> Path:
    return RULES.parent / "tests" / f"{COMPAT_RULES[exporter].stem}_test.yml"


def test_every_compatibility_rule_file_is_known_here() -> None:
    assert set(RULES.parent.glob("compat-*.yml")) == set(COMPAT_RULES.values())


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_promtool_accepts_the_compatibility_rules(exporter: str) -> None:
    result = promtool("check", "rules", str(COMPAT_RULES[exporter]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_every_compatibility_rule_passes_its_promtool_unit_tests(exporter: str) -> None:
    result = promtool("test", "rules", str(compat_rule_test(exporter)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_every_compatibility_rule_has_an_expected_output_in_its_unit_test(exporter: str) -> None:
    tests = yaml.safe_load(compat_rule_test(exporter).read_text())["tests"]
    expected = {
        sample["labels"].split("{")[0]
        for test in tests
        for check in test["promql_expr_test"]
        for sample in check["exp_samples"]
    }
    missing = {rule["record"] for rule in compat_rules(exporter)} - expected
    assert not missing, f"no expected sample of {sorted(missing)} in {compat_rule_test(exporter).name}"


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_compatibility_rules_read_our_families_and_record_none_of_ours(exporter: str) -> None:
    for rule in compat_rules(exporter):
        used = set(re.findall(r"\blibvirt_\w+", rule["expr"]))
        assert used <= SERVED, f"{rule['record']} reads {used - SERVED}, which we do not serve"
        # A rule named as one of our families would record a second series beside ours.
        assert rule["record"] not in SERVED, f"{rule['record']} is the name of one of our families"


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_each_compatibility_file_is_one_group_at_the_global_interval(exporter: str) -> None:
    groups = compat_groups(exporter)
    assert len(groups) == 1
    assert "interval" not in groups[0]


@pytest.mark.parametrize("exporter", sorted(COMPAT_RULES))
def test_compatibility_rules_record_every_renamed_family_of_the_migration_table(exporter: str) -> None:
    """Each family of docs/metrics.md's migration table whose name is not ours and that we can
    compute is recorded (names of releases older than the ones the rules target excepted)."""
    recorded = {rule["record"] for rule in compat_rules(exporter)}
    renamed = {
        rename.theirs
        for rename in COMPAT_MIGRATION_TABLES[exporter]
        if rename.ours is not None and rename.theirs not in SERVED and "older releases" not in rename.note
    }
    assert renamed <= recorded, f"not recorded: {sorted(renamed - recorded)}"

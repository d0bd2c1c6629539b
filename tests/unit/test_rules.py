"""The alerting rules: valid for Prometheus, and each alert fires exactly when its unit test says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from libvirt_exporter.collector import SPECS

RULES = Path(__file__).parents[2] / "dashboards" / "alerts.yml"
RULE_TESTS = RULES.parent / "tests" / "alerts_test.yml"


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

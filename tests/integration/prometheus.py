"""A real Prometheus server (Debian's package) on loopback, for end-to-end tests of the
dashboards' queries and the alerting rules against the exporter."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.vms import find_free_port, wait_for

RULES = Path(__file__).parents[2] / "dashboards" / "alerts.yml"


def rules_with_short_for(destination: Path, seconds: int) -> Path:
    """A copy of the alerting rules whose `for` durations are `seconds` long, for a test that
    cannot wait five minutes."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{seconds}s"
    destination.write_text(yaml.safe_dump(rules))
    return destination


def alert_expr(rules_file: Path, alertname: str) -> str:
    rules = yaml.safe_load(rules_file.read_text())
    return next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == alertname)


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query; raises on a query Prometheus rejects."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_prometheus(
    workdir: Path, target: str, rule_files: list[Path], interval_seconds: int = 2
) -> Prometheus:
    """Prometheus scraping `target` as job `libvirt` every `interval_seconds`, with `rule_files`."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    config = {
        "global": {"scrape_interval": f"{interval_seconds}s", "evaluation_interval": f"{interval_seconds}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "libvirt", "static_configs": [{"targets": [target]}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = find_free_port()
    log_path = workdir / "prometheus.log"
    process = subprocess.Popen(
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Prometheus(process, port, log_path)
    wait_for(lambda: server.ready() or process.poll() is not None, 60, "Prometheus to be ready")
    assert process.poll() is None, log_path.read_text()
    return server


def query_until(prometheus: Prometheus, expr: str, condition: Any, timeout: float) -> list[dict[str, Any]]:
    """Query every 0.5 s until `condition(result)` holds; the result that met it."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(expr)
        if condition(result):
            return result
        assert time.monotonic() < deadline, f"not met within {timeout} s: {expr} gave {result}"
        time.sleep(0.5)

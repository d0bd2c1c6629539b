"""The short chaos run that `make test` includes: every kind of fault at least once, on a private
libvirtd, with every promise of docs/reliability.md checked. The harness prints its summary tables
whether it passes or not; a broken promise fails this test with the harness' own detail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DURATION_S = 90
RUN_TIMEOUT_S = DURATION_S + 300  # warm-up, settling and teardown included


def test_every_promise_holds_under_every_kind_of_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result_path = tmp_path / "result.json"
    command = [sys.executable, "-m", "tests.chaos", f"--duration={DURATION_S}", "--every-kind"]
    run = subprocess.run(
        [*command, f"--workdir={tmp_path / 'run'}", f"--result={result_path}"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result_path.exists(), f"the harness failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    result = json.loads(result_path.read_text())
    with capsys.disabled():
        print(f"\n{result['summary']}")
    broken = [f"{c['promise']}: {c['detail']}" for c in result["checks"] if not c["passed"]]
    assert not broken, "promises broken under chaos:\n" + "\n".join(broken)

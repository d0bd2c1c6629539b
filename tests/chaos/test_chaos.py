"""The short chaos run that `make test` includes: every kind of fault at least once, on a private
libvirtd, with every promise of docs/reliability.md checked. The harness prints its summary tables
whether it passes or not; a broken promise fails this test with the harness' own detail.

The run starts with the session, beside the unit tests (tests/conftest.py); this test waits for it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

DURATION_S = 90
RUN_TIMEOUT_S = DURATION_S + 300  # warm-up, settling and teardown included
STOP_TIMEOUT_S = 60
"""How long an interrupted run gets to thaw and destroy its VMs and stop its libvirtd."""


@dataclass
class ChaosRun:
    """The harness in a process of its own, and where it writes its result."""

    KEY: ClassVar[pytest.StashKey[ChaosRun]] = pytest.StashKey()
    process: subprocess.Popen[str]
    workdir: Path

    @classmethod
    def start(cls) -> ChaosRun:
        workdir = Path(tempfile.mkdtemp(prefix="lvexp-chaos-test-"))
        command = [sys.executable, "-m", "tests.chaos", f"--duration={DURATION_S}", "--every-kind"]
        command += [f"--workdir={workdir / 'run'}", f"--result={workdir / 'result.json'}"]
        with (workdir / "harness.log").open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        return cls(process, workdir)

    def result(self) -> dict[str, Any]:
        """The harness' result, once it has ended; its log when it wrote none."""
        code = self.process.wait(timeout=RUN_TIMEOUT_S)
        path = self.workdir / "result.json"
        log = (self.workdir / "harness.log").read_text()
        assert path.exists(), f"the harness failed (exit {code}):\n{log}"
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def stop(self) -> None:
        """At the session's end: a run the session no longer waits for is interrupted, as Ctrl-C
        would (the harness then cleans up), and its work directory removed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def test_every_promise_holds_under_every_kind_of_fault(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    result = request.config.stash[ChaosRun.KEY].result()
    with capsys.disabled():
        print(f"\n{result['summary']}")
    broken = [f"{c['promise']}: {c['detail']}" for c in result["checks"] if not c["passed"]]
    assert not broken, "promises broken under chaos:\n" + "\n".join(broken)

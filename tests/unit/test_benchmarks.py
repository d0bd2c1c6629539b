"""The benchmark scripts still run: the simulated one at a tiny size prints its table (no timing is
asserted; figures belong in docs/benchmarks.md). The real-libvirt one runs in the integration suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
TINY = ["--sizes=4", "--hung-every=2", "--scrapes=10", "--cycles=1", "--scrape-cycles=1", "--interval=1s"]


def test_the_simulated_benchmark_prints_one_row_per_size_healthy_and_hung() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.simulated", *TINY, "--deadline=0.2s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    header, rule, *rows = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert header.startswith("| domains | hung | series |") and rule.startswith("|---:|")
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [(row[0], row[1]) for row in cells] == [("4", "0"), ("4", "2")]
    healthy, hung = cells
    assert int(healthy[2]) > int(hung[2]) > 0  # the hung domains' values are missing, the rest served
    # Healthy domains are fresh in basic, bulk and block; hung ones in basic only: 8 of 12 pairs.
    assert healthy[-1] == "100%" and hung[-1] == "67%"

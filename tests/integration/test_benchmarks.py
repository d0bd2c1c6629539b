"""The real-libvirt comparison still runs: at a tiny size it prints its ratios table (no figure is
asserted but one: with a VM frozen, every scrape of ours was answered). It measures the local
system libvirtd (its CPU is read from /proc), so it runs against qemu:///system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
TINY = [
    "--vms=2",
    "--interval=1",
    "--cycles=1",
    "--scrapes=10",
    "--debian-scrapes=3",
    "--frozen-debian-scrapes=1",
    "--idle-seconds=1",
]


def test_the_real_libvirt_comparison_prints_its_table(libvirt_uri: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.real_libvirt", *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and any(line.startswith("libvirt ") for line in lines)
    rows = {
        cells[0]: cells[1:]
        for line in lines
        if line.startswith("| ") and not line.startswith("| 2 VMs")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert {"scrape p50", "scrape p99", "exporter CPU per scrape interval", "peak RSS"} <= rows.keys()
    assert rows["1 VM frozen: scrapes answered"][0] == "10/10"
    assert rows["1 VM frozen: other VMs with fresh values"][0] == "1/1"

"""The benchmark scripts still run: the simulated one at a tiny size prints its table (no timing is
asserted; figures belong in docs/benchmarks.md), and what it says of fresh values and stuck threads
holds. The real-libvirt one runs in the integration suite."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

from benchmarks.scrape_timeline import place
from benchmarks.simulated import read_health, reference_server
from benchmarks.simulated_host import FROZEN, OUTAGE, STOPPED, hangs, name_of

ROOT = Path(__file__).parents[2]
MAX_STUCK_CALLS = 12
"""--sampler.max-stuck-calls' default."""
TINY = [
    "--sizes=30",
    "--scenarios=healthy,frozen,half-hung,half-hung-late",
    "--late-sizes=30",
    "--hung-every=2",
    "--frozen=1",
    "--scrapes=10",
    "--cycles=1",
    "--scrape-cycles=1",
    "--interval=1s",
    "--deadline=0.2s",
]


def test_half_hung_has_more_hung_domains_than_stuck_calls_allowed_and_every_kind() -> None:
    hung = hangs(500, half_hung=True, frozen=5)
    assert len(hung) == 250 > MAX_STUCK_CALLS
    assert [sum(1 for kind in hung.values() if kind == k) for k in (OUTAGE, STOPPED, FROZEN)] == [200, 45, 5]
    assert not {name_of(index) for index in range(0, 500, 2)} & hung.keys()  # every second domain


def test_health_is_read_from_the_exporters_own_metrics() -> None:
    exposition = b"\n".join(
        [
            b'libvirt_domain_sample_stale{domain="vm-0000",sampler="basic"} 0.0',
            b'libvirt_domain_sample_stale{domain="vm-0000",sampler="bulk"} 0',
            b'libvirt_domain_sample_stale{domain="vm-0001",sampler="basic"} 0',
            b'libvirt_domain_sample_stale{domain="vm-0001",sampler="bulk"} 0',
            b'libvirt_domain_sample_stale{domain="vm-0001",sampler="block"} 1',
            b'libvirt_domain_sample_stale{domain="vm-0002",sampler="basic"} 1',
            b'libvirt_sampler_threads{state="busy"} 3',
            b'libvirt_sampler_threads{state="stuck"} 2',
            b'libvirt_storage_call_in_flight_seconds{sampler="storage",storage="/srv/nfs"} 4.5',
            b'libvirt_storage_call_in_flight_seconds{sampler="storage",storage="/var/lib/images"} 0.001',
        ]
    )
    health = read_health(
        exposition, ["vm-0000", "vm-0001", "vm-0002"], {"vm-0001": OUTAGE, "vm-0002": FROZEN}, 1.0
    )
    assert health.fresh == 4 / 6
    assert health.healthy_fresh == 1.0
    assert health.hung_basic_fresh == 0.5
    assert health.outage_bulk_fresh == 1.0
    assert (health.stuck_threads, health.stuck_probes) == (2, 1)


def test_the_simulated_benchmark_prints_one_row_per_size_and_scenario() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.simulated", *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    header, rule, *rows = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert header.startswith("| domains | hung | series |") and rule.startswith("|---:|")
    names = [cell.strip() for cell in header.strip("|").split("|")]
    cells = [
        dict(zip(names, (cell.strip() for cell in row.strip("|").split("|")), strict=True)) for row in rows
    ]
    assert [(row["domains"], row["hung"]) for row in cells] == [
        ("30", "0"),
        ("30", "15 frozen"),
        ("30", "15 (12 storage, 2 stopped, 1 frozen)"),
        ("30", "15 (12 storage, 2 stopped, 1 frozen) dying in a bulk cycle"),
    ]
    healthy, frozen, half_hung, late = cells
    assert int(healthy["series"]) > int(half_hung["series"]) > 0  # the hung domains' values are missing
    assert healthy["fresh"] == healthy["healthy fresh"] == "100%" and healthy["stuck threads"] == "0"
    assert all(row["reference p99"].endswith(" ms") for row in cells)  # the reference server answered
    # 15 frozen domains, more than the stuck calls allowed, and nothing shows them hung but calls; and
    # the storage dying under a bulk cycle's calls: the threads stay capped (the values do not stay
    # fresh: see docs/benchmarks.md).
    assert int(frozen["stuck threads"]) <= MAX_STUCK_CALLS
    # Half hung, the hangs in place before it starts: healthy domains fresh in every sampler (basic,
    # bulk, block, block_info), every hung domain's basic values fresh, the dead storage's domains'
    # bulk values too (their QEMUs answer what needs no disk): 15 x 4 + 12 x 2 + 3 of 120
    # pairs. The stopped QEMUs
    # and the dead storage get no call: the frozen domain's call (and the host-wide one) are all that
    # hang, and one probe, whatever the number of domains on the storage.
    assert half_hung["healthy fresh"] == half_hung["hung: basic fresh"] == "100%"
    assert half_hung["dead storage: bulk fresh"] == "100%" and half_hung["fresh"] == "72%"
    assert int(half_hung["stuck threads"]) <= 2 and half_hung["stuck probes"] == "1"
    assert int(late["stuck threads"]) <= MAX_STUCK_CALLS


def test_the_reference_server_answers_every_scrape_with_the_body_it_was_given() -> None:
    body = gzip.compress(b"# EOF\n")
    with reference_server(body) as reference:
        assert [reference.get({"Accept-Encoding": "gzip"}) for _ in range(3)] == [body] * 3


def test_scrapes_are_placed_by_their_time_since_their_cycles_start() -> None:
    starts = [10.0, 12.0]
    answered = [(9.5, 0.001), (10.01, 0.009), (10.05, 0.002), (10.5, 0.003), (12.03, 0.004)]
    by_step = place(answered, starts, step=0.04, steps=2)
    # Before the first cycle: not placed; past the steps: the rest of the cycle.
    assert by_step == {0: [0.009, 0.004], 1: [0.002], 2: [0.003]}


def test_the_scrape_timeline_places_every_answered_scrape() -> None:
    run = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.scrape_timeline"),
            *("--domains=30", "--scrapes=40", "--seconds=2", "--interval=1", "--step=0.1", "--steps=3"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    congestion, exporter, reference, header, _, *rows = run.stdout.splitlines()
    assert congestion.startswith("TCP congestion control ")
    assert exporter.startswith("exporter: 40 scrapes answered of 40 at 30 domains: p50 ")
    assert reference.startswith("reference: 40 scrapes answered of 40 at 30 domains: p50 ")
    assert header.startswith("| since the cycle's start | scrapes | median | slowest | over 8 ms |")
    assert "| reference: scrapes | median | slowest | over 8 ms |" in header
    assert [row.split("|")[1].strip() for row in rows] == ["0.00 s", "0.10 s", "0.20 s", "0.30 s on"]
    assert sum(int(row.split("|")[2]) for row in rows) == 40
    assert sum(int(row.split("|")[6]) for row in rows) == 40

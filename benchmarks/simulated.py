"""Scale on a simulated hypervisor: `python -m benchmarks.simulated` (`make bench`) prints one table.

For each number of domains and each scenario (healthy; every tenth domain frozen; half the domains
hung the ways production hangs them: on a storage that stops answering, their QEMU stopped, a few
frozen, see benchmarks/simulated_host.py), the exporter runs on a simulated host in a process of
its own, every sampler on the same interval, and this process measures it from outside:

- CPU seconds per sampling cycle: the exporter's CPU time from the start of one bulk cycle to the
  start of a later one, divided by the cycles between; every sampler and the rendering after each
  round are in it, and no scrape is (none is sent meanwhile);
- scrape latency p50 / p99 over many scrapes spread evenly over several cycles, sent the way
  Prometheus sends them, so that the scrapes that coincide with sampling and rendering are counted;
  and the p99 of as many scrapes of the reference server (reference_server.py), half-way between
  them: the same HTTP server with the same body in a process that does nothing else, what the
  machine alone gives at those moments;
- exposition size (text format, plain and gzipped), series, peak RSS, peak threads;
- from the exporter's own metrics, read in every `SAMPLED`-th scrape and in the last (after the
  timing, so that reading them costs no scrape anything), the lowest seen of: the share of
  (domain, sampler) pairs whose values are fresh (`libvirt_domain_sample_stale` 0), of healthy
  domains fresh in every sampler, of hung domains whose `basic` values are fresh, of the domains on
  the dead storage whose `bulk` values are fresh (their QEMU answers what needs no disk); and the
  most seen of the libvirt call threads stuck past their deadline
  (`libvirt_sampler_threads{state="stuck"}`) and of storages whose probe is stuck past its deadline
  (`libvirt_storage_call_in_flight_seconds`).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from benchmarks.measure import (
    Scraper,
    free_port,
    machine_cpu_seconds,
    own_cpu_seconds,
    percentile,
    series_count,
    status_value,
    status_value_with_children,
    table,
    tcp_congestion_control,
)
from benchmarks.simulated_host import DEFAULT_FROZEN, FROZEN, KINDS, OUTAGE, hangs, name_of
from libvirt_exporter.cli import parse_config

CYCLE_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 5.0
SAMPLED = 20
"""Every SAMPLED-th scrape's body is kept and its health figures read once the timing is over."""
SCENARIOS = ("healthy", "frozen", "half-hung", "half-hung-late")
LATE_OUTAGE_CYCLE = 2
"""The bulk cycle in which the storage dies in `half-hung-late`: before the CPU is measured."""
KIND_WORDS = {OUTAGE: "storage", "stopped": "stopped", FROZEN: "frozen"}
HEADERS = (
    "domains",
    "hung",
    "series",
    "text",
    "gzip",
    "scrape p50",
    "scrape p99",
    "reference p99",
    "CPU per cycle",
    "peak RSS",
    "peak threads",
    "fresh",
    "healthy fresh",
    "hung: basic fresh",
    "dead storage: bulk fresh",
    "stuck threads",
    "stuck probes",
)


def share(flags: Sequence[bool]) -> float | None:
    """The share of true flags; None for none at all."""
    return sum(flags) / len(flags) if flags else None


def lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@dataclass
class Health:
    """What the exporter's own metrics say of the domains' values and of its stuck threads."""

    fresh: float | None
    """(domain, sampler) pairs whose values are fresh."""
    healthy_fresh: float | None
    """Healthy domains fresh in every sampler."""
    hung_basic_fresh: float | None
    """Hung domains whose `basic` values (state, CPU time, interfaces) are fresh."""
    outage_bulk_fresh: float | None
    """Domains on the dead storage whose `bulk` values (balloon, vCPUs: no disk) are fresh."""
    stuck_threads: int
    """libvirt_sampler_threads{state="stuck"}."""
    stuck_probes: int
    """Storages whose probe has been in flight for longer than its deadline."""

    def worst(self, other: Health) -> Health:
        return Health(
            lowest(self.fresh, other.fresh),
            lowest(self.healthy_fresh, other.healthy_fresh),
            lowest(self.hung_basic_fresh, other.hung_basic_fresh),
            lowest(self.outage_bulk_fresh, other.outage_bulk_fresh),
            max(self.stuck_threads, other.stuck_threads),
            max(self.stuck_probes, other.stuck_probes),
        )


def labels_and_value(line: bytes) -> tuple[dict[str, str], float]:
    """`name{a="x",b="y"} 1.0` to ({"a": "x", "b": "y"}, 1.0); the names here need no unescaping."""
    inside, _, rest = line.partition(b"{")[2].rpartition(b"}")
    labels = dict(pair.split("=", 1) for pair in inside.decode().split(","))
    return {name: value.strip('"') for name, value in labels.items()}, float(rest.split()[0])


def read_health(
    exposition: bytes, names: Sequence[str], hung: dict[str, str], probe_deadline: float
) -> Health:
    """The health figures of one exposition (text or OpenMetrics) of `names`, hung as `hung` says."""
    stale: dict[str, dict[str, bool]] = {name: {} for name in names}
    stuck_threads = stuck_probes = 0
    for line in exposition.splitlines():
        if line.startswith(b"libvirt_domain_sample_stale{"):
            labels, value = labels_and_value(line)
            stale.setdefault(labels["domain"], {})[labels["sampler"]] = value != 0
        elif line.startswith(b'libvirt_sampler_threads{state="stuck"}'):
            stuck_threads = int(labels_and_value(line)[1])
        elif line.startswith(b"libvirt_storage_call_in_flight_seconds{"):
            stuck_probes += labels_and_value(line)[1] > probe_deadline
    healthy = [name for name in names if name not in hung]
    return Health(
        fresh=share([not flag for flags in stale.values() for flag in flags.values()]),
        healthy_fresh=share([bool(stale[name]) and not any(stale[name].values()) for name in healthy]),
        hung_basic_fresh=share([stale[name].get("basic") is False for name in hung]),
        outage_bulk_fresh=share(
            [stale[name].get("bulk") is False for name, kind in hung.items() if kind == OUTAGE]
        ),
        stuck_threads=stuck_threads,
        stuck_probes=stuck_probes,
    )


def describe_hung(hung: dict[str, str]) -> str:
    """`0`, `50 frozen`, `250 (200 storage, 45 stopped, 5 frozen)`."""
    kinds = Counter(hung.values())
    parts = [f"{kinds[kind]} {KIND_WORDS[kind]}" for kind in KINDS if kinds[kind]]
    if len(parts) <= 1:
        return parts[0] if parts else "0"
    return f"{len(hung)} ({', '.join(parts)})"


@dataclass
class Result:
    domains: int
    scenario: str
    hung: dict[str, str]
    series: int
    text_bytes: int
    gzip_bytes: int
    latencies: list[float]
    reference_latencies: list[float]
    failed_scrapes: int
    cpu_per_cycle: float
    peak_rss_kib: int
    peak_threads: int
    health: Health

    def row(self) -> list[str]:
        scrapes = (
            (
                f"{percentile(self.latencies, 0.5) * 1e3:.2f} ms",
                f"{percentile(self.latencies, 0.99) * 1e3:.2f} ms",
                f"{percentile(self.reference_latencies, 0.99) * 1e3:.2f} ms",
            )
            if self.latencies
            else ("-", "-", "-")
        )
        failed = f" ({self.failed_scrapes} failed)" if self.failed_scrapes else ""
        health = self.health
        return [
            str(self.domains),
            describe_hung(self.hung)
            + (" dying in a bulk cycle" if self.scenario == "half-hung-late" else ""),
            str(self.series),
            f"{self.text_bytes / 1e6:.2f} MB",
            f"{self.gzip_bytes / 1e6:.3f} MB",
            scrapes[0],
            scrapes[1] + failed,
            scrapes[2],
            f"{self.cpu_per_cycle:.3f} s",
            f"{self.peak_rss_kib / 1024:.0f} MiB",
            str(self.peak_threads),
            percent(health.fresh),
            percent(health.healthy_fresh),
            percent(health.hung_basic_fresh),
            percent(health.outage_bulk_fresh),
            str(health.stuck_threads),
            str(health.stuck_probes),
        ]


class CycleStarts:
    """The `cycle <CPU seconds>` lines of the exporter process, read in a thread as they come."""

    def __init__(self, stdout: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen_at: list[float] = []
        """When each cycle's line arrived (`time.monotonic`): its start, and the pipe's delay."""
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            if line.startswith("cycle "):
                self.seen_at.append(time.monotonic())
            self._lines.put(line)

    def next_cpu(self) -> float:
        """Process CPU seconds at the start of the next bulk cycle."""
        while True:
            word, _, cpu = self._lines.get(timeout=CYCLE_TIMEOUT_SECONDS).partition(" ")
            if word == "cycle":
                return float(cpu)


def start_host(domains: int, port: int, flags: Sequence[str]) -> tuple[subprocess.Popen[str], CycleStarts]:
    """The exporter on a simulated hypervisor of `domains` (simulated_host.py) answering on `port`,
    and the starts of its cycles."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.simulated_host",
        f"--domains={domains}",
        f"--port={port}",
        *flags,
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, CycleStarts(child.stdout)


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    """When each answered scrape was sent (`time.monotonic`), in the order of `latencies`."""
    reference_latencies: list[float] = field(default_factory=list)
    reference_sent_at: list[float] = field(default_factory=list)
    failed: int = 0
    peak_threads: int = 0
    sampled: list[bytes] = field(default_factory=list)
    """Every SAMPLED-th answer, gzipped as sent."""


def scrape_evenly(scraper: Scraper, reference: Scraper, pid: int, count: int, seconds: float) -> Scrapes:
    """`count` scrapes spread evenly over `seconds`, and as many of the `reference` server half-way
    between them (right after one, the client, having just run, would time it slower): their
    latencies, failures, the peak threads and every SAMPLED-th answer."""
    scrapes = Scrapes()
    started = time.monotonic()
    for index in range(2 * count):
        time.sleep(max(0.0, started + index * seconds / count / 2 - time.monotonic()))
        sent_at = time.monotonic()
        if index % 2:
            latency = reference.scrape()
            if latency is None:
                raise RuntimeError("the reference server failed a scrape")
            scrapes.reference_latencies.append(latency)
            scrapes.reference_sent_at.append(sent_at)
            continue
        latency = scraper.scrape()
        if latency is None:
            scrapes.failed += 1
        else:
            scrapes.latencies.append(latency)
            scrapes.sent_at.append(sent_at)
            if index // 2 % SAMPLED == 0:
                scrapes.sampled.append(scraper.last_body)
        scrapes.peak_threads = max(scrapes.peak_threads, status_value(pid, "Threads"))
    return scrapes


@contextlib.contextmanager
def reference_server(body: bytes) -> Iterator[Scraper]:
    """A scraper of the reference server (reference_server.py) answering with `body`."""
    with tempfile.NamedTemporaryFile(prefix="reference-body-") as file:
        file.write(body)
        file.flush()
        command = [sys.executable, "-m", "benchmarks.reference_server", f"--body={file.name}"]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            scraper = Scraper(int(child.stdout.readline()))
            yield scraper
            scraper.close()
        finally:
            stop(child)


def host_flags(scenario: str, args: argparse.Namespace) -> list[str]:
    if scenario == "frozen":
        return [f"--hung-every={args.hung_every}"]
    if scenario == "half-hung":
        return ["--half-hung", f"--frozen={args.frozen}"]
    if scenario == "half-hung-late":
        return ["--half-hung", f"--frozen={args.frozen}", f"--late-outage={LATE_OUTAGE_CYCLE}"]
    return []


def scenario_hangs(scenario: str, domains: int, args: argparse.Namespace) -> dict[str, str]:
    """The same choice as the simulated host makes from `host_flags`."""
    if scenario == "frozen":
        return hangs(domains, hung_every=args.hung_every)
    if scenario.startswith("half-hung"):
        return hangs(domains, half_hung=True, frozen=args.frozen)
    return {}


def measure(domains: int, scenario: str, args: argparse.Namespace) -> Result:
    port = free_port()
    flags = [*host_flags(scenario, args), f"--interval={args.interval}", f"--deadline={args.deadline}"]
    child, starts = start_host(domains, port, flags)
    try:
        starts.next_cpu()
        warm = starts.next_cpu()  # the first cycle, which reads every domain's XML, is over
        cpu_per_cycle = (max(starts.next_cpu() for _ in range(args.cycles)) - warm) / args.cycles
        scraper = Scraper(port)
        interval = float(args.interval.removesuffix("s"))
        scraper.scrape()
        with reference_server(scraper.last_body) as reference:
            scrapes = scrape_evenly(
                scraper, reference, child.pid, args.scrapes, args.scrape_cycles * interval
            )
        text = scraper.get({})
        gzipped = scraper.get({"Accept-Encoding": "gzip"})
        scraper.close()
        peak_rss_kib = status_value_with_children(child.pid, "VmHWM")
    finally:
        stop(child)
    hung = scenario_hangs(scenario, domains, args)
    names = [name_of(index) for index in range(domains)]
    probe_deadline = min(1.0, float(args.deadline.removesuffix("s")))  # the storage sampler's default
    health = read_health(text, names, hung, probe_deadline)
    for body in scrapes.sampled:
        health = health.worst(read_health(gzip.decompress(body), names, hung, probe_deadline))
    return Result(
        domains=domains,
        scenario=scenario,
        hung=hung,
        series=series_count(text),
        text_bytes=len(text),
        gzip_bytes=len(gzipped),
        latencies=scrapes.latencies,
        reference_latencies=scrapes.reference_latencies,
        failed_scrapes=scrapes.failed,
        cpu_per_cycle=cpu_per_cycle,
        peak_rss_kib=peak_rss_kib,
        peak_threads=scrapes.peak_threads,
        health=health,
    )


def stop(child: subprocess.Popen[str]) -> None:
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:  # threads stuck on hung domains can hold up its exit
        child.kill()
        child.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Scale of the exporter on a simulated hypervisor.")
    parser.add_argument("--sizes", default="100,500,2000", help="numbers of domains, comma-separated")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, run at each size: healthy; frozen (every --hung-every-th domain "
        "frozen, nothing shows it); half-hung (every second domain hung: most on a storage that "
        "stops answering, a fifth with their QEMU stopped, --frozen of them frozen); half-hung-late "
        "(the same, but the storage dies as a bulk cycle sends its calls, after the round's probe)",
    )
    parser.add_argument(
        "--late-sizes", default="500", help="the sizes half-hung-late runs at (of --sizes), comma-separated"
    )
    parser.add_argument("--hung-every", type=int, default=10, help="every n-th domain frozen in `frozen`")
    parser.add_argument("--frozen", type=int, default=DEFAULT_FROZEN, help="frozen domains in `half-hung`")
    parser.add_argument("--scrapes", type=int, default=500, help="scrapes per size and scenario")
    parser.add_argument("--scrape-cycles", type=int, default=4, help="cycles the scrapes are spread over")
    parser.add_argument("--cycles", type=int, default=3, help="cycles the CPU is measured over")
    parser.add_argument("--interval", default="2s", help="interval of every sampler (seconds)")
    parser.add_argument("--deadline", default="1s", help="deadline of every sampler (seconds)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = peak_load = os.getloadavg()[0]
    rows = []
    started = time.monotonic()
    (busy_before, steal_before), own_before = machine_cpu_seconds(), own_cpu_seconds()
    for domains in (int(size) for size in args.sizes.split(",")):
        for scenario in args.scenarios.split(","):
            if scenario == "half-hung-late" and str(domains) not in args.late_sizes.split(","):
                continue
            result = measure(domains, scenario, args)
            rows.append(result.row())
            peak_load = max(peak_load, os.getloadavg()[0])
            print(f"measured {domains} domains, {scenario}", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    (busy, steal), own = machine_cpu_seconds(), own_cpu_seconds()
    others = (busy - busy_before - (own - own_before)) / elapsed
    print(table(HEADERS, rows))
    max_stuck = parse_config([])[0].max_stuck_calls
    print(
        f"\n{os.cpu_count()} CPUs; load average {load_before:.1f} at the start, {peak_load:.1f} at most "
        f"after a run, {os.getloadavg()[0]:.1f} at the end; other processes used {others:.2f} CPUs on "
        f"average (steal {(steal - steal_before) / elapsed:.2f}) over the {elapsed:.0f} s; every sampler "
        f"every {args.interval}, deadline {args.deadline}; --sampler.max-stuck-calls {max_stuck}; "
        f"TCP congestion control {tcp_congestion_control()}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

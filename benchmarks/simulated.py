"""Scale on a simulated hypervisor: `python -m benchmarks.simulated` (`make bench`) prints one table.

For each number of domains, healthy and then with every tenth domain hung, the exporter runs on a
simulated host (benchmarks/simulated_host.py) in a process of its own, every sampler on the same
interval, and this process measures it from outside:

- CPU seconds per sampling cycle: the exporter's CPU time from the start of one bulk cycle to the
  start of a later one, divided by the cycles between; all four samplers and the rendering after
  each are in it, and no scrape is (none is sent meanwhile);
- scrape latency p50 / p99 over many scrapes spread evenly over several cycles, sent the way
  Prometheus sends them, so that the scrapes that coincide with sampling and rendering are counted;
- exposition size (text format, plain and gzipped), series, peak RSS, peak threads, and the share of
  (domain, sampler) pairs whose values are fresh (`libvirt_domain_sample_stale` 0).
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from benchmarks.measure import Scraper, free_port, percentile, series_count, status_value, table

CYCLE_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 5.0
HEADERS = (
    "domains",
    "hung",
    "series",
    "text",
    "gzip",
    "scrape p50",
    "scrape p99",
    "CPU per cycle",
    "peak RSS",
    "peak threads",
    "fresh",
)


@dataclass
class Result:
    domains: int
    hung: int
    series: int
    text_bytes: int
    gzip_bytes: int
    latencies: list[float]
    failed_scrapes: int
    cpu_per_cycle: float
    peak_rss_kib: int
    peak_threads: int
    fresh_share: float

    def row(self) -> list[str]:
        scrapes = (
            (
                f"{percentile(self.latencies, 0.5) * 1e3:.2f} ms",
                f"{percentile(self.latencies, 0.99) * 1e3:.2f} ms",
            )
            if self.latencies
            else ("-", "-")
        )
        failed = f" ({self.failed_scrapes} failed)" if self.failed_scrapes else ""
        return [
            str(self.domains),
            str(self.hung),
            str(self.series),
            f"{self.text_bytes / 1e6:.2f} MB",
            f"{self.gzip_bytes / 1e6:.3f} MB",
            scrapes[0],
            scrapes[1] + failed,
            f"{self.cpu_per_cycle:.3f} s",
            f"{self.peak_rss_kib / 1024:.0f} MiB",
            str(self.peak_threads),
            f"{self.fresh_share:.0%}",
        ]


class CycleStarts:
    """The `cycle <CPU seconds>` lines of the exporter process, read in a thread as they come."""

    def __init__(self, stdout: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)

    def next_cpu(self) -> float:
        """Process CPU seconds at the start of the next bulk cycle."""
        while True:
            word, _, cpu = self._lines.get(timeout=CYCLE_TIMEOUT_SECONDS).partition(" ")
            if word == "cycle":
                return float(cpu)


def fresh_share(exposition: bytes) -> float:
    """Share of the `libvirt_domain_sample_stale` series that are 0."""
    flags = [line for line in exposition.splitlines() if line.startswith(b"libvirt_domain_sample_stale{")]
    return sum(1 for line in flags if float(line.rsplit(b" ", 1)[1]) == 0) / len(flags) if flags else 0.0


def scrape_evenly(scraper: Scraper, pid: int, count: int, seconds: float) -> tuple[list[float], int, int]:
    """`count` scrapes spread evenly over `seconds`: their latencies, failures and the peak threads."""
    latencies, failed, peak_threads = [], 0, 0
    started = time.monotonic()
    for index in range(count):
        time.sleep(max(0.0, started + index * seconds / count - time.monotonic()))
        latency = scraper.scrape()
        if latency is None:
            failed += 1
        else:
            latencies.append(latency)
        peak_threads = max(peak_threads, status_value(pid, "Threads"))
    return latencies, failed, peak_threads


def measure(domains: int, hung_every: int, args: argparse.Namespace) -> Result:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.simulated_host",
        f"--domains={domains}",
        f"--hung-every={hung_every}",
        f"--port={port}",
        f"--interval={args.interval}",
        f"--deadline={args.deadline}",
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        starts = CycleStarts(child.stdout)
        starts.next_cpu()
        warm = starts.next_cpu()  # the first cycle, which reads every domain's XML, is over
        cpu_per_cycle = (max(starts.next_cpu() for _ in range(args.cycles)) - warm) / args.cycles
        scraper = Scraper(port)
        interval = float(args.interval.removesuffix("s"))
        latencies, failed, peak_threads = scrape_evenly(
            scraper, child.pid, args.scrapes, args.scrape_cycles * interval
        )
        text = scraper.get({})
        gzipped = scraper.get({"Accept-Encoding": "gzip"})
        scraper.close()
        return Result(
            domains=domains,
            hung=len(range(hung_every - 1, domains, hung_every)) if hung_every else 0,
            series=series_count(text),
            text_bytes=len(text),
            gzip_bytes=len(gzipped),
            latencies=latencies,
            failed_scrapes=failed,
            cpu_per_cycle=cpu_per_cycle,
            peak_rss_kib=status_value(child.pid, "VmHWM"),
            peak_threads=peak_threads,
            fresh_share=fresh_share(text),
        )
    finally:
        stop(child)


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
    parser.add_argument("--hung-every", type=int, default=10, help="every n-th domain hung in the second run")
    parser.add_argument("--scrapes", type=int, default=500, help="scrapes per size")
    parser.add_argument("--scrape-cycles", type=int, default=4, help="cycles the scrapes are spread over")
    parser.add_argument("--cycles", type=int, default=3, help="cycles the CPU is measured over")
    parser.add_argument("--interval", default="2s", help="interval of every sampler (seconds)")
    parser.add_argument("--deadline", default="1s", help="deadline of every sampler (seconds)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    for domains in (int(size) for size in args.sizes.split(",")):
        for hung_every in (0, args.hung_every):
            result = measure(domains, hung_every, args)
            rows.append(result.row())
            print(f"measured {domains} domains, {result.hung} hung", file=sys.stderr, flush=True)
    print(table(HEADERS, rows))
    print(
        f"\n{os.cpu_count()} CPUs; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} "
        f"at the end; every sampler every {args.interval}, deadline {args.deadline}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Where in a sampling cycle the slow scrapes fall: `python -m benchmarks.scrape_timeline`.

The exporter runs on the simulated hypervisor (simulated_host.py), healthy, and is scraped at an
even pace over many cycles, as `make bench` does but with more scrapes, so that a p99 rests on
more than a handful of them. Each scrape is placed by its time since the start of its bulk cycle
(the `cycle` line the simulated host prints as the cycle starts, read as it arrives), and so is
each scrape of the reference server (reference_server.py: the same HTTP server and body in a
process that does nothing else) sent half-way between two of them. Printed: p50 and p99 over all,
of both, then, for each step of a cycle's first part and for the rest of it, how many scrapes fell
there, their median and slowest latency, and how many took longer than `--slow`, of both.

A cycle's first part is where the survey, the host-wide call and the render run Python in their
threads while the hub answers scrapes (docs/benchmarks.md, fixes 19 to 22 and "The loaded p99,
examined"): this shows whether a change made its scrapes like the rest of the cycle's.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
from collections.abc import Iterable, Sequence

from benchmarks.measure import Scraper, free_port, percentile, table, tcp_congestion_control
from benchmarks.simulated import reference_server, scrape_evenly, start_host, stop

WARM_CYCLES = 2
"""Cycles let pass before the first scrape: the first reads every domain's XML."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=30.0, help="time the scrapes are spread over")
    parser.add_argument("--interval", type=float, default=2.0, help="every sampler's interval, seconds")
    parser.add_argument("--step", type=float, default=0.04, help="seconds per step of a cycle's first part")
    parser.add_argument("--steps", type=int, default=6, help="steps shown one by one")
    parser.add_argument("--slow", type=float, default=0.008, help="seconds over which a scrape is slow")
    return parser.parse_args(argv)


def place(
    answered: Iterable[tuple[float, float]], starts: list[float], step: float, steps: int
) -> dict[int, list[float]]:
    """The latencies of the scrapes sent at the times given, by step of their cycle (`steps` for
    the rest of it); those sent before the first cycle left out."""
    by_step: dict[int, list[float]] = {index: [] for index in range(steps + 1)}
    for at, latency in answered:
        cycle = bisect.bisect_right(starts, at) - 1
        if cycle < 0:
            continue
        by_step[min(int((at - starts[cycle]) / step), steps)].append(latency)
    return by_step


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    port = free_port()
    child, starts = start_host(
        args.domains, port, [f"--interval={args.interval}s", f"--deadline={args.interval / 2}s"]
    )
    try:
        for _ in range(WARM_CYCLES):
            starts.next_cpu()
        scraper = Scraper(port)
        scraper.scrape()
        with reference_server(scraper.last_body) as reference:
            scrapes = scrape_evenly(scraper, reference, child.pid, args.scrapes, args.seconds)
        scraper.close()
    finally:
        stop(child)
    ms = 1e3
    print(f"TCP congestion control {tcp_congestion_control()}")
    for who, latencies in (("exporter", scrapes.latencies), ("reference", scrapes.reference_latencies)):
        print(
            f"{who}: {len(latencies)} scrapes answered of {args.scrapes} at {args.domains} domains: "
            f"p50 {percentile(latencies, 0.5) * ms:.2f} ms, p99 {percentile(latencies, 0.99) * ms:.2f} ms"
        )
    exporter_steps = place(
        zip(scrapes.sent_at, scrapes.latencies, strict=True), starts.seen_at, args.step, args.steps
    )
    reference_steps = place(
        zip(scrapes.reference_sent_at, scrapes.reference_latencies, strict=True),
        starts.seen_at,
        args.step,
        args.steps,
    )
    rows = []
    for index, latencies in exporter_steps.items():
        since = f"{index * args.step:.2f} s" if index < args.steps else f"{args.steps * args.step:.2f} s on"
        rows.append([since, *summary(latencies, args.slow), *summary(reference_steps[index], args.slow)])
    slow = f"over {args.slow * ms:g} ms"
    headers = ["since the cycle's start", "scrapes", "median", "slowest", slow]
    headers += ["reference: scrapes", "median", "slowest", slow]
    print(table(headers, rows))


def summary(latencies: list[float], slow: float) -> list[str]:
    """How many, their median, the slowest and how many over `slow`, of the latencies of one step."""
    if not latencies:
        return ["0", "-", "-", "0"]
    return [
        str(len(latencies)),
        f"{statistics.median(latencies) * 1e3:.2f} ms",
        f"{max(latencies) * 1e3:.2f} ms",
        str(sum(latency > slow for latency in latencies)),
    ]


if __name__ == "__main__":
    main()

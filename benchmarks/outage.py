"""Hung VMs by the dozen on a real libvirtd, with the exporter's default flags: `make bench-outage`.

Each scenario starts tiny real VMs (tests/integration/vms.py), lets the exporter see them all fresh,
then at once stops the QEMU of some (SIGSTOP) and the FUSE daemon of the storage others' disks live
on (tests/integration/outage.py), as a storage outage does. For a settling time the exporter may
find the hangs; then it is scraped every SCRAPE_EVERY seconds for a number of intervals, and the
worst of those scrapes is reported:

- healthy fresh: VMs that do not hang whose values are current in every sampler (basic, bulk, block);
- hung, basic fresh: hung VMs whose state, CPU time and network counters (no QEMU needed) are current;
- storage, bulk fresh: VMs on the dead storage whose balloon and vCPU values are current;
- stuck threads: the most `libvirt_sampler_threads{state="stuck"}`, capped by
  `--sampler.max-stuck-calls` (12 by default): each holds one of libvirtd's 20 workers;
- neighbour: the slowest `virsh domblkinfo` on a healthy VM, asked again and again meanwhile;
- signals: the hung VMs each hang signal caught (`libvirt_domain_hang_signal`).

It uses the system libvirtd, which others share: `make bench-outage` holds /tmp/system-libvirtd.lock.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import table
from tests.exposition import Series, parse, value
from tests.integration.outage import (
    Neighbour,
    OutageVMs,
    begin_outage,
    destroy_when_libvirtd_answers,
    start_vms,
)
from tests.integration.storage import fuse_storage
from tests.integration.vms import Exporter, TinyVM, start_exporter, wait_for

URI = "qemu:///system"
SAMPLERS = ("basic", "bulk", "block")
STALE = "libvirt_domain_sample_stale"
SIGNAL = "libvirt_domain_hang_signal"
SIGNALS = ("qemu_stopped", "storage_unresponsive", "monitor_busy")
SCRAPE_EVERY = 2.0
WARM_UP_TIMEOUT_S = 120.0
INTERVAL_S = 15.0
"""The exporter's default sampling interval, which the settling and observing times count in."""


@dataclass(frozen=True)
class Scenario:
    frozen: int
    on_storage: int
    total: int

    @property
    def title(self) -> str:
        parts = [f"{self.frozen} frozen"]
        if self.on_storage:
            parts.append(f"{self.on_storage} on dead storage")
        return f"{' + '.join(parts)}, of {self.total}"


SCENARIOS = (Scenario(8, 0, 30), Scenario(15, 0, 30), Scenario(8, 10, 40))
"""Issue 14's table: fewer hung VMs than the stuck-call cap, more, and more of both kinds."""


@dataclass
class Worst:
    """The worst each figure was over the observed scrapes."""

    vms: OutageVMs
    healthy_fresh: int
    hung_basic_fresh: int
    storage_bulk_fresh: int
    stuck_threads: float = 0.0
    signals: dict[str, set[str]] = field(default_factory=dict)
    """Signal -> the hung VMs it was seen on, in any scrape."""

    def note(self, series: Series) -> None:
        vms = self.vms
        self.healthy_fresh = min(self.healthy_fresh, fresh_count(series, vms.healthy, SAMPLERS))
        self.hung_basic_fresh = min(self.hung_basic_fresh, fresh_count(series, vms.hung, ("basic",)))
        self.storage_bulk_fresh = min(self.storage_bulk_fresh, fresh_count(series, vms.on_storage, ("bulk",)))
        stuck = value(series, "libvirt_sampler_threads", state="stuck") or 0.0
        self.stuck_threads = max(self.stuck_threads, stuck)
        for name in SIGNALS:
            seen = {vm.name for vm in vms.hung if value(series, SIGNAL, domain=vm.name, signal=name)}
            self.signals.setdefault(name, set()).update(seen)


def fresh_count(series: Series, vms: list[TinyVM], samplers: Sequence[str]) -> int:
    """How many of `vms` have current values in every one of `samplers`."""
    return sum(all(value(series, STALE, domain=vm.name, sampler=s) == 0 for s in samplers) for vm in vms)


def all_fresh(exporter: Exporter, vms: list[TinyVM]) -> bool:
    return fresh_count(parse(exporter.scrape(timeout=10)), vms, SAMPLERS) == len(vms)


def run(scenario: Scenario, workdir: Path, settle: float, observe: float) -> list[str]:
    """One scenario, start to end; its table row."""
    with fuse_storage(workdir / "fuse") as storage:
        local = workdir / "local"
        local.mkdir()
        healthy = scenario.total - scenario.frozen - scenario.on_storage
        groups = {"f": (scenario.frozen, local), "h": (healthy, local)}
        if scenario.on_storage:
            groups["s"] = (scenario.on_storage, storage.mount_point)
        started = start_vms(URI, groups)
        vms = OutageVMs(frozen=started["f"], on_storage=started.get("s", []), healthy=started["h"])
        exporter = start_exporter(URI, (), workdir / "exporter.log")
        neighbour = Neighbour(URI, vms.healthy[0])
        try:
            wait_for(lambda: all_fresh(exporter, vms.all), WARM_UP_TIMEOUT_S, "every VM fresh", interval=1.0)
            neighbour.start()
            begin_outage(storage, vms.frozen)
            time.sleep(settle)
            worst = Worst(vms, len(vms.healthy), len(vms.hung), len(vms.on_storage))
            until = time.monotonic() + observe
            while time.monotonic() < until:
                worst.note(parse(exporter.scrape(timeout=10)))
                time.sleep(SCRAPE_EVERY)
        finally:
            neighbour.stop()
            exporter.stop()
            storage.resume()
            destroy_when_libvirtd_answers(URI, vms.all)
    return row(scenario, worst, neighbour)


def row(scenario: Scenario, worst: Worst, neighbour: Neighbour) -> list[str]:
    vms = worst.vms
    caught = [
        f"{name} {len(seen & {vm.name for vm in kind})}/{len(kind)}"
        for name, seen in worst.signals.items()
        for kind in (vms.frozen, vms.on_storage)
        if kind and seen & {vm.name for vm in kind}
    ]
    return [
        scenario.title,
        f"{worst.healthy_fresh} / {len(vms.healthy)}",
        f"{worst.hung_basic_fresh} / {len(vms.hung)}",
        f"{worst.storage_bulk_fresh} / {len(vms.on_storage)}" if vms.on_storage else "-",
        f"{worst.stuck_threads:g}",
        f"{neighbour.slowest():.2f} s",
        ", ".join(caught) or "none",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Hung VMs by the dozen on the system libvirtd.")
    parser.add_argument("--settle", type=float, default=2 * INTERVAL_S, help="seconds to find the hangs")
    parser.add_argument("--observe", type=float, default=4 * INTERVAL_S, help="seconds of scrapes reported")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="FROZEN:ON_STORAGE:TOTAL",
        help="instead of issue 14's three, e.g. 8:10:40 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scenarios = [Scenario(*map(int, s.split(":"))) for s in args.scenario] if args.scenario else SCENARIOS
    rows = []
    for scenario in scenarios:
        with tempfile.TemporaryDirectory(prefix="lvexp-outage-") as workdir:
            rows.append(run(scenario, Path(workdir), args.settle, args.observe))
        print(f"done: {scenario.title}", flush=True)
    headers = ("hung", "healthy fresh", "hung: basic fresh", "storage: bulk fresh", "stuck threads")
    print(table((*headers, "neighbour's slowest domblkinfo", "signals caught"), rows))


if __name__ == "__main__":
    main()

"""This exporter against Debian's `prometheus-libvirt-exporter` on a real libvirtd: `make bench-real`.

All run on the same host, with the same tiny QEMU VMs (tests/integration/vms.py), in the same run,
one after the other so that libvirtd's CPU can be told apart (its idle CPU, measured first with no
exporter, is taken off). Prometheus scrapes once per interval (15 s by default); Debian's exporter
asks libvirt for everything in each scrape, this one once per sampling cycle. So each exporter runs
for a few intervals, scraped once per interval, and the CPU it and libvirtd used over them is
divided by their number: for Debian's that is one scrape's cost, for ours one sampling cycle's
(with its share of the disks' sizes, read on a cadence of their own, spread over the cycles) and
one scrape of the snapshot. Ours runs twice: with its default collectors, and with those that export
what Debian's does (`ABOUT_DEBIANS`).

Then the same with one VM frozen (SIGSTOP on its QEMU), scraped with Prometheus' default timeout.
It prints the machine, one table of figures (default collectors) with ratios (Debian's figure /
ours), and one of the host's CPU per interval for each exporter with its ratio to Debian's.

It uses the system libvirtd, which others share: `make bench-real` holds /tmp/system-libvirtd.lock
while it runs, and the VMs it starts are destroyed at the end, frozen ones thawed first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import libvirt

from benchmarks.measure import (
    Scraper,
    cpu_seconds,
    cpu_seconds_with_children,
    free_port,
    percentile,
    series_count,
    status_value_with_children,
    table,
)
from tests.integration.vms import (
    TinyVM,
    create_tiny_vms,
    destroy_vms,
    libvirtd_pids,
    remove_leftover_vms,
    wait_for,
)

URI = "qemu:///system"
DEBIAN_EXPORTER = "/usr/bin/prometheus-libvirt-exporter"
PREFIX = "lvexp-bench-"
SCRAPE_TIMEOUT_SECONDS = 10.0
"""Prometheus' default scrape_timeout."""
START_TIMEOUT_SECONDS = 30.0
MIB = 1024 * 1024
ABOUT_DEBIANS = tuple(
    f"--no-collector.{name}" for name in ("vcpu", "balloon", "iothread", "memory", "job", "storage_pool")
)
"""Our collectors that export about what Debian's does: state, CPU time, interfaces, disks."""


@dataclass
class Figures:
    """What one exporter cost and how it answered, healthy host."""

    latencies: list[float]
    exporter_cpu_per_interval: float
    libvirtd_cpu_per_interval: float
    peak_rss_kib: int
    threads: int
    series: int


@dataclass
class Frozen:
    """How one exporter answered with one VM frozen."""

    answered: int
    sent: int
    latencies: list[float]
    healthy_vms_fresh: str


class Process:
    """An exporter process on 127.0.0.1:`port`, its output in a log file."""

    def __init__(self, command: Sequence[str], port: int, log: Path) -> None:
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.port = port
        self.log = log
        self.scraper = Scraper(port, SCRAPE_TIMEOUT_SECONDS)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.popen.args!r} exited with {self.popen.returncode}:\n{self.log.read_text()}"
            )

    def stop(self) -> None:
        self.scraper.close()
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@contextlib.contextmanager
def ours(workdir: Path, interval: float, collectors: Sequence[str] = ()) -> Iterator[Process]:
    port = free_port()
    flags = [
        f"--sampler.{name}.{setting}={seconds:g}s"
        for name in ("bulk", "job")
        for setting, seconds in (("interval", interval), ("deadline", min(interval, 5.0)))
    ]
    command = [sys.executable, "-m", "libvirt_exporter", f"--web.listen-address=127.0.0.1:{port}", *flags]
    process = Process([*command, *collectors, f"--libvirt.uri={URI}"], port, workdir / "ours.log")
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def debians(workdir: Path) -> Iterator[Process]:
    port = free_port()
    command = [DEBIAN_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--libvirt.uri={URI}"]
    process = Process(command, port, workdir / "debian.log")
    try:
        yield process
    finally:
        process.stop()


def libvirtd_cpu() -> float:
    return sum(cpu_seconds(pid) for pid in libvirtd_pids())


def scrape_text(process: Process) -> bytes:
    return process.scraper.get({})


def wait_until_sampled(process: Process, vms: list[TinyVM]) -> None:
    """Until our exporter serves fresh block values of every VM (its first cycles are over)."""

    def fresh() -> bool:
        try:
            text = scrape_text(process)
        except OSError:
            process.check_running()
            return False
        return all(
            f'libvirt_domain_sample_stale{{domain="{vm.name}",sampler="block"}} 0.0'.encode() in text
            for vm in vms
        )

    wait_for(fresh, START_TIMEOUT_SECONDS + 60, "our exporter to sample every VM")


def wait_until_answering(process: Process) -> None:
    def answers() -> bool:
        try:
            scrape_text(process)
        except OSError:
            process.check_running()
            return False
        return True

    wait_for(answers, START_TIMEOUT_SECONDS, "Debian's exporter to answer")


def scrape_for(process: Process, count: int, seconds: float, spaced: bool = False) -> list[float | None]:
    """`count` scrapes spread over `seconds` (back to back when they take longer); `spaced`: and
    until the end of the last one's share of `seconds`."""
    results: list[float | None] = []
    started = time.monotonic()
    for index in range(count):
        time.sleep(max(0.0, started + index * seconds / count - time.monotonic()))
        results.append(process.scraper.scrape())
    if spaced:
        time.sleep(max(0.0, started + seconds - time.monotonic()))
    return results


def idle_libvirtd_rate(seconds: float) -> float:
    """libvirtd's CPU seconds per second with no exporter: its own work for the VMs."""
    before = libvirtd_cpu()
    time.sleep(seconds)
    return (libvirtd_cpu() - before) / seconds


@dataclass
class HostCpu:
    """What an exporter cost the host per scrape interval, in CPU seconds."""

    exporter: float
    libvirtd: float

    @property
    def total(self) -> float:
        return self.exporter + self.libvirtd


def cpu_per_interval(process: Process, args: argparse.Namespace, idle_rate: float) -> HostCpu:
    """The exporter's and libvirtd's CPU over `args.cycles` intervals, scraped once in each, as
    Prometheus does, divided by their number; libvirtd's idle CPU taken off."""
    window = args.cycles * args.interval
    exporter_before, libvirtd_before = cpu_seconds_with_children(process.pid), libvirtd_cpu()
    scrape_for(process, args.cycles, window, spaced=True)
    return HostCpu(
        exporter=(cpu_seconds_with_children(process.pid) - exporter_before) / args.cycles,
        libvirtd=(libvirtd_cpu() - libvirtd_before - idle_rate * window) / args.cycles,
    )


def measure_ours(
    workdir: Path,
    vms: list[TinyVM],
    args: argparse.Namespace,
    idle_rate: float,
    collectors: Sequence[str] = (),
) -> Figures:
    with ours(workdir, args.interval, collectors) as process:
        wait_until_sampled(process, vms)
        host = cpu_per_interval(process, args, idle_rate)
        results = scrape_for(process, args.scrapes, args.interval * 2)
        return Figures(
            latencies=[r for r in results if r is not None],
            exporter_cpu_per_interval=host.exporter,
            libvirtd_cpu_per_interval=host.libvirtd,
            peak_rss_kib=status_value_with_children(process.pid, "VmHWM"),
            threads=status_value_with_children(process.pid, "Threads"),
            series=series_count(scrape_text(process)),
        )


def measure_debians(workdir: Path, args: argparse.Namespace, idle_rate: float) -> Figures:
    with debians(workdir) as process:
        wait_until_answering(process)
        host = cpu_per_interval(process, args, idle_rate)
        results = scrape_for(process, args.debian_scrapes, 0)
        return Figures(
            latencies=[r for r in results if r is not None],
            exporter_cpu_per_interval=host.exporter,
            libvirtd_cpu_per_interval=host.libvirtd,
            peak_rss_kib=status_value_with_children(process.pid, "VmHWM"),
            threads=status_value_with_children(process.pid, "Threads"),
            series=series_count(scrape_text(process)),
        )


def fresh_share(text: bytes, vms: list[TinyVM]) -> str:
    fresh = sum(
        1
        for vm in vms
        if all(
            f'libvirt_domain_sample_stale{{domain="{vm.name}",sampler="{sampler}"}} 0.0'.encode() in text
            for sampler in ("bulk", "block")
        )
    )
    return f"{fresh}/{len(vms)}"


def measure_ours_frozen(workdir: Path, vms: list[TinyVM], args: argparse.Namespace) -> Frozen:
    frozen, healthy = vms[0], vms[1:]
    with ours(workdir, args.interval) as process:
        wait_until_sampled(process, vms)
        frozen.freeze()
        # The bulk sampler's call gets stuck on it (the host-wide one, or the VM's own when its
        # disks' sizes are due), and the block values it brings go stale with it.
        stale = f'libvirt_domain_sample_stale{{domain="{frozen.name}",sampler="block"}} 1.0'
        wait_for(
            lambda: stale.encode() in scrape_text(process),
            args.interval * 4,
            "our exporter to flag the frozen VM's block values stale",
        )
        results = scrape_for(process, args.scrapes, args.interval * 2)
        return Frozen(
            answered=sum(1 for r in results if r is not None),
            sent=len(results),
            latencies=[r for r in results if r is not None],
            healthy_vms_fresh=fresh_share(scrape_text(process), healthy),
        )


def measure_debians_frozen(workdir: Path, args: argparse.Namespace) -> Frozen:
    with debians(workdir) as process:
        results = scrape_for(process, args.frozen_debian_scrapes, 0)
        answered = [r for r in results if r is not None]
        return Frozen(len(answered), len(results), answered, "all lost" if not answered else "-")


def machine() -> list[str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
    memory = meminfo_kib("MemTotal") // 1024
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    debian = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "prometheus-libvirt-exporter"], capture_output=True, text=True
    ).stdout
    conn = libvirt.openReadOnly(URI)
    try:
        libvirt_version = conn.getLibVersion()
    finally:
        conn.close()
    return [
        f"CPU: {model.group(1) if model else platform.processor()}, {os.cpu_count()} cores",
        f"RAM: {memory} MiB; kernel {platform.release()}; {'KVM' if os.path.exists('/dev/kvm') else 'TCG'}",
        f"libvirt {libvirt_version // 1_000_000}.{libvirt_version // 1000 % 1000}.{libvirt_version % 1000}; "
        f"{qemu.splitlines()[0] if qemu else 'QEMU unknown'}",
        f"prometheus-libvirt-exporter {debian}; this tree on Python {platform.python_version()}",
    ]


def require_debians_exporter() -> None:
    """Installing it is the set-up's job (scripts/ensure-libvirtd.sh, run by `make bench-real` and
    `make test`): a benchmark whose output is parsed writes nothing else on its standard output."""
    if not shutil.which(DEBIAN_EXPORTER):
        raise SystemExit(
            f"benchmarks.real_libvirt: error: {DEBIAN_EXPORTER} is missing: "
            "run `make bench-real`, which installs Debian's prometheus-libvirt-exporter"
        )


def ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1e3:.1f} ms" if values else "-"


def ratio(theirs: float, our: float) -> str:
    return f"{theirs / our:.1f}x" if our > 0 else "-"


def report(vms: int, mine: Figures, theirs: Figures, mine_frozen: Frozen, theirs_frozen: Frozen) -> str:
    rows = [
        ("series", str(mine.series), str(theirs.series), ratio(theirs.series, mine.series)),
        *(
            (f"scrape {name}", ms(mine.latencies, share), ms(theirs.latencies, share),
             ratio(percentile(theirs.latencies, share), percentile(mine.latencies, share)))
            for name, share in (("p50", 0.5), ("p99", 0.99))
        ),
        ("exporter CPU per scrape interval", f"{mine.exporter_cpu_per_interval * 1e3:.1f} ms",
         f"{theirs.exporter_cpu_per_interval * 1e3:.1f} ms",
         ratio(theirs.exporter_cpu_per_interval, mine.exporter_cpu_per_interval)),
        ("libvirtd CPU per scrape interval", f"{mine.libvirtd_cpu_per_interval * 1e3:.1f} ms",
         f"{theirs.libvirtd_cpu_per_interval * 1e3:.1f} ms",
         ratio(theirs.libvirtd_cpu_per_interval, mine.libvirtd_cpu_per_interval)),
        ("peak RSS", f"{mine.peak_rss_kib / 1024:.0f} MiB", f"{theirs.peak_rss_kib / 1024:.0f} MiB",
         ratio(theirs.peak_rss_kib, mine.peak_rss_kib)),
        ("threads", str(mine.threads), str(theirs.threads), ratio(theirs.threads, mine.threads)),
        ("1 VM frozen: scrapes answered", f"{mine_frozen.answered}/{mine_frozen.sent}",
         f"{theirs_frozen.answered}/{theirs_frozen.sent}", "-"),
        ("1 VM frozen: scrape p99", ms(mine_frozen.latencies, 0.99), ms(theirs_frozen.latencies, 0.99), "-"),
        ("1 VM frozen: other VMs with fresh values", mine_frozen.healthy_vms_fresh,
         theirs_frozen.healthy_vms_fresh, "-"),
    ]  # fmt: skip
    return table((f"{vms} VMs", "libvirt-exporter", "Debian's", "Debian's / ours"), rows)


def cpu_report(interval: float, theirs: Figures, configurations: Sequence[tuple[str, Figures]]) -> str:
    """The host's CPU per scrape interval, libvirtd's and the exporter's, and the total's ratio to
    Debian's exporter: what issue 16's targets are set in."""

    def row(name: str, figures: Figures) -> tuple[str, ...]:
        total = figures.libvirtd_cpu_per_interval + figures.exporter_cpu_per_interval
        debians = theirs.libvirtd_cpu_per_interval + theirs.exporter_cpu_per_interval
        return (
            name,
            f"{figures.libvirtd_cpu_per_interval * 1e3:.1f} ms",
            f"{figures.exporter_cpu_per_interval * 1e3:.1f} ms",
            f"{total * 1e3:.1f} ms",
            f"{total / debians:.2f}x" if debians > 0 else "-",
        )

    headers = (f"CPU per {interval:g} s interval", "libvirtd", "exporter", "total", "vs Debian's")
    return table(
        headers, [row("Debian's", theirs), *(row(name, figures) for name, figures in configurations)]
    )


def default_vm_count() -> int:
    """As many as the memory holds with room to spare (64 MiB guests, QEMU's own memory), 20 to 60."""
    return max(20, min(60, meminfo_kib("MemAvailable") * 1024 // (512 * MIB)))


def meminfo_kib(key: str) -> int:
    return int(re.findall(rf"^{key}:\s+(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)[0])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="This exporter against Debian's on a real libvirtd.")
    parser.add_argument("--vms", type=int, default=default_vm_count(), help="tiny VMs to start")
    parser.add_argument(
        "--interval", type=float, default=15.0, help="our sampling interval and the scrape interval, seconds"
    )
    parser.add_argument("--cycles", type=int, default=4, help="scrape intervals the CPU is measured over")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes of our exporter")
    parser.add_argument("--debian-scrapes", type=int, default=50, help="scrapes of Debian's exporter")
    parser.add_argument("--frozen-debian-scrapes", type=int, default=3, help="with a VM frozen (10 s each)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="libvirtd's idle CPU measured over")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.vms < 2:
        raise SystemExit("benchmarks.real_libvirt: error: --vms must be at least 2 (one is frozen)")
    require_debians_exporter()
    print("\n".join(machine()), flush=True)
    with tempfile.TemporaryDirectory(prefix="lvexp-bench-") as tmp:
        workdir = Path(tmp)
        conn = libvirt.open(URI)
        remove_leftover_vms(conn, PREFIX)
        vms = create_tiny_vms(conn, args.vms, workdir, prefix=PREFIX)
        try:
            print(f"{len(vms)} tiny VMs running", file=sys.stderr, flush=True)
            idle_rate = idle_libvirtd_rate(args.idle_seconds)
            mine = measure_ours(workdir, vms, args, idle_rate)
            mine_as_debians = measure_ours(workdir, vms, args, idle_rate, ABOUT_DEBIANS)
            theirs = measure_debians(workdir, args, idle_rate)
            mine_frozen = measure_ours_frozen(workdir, vms, args)
            theirs_frozen = measure_debians_frozen(workdir, args)
        finally:
            destroy_vms(conn, vms)
            conn.close()
    print(report(len(vms), mine, theirs, mine_frozen, theirs_frozen))
    print()
    configurations = [("ours, default collectors", mine), ("ours, about Debian's families", mine_as_debians)]
    print(cpu_report(args.interval, theirs, configurations))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The exporter on a simulated hypervisor: `python -m benchmarks.simulated_host --domains N --port P`.

The real exporter (its samplers, snapshot and HTTP server) with libvirt and the host (its /proc and
mount table, `HostAccess`) replaced by the fake host of the unit tests, holding N realistic domains:
4 vCPUs, 3 disks, 2 NICs, balloon statistics. Domains hang in the ways `hangs` says:

- `--hung-every=N`: every N-th domain is frozen: its QEMU monitor never answers, and nothing in
  /proc shows it (as with a QEMU hung in its main loop);
- `--half-hung`: every second domain hangs, the ways a production host hangs them: most have their
  disks on one storage that stops answering (a dead NFS server; their QEMUs keep running), a fifth
  of them have their QEMU stopped (SIGSTOP, which /proc shows), and `--frozen` of those are frozen
  instead (no signal anywhere). The storage stops answering before the exporter starts, or, with
  `--late-outage=N`, as the N-th bulk cycle sends its calls (which read the disks' counters):
  after that round's probe found the storage answering, as when it dies in the middle of a round.

At the start of each bulk cycle it prints `cycle <process CPU seconds>`, so that the benchmark can
tell what each sampling cycle cost, exactly, in this process. The fake host runs in this process
too, so its own work (building the stats that libvirt-python would build from libvirtd's answers)
is counted against the exporter.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Sequence

from benchmarks.measure import cpu_seconds_with_children
from libvirt_exporter.app import Exporter
from libvirt_exporter.cli import DISK_INTERVALS, SAMPLER_DEFAULTS, parse_config
from libvirt_exporter.config import parse_duration
from libvirt_exporter.logs import setup_logging
from libvirt_exporter.samplers import SamplerName
from tests.unit.fake_libvirt import IMAGES, FakeDomain, FakeHost

FROZEN = "frozen"
"""Its QEMU monitor never answers, and nothing outside a call to it shows it."""
STOPPED = "stopped"
"""Its QEMU process is stopped (SIGSTOP): /proc shows it, and its monitor does not answer."""
OUTAGE = "outage"
"""Its disks live on the storage that stops answering; its QEMU runs and answers what needs no disk."""
KINDS = (OUTAGE, STOPPED, FROZEN)
OUTAGE_MOUNT = "/srv/nfs"
"""The mount point of the storage that stops answering."""
DEFAULT_FROZEN = 5


def name_of(index: int) -> str:
    return f"vm-{index:04d}"


def hangs(
    domains: int, hung_every: int = 0, half_hung: bool = False, frozen: int = DEFAULT_FROZEN
) -> dict[str, str]:
    """Which domains hang, by name, and how (FROZEN, STOPPED or OUTAGE); the others are healthy.
    With `half_hung`, every second domain: `frozen` frozen, one in five stopped (at least one, the
    frozen ones among them), the rest on the storage that fails, spread at random (seeded)."""
    if half_hung:
        hung = [name_of(index) for index in range(1, domains, 2)]
        frozen = min(frozen, len(hung))
        stopped = min(len(hung) - frozen, max(1, len(hung) // 5 - frozen))
        kinds = [FROZEN] * frozen + [STOPPED] * stopped + [OUTAGE] * (len(hung) - frozen - stopped)
        random.Random(14).shuffle(kinds)
        return dict(zip(hung, kinds, strict=True))
    if hung_every:
        return {name_of(index): FROZEN for index in range(hung_every - 1, domains, hung_every)}
    return {}


def realistic_domain(index: int, storage: str = IMAGES) -> FakeDomain:
    return FakeDomain(
        name_of(index),
        index + 1,
        vcpus=4,
        disks=("vda", "vdb", "vdc"),
        nics=("vnet0", "vnet1"),
        storage=storage,
    )


def simulated_host(domains: int, hung: dict[str, str], outage_now: bool = True) -> FakeHost:
    host = FakeHost(
        [
            realistic_domain(index, OUTAGE_MOUNT if hung.get(name_of(index)) == OUTAGE else IMAGES)
            for index in range(domains)
        ]
    )
    host.mounts.append(OUTAGE_MOUNT)
    if outage_now and OUTAGE in hung.values():
        host.storage_outage(OUTAGE_MOUNT)
    for name, kind in hung.items():
        if kind == FROZEN:
            host.freeze(name)
        elif kind == STOPPED:
            host.stop_qemu(name)
    return host


def sizes_interval(interval: str) -> float:
    """How often disk sizes are read when every sampler runs every `interval`: as much more
    seldom than the bulk sampler's cycles as by default (5 minutes against 15 s), so that the
    cycles measured bear their share of the sizes' calls, spread over the cycles as they are."""
    bulk_default = parse_duration(SAMPLER_DEFAULTS[SamplerName.BULK][0])
    sizes_default = parse_duration(DISK_INTERVALS[SamplerName.BLOCK_INFO] or "")
    return parse_duration(interval) * sizes_default / bulk_default


def report_cycle_starts(run_cycle: Callable[[], None]) -> Callable[[], None]:
    """Print the CPU time the exporter's processes (ours and its front) have used at each cycle's
    start."""

    def reported() -> None:
        print(f"cycle {cpu_seconds_with_children(os.getpid()):.6f}", flush=True)
        run_cycle()

    return reported


def outage_at_cycle(cycle: int, host: FakeHost, sample: Callable[[], None]) -> Callable[[], None]:
    """`sample` (a bulk cycle's calls, sent once the round's probe is over) that, in its `cycle`-th
    run, first makes the storage stop answering."""
    cycles = 0

    def sampled() -> None:
        nonlocal cycles
        cycles += 1
        if cycles == cycle:
            host.storage_outage(OUTAGE_MOUNT)
        sample()

    return sampled


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", type=int, required=True)
    parser.add_argument("--hung-every", type=int, default=0, help="every n-th domain frozen; 0: none")
    parser.add_argument("--half-hung", action="store_true", help="every second domain hung (see above)")
    parser.add_argument("--frozen", type=int, default=DEFAULT_FROZEN, help="frozen domains with --half-hung")
    parser.add_argument(
        "--late-outage",
        type=int,
        default=0,
        help="the storage dies in the n-th bulk cycle; 0: before the start",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", default="2s", help="interval of every sampler")
    parser.add_argument("--deadline", default="1s", help="deadline of every sampler")
    args, exporter_flags = parser.parse_known_args(argv)
    samplers = [
        f"--sampler.{name}.{setting}={value}"
        for name in SAMPLER_DEFAULTS
        for setting, value in (("interval", args.interval), ("deadline", args.deadline))
    ]
    samplers.append(f"--sampler.block_info.interval={sizes_interval(args.interval):g}s")
    listen = f"--web.listen-address=127.0.0.1:{args.port}"
    quiet = "--log.level=error"  # hung domains would log a warning per call
    config, _ = parse_config([listen, quiet, *samplers, *exporter_flags])
    setup_logging(config.log_level, config.log_format)
    hung = hangs(args.domains, args.hung_every, args.half_hung, args.frozen)
    host = simulated_host(args.domains, hung, outage_now=not args.late_outage)
    exporter = Exporter(config, opener=host.open, host=host)
    if args.late_outage and OUTAGE in hung.values():
        exporter.bulk._sample = outage_at_cycle(args.late_outage, host, exporter.bulk._sample)  # type: ignore[method-assign]
    exporter.bulk.run_cycle = report_cycle_starts(exporter.bulk.run_cycle)  # type: ignore[method-assign]
    exporter.serve_forever()
    host.thaw_all()  # on SIGTERM: the threads stuck on hung domains and storage return, and it exits


if __name__ == "__main__":
    main(sys.argv[1:])

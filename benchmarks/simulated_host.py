"""The exporter on a simulated hypervisor: `python -m benchmarks.simulated_host --domains N --port P`.

The real exporter (its samplers, snapshot and HTTP server) with libvirt replaced by the fake host
of the unit tests, holding N realistic domains: 4 vCPUs, 3 disks, 2 NICs, balloon statistics. Every
`--hung-every`-th domain is hung: its QEMU monitor never answers, as with a frozen QEMU.

At the start of each bulk cycle it prints `cycle <process CPU seconds>`, so that the benchmark can
tell what each sampling cycle cost, exactly, in this process. The fake host runs in this process
too, so its own work (building the stats that libvirt-python would build from libvirtd's answers)
is counted against the exporter.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from libvirt_exporter.app import Exporter
from libvirt_exporter.cli import SAMPLER_DEFAULTS, parse_config
from libvirt_exporter.logs import setup_logging
from tests.unit.fake_libvirt import FakeDomain, FakeHost


def realistic_domain(index: int) -> FakeDomain:
    return FakeDomain(
        f"vm-{index:04d}",
        index + 1,
        vcpus=4,
        disks=("vda", "vdb", "vdc"),
        nics=("vnet0", "vnet1"),
    )


def simulated_host(domains: int, hung_every: int) -> FakeHost:
    host = FakeHost([realistic_domain(index) for index in range(domains)])
    if hung_every:
        for index in range(hung_every - 1, domains, hung_every):
            host.freeze(realistic_domain(index).name)
    return host


def report_cycle_starts(run_cycle: Callable[[], None]) -> Callable[[], None]:
    def reported() -> None:
        print(f"cycle {time.process_time():.6f}", flush=True)
        run_cycle()

    return reported


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", type=int, required=True)
    parser.add_argument("--hung-every", type=int, default=0, help="every n-th domain hangs; 0: none")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", default="2s", help="interval of every sampler")
    parser.add_argument("--deadline", default="1s", help="deadline of every sampler")
    args, exporter_flags = parser.parse_known_args(argv)
    samplers = [
        f"--sampler.{name}.{setting}={value}"
        for name in SAMPLER_DEFAULTS
        for setting, value in (("interval", args.interval), ("deadline", args.deadline))
    ]
    config, _ = parse_config([f"--web.listen-address=127.0.0.1:{args.port}", *samplers, *exporter_flags])
    setup_logging("error", "logfmt")  # hung domains would log a warning per call
    exporter = Exporter(config, opener=simulated_host(args.domains, args.hung_every).open)
    exporter.bulk.run_cycle = report_cycle_starts(exporter.bulk.run_cycle)  # type: ignore[method-assign]
    exporter.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

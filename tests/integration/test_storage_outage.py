"""A storage outage that hangs half the host's VMs loses no value that could still be read (issue 14).

Real libvirtd, real VMs, real faults: VMs whose disks live on a FUSE mount whose daemon is stopped
(tests/integration/storage.py) together with VMs whose QEMU is stopped with SIGSTOP, more hung VMs
in all than the exporter's cap on stuck calls, and healthy VMs beside them. A neighbour, another
client of libvirtd, asks for a healthy VM's `domblkinfo` all along, as an operator's tooling would.

Scraped every INTERVAL for two minutes, every scrape must show what an operator needs: every
healthy VM fresh in every sampler; every hung VM's state, CPU time and network counters fresh (the
`basic` sampler), the storage VMs' balloon and vCPU values fresh too (their QEMU still answers what
does not touch the disk) and their block values stale; each hung VM's hang signal; the storage flagged
stale; stuck calls within the cap; and the neighbour served in under a second. Then the same after
the exporter is restarted in the middle of the outage, and everything fresh again once it ends.

Timing bounds are the issue's plus SCHEDULING_SLACK, the convention of test_real_libvirt.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.exposition import Series, parse, value
from tests.integration.outage import (
    Neighbour,
    OutageVMs,
    begin_outage,
    destroy_when_libvirtd_answers,
    start_vms,
)
from tests.integration.storage import FuseStorage, fuse_storage
from tests.integration.vms import (
    DEADLINE,
    INTERVAL,
    Exporter,
    TinyVM,
    wait_for,
)
from tests.integration.vms import FAST_SAMPLING as ARGS

SCHEDULING_SLACK = 3.0
"""Seconds a loaded machine may add to a cycle's start (test_real_libvirt.py's convention)."""
FROZEN_COUNT, STORAGE_COUNT, HEALTHY_COUNT = 8, 8, 6
MAX_STUCK_CALLS = 12
"""The exporter's default --sampler.max-stuck-calls; 16 hung VMs are more than that."""
assert FROZEN_COUNT + STORAGE_COUNT > MAX_STUCK_CALLS

HOLD_S = 120.0
"""How long the outage state must hold at every scrape, once detected."""
HOLD_AFTER_RESTART_S = 15.0
DETECTION_BOUND = INTERVAL + DEADLINE + SCHEDULING_SLACK
"""A fault shows at the next cycle (within an interval), whose probe or call ends within a deadline."""
RESTART_BOUND = 2 * INTERVAL + SCHEDULING_SLACK
"""A restarted exporter reaches the same state within two intervals of answering."""
RECOVERY_BOUND = 2 * (INTERVAL + DEADLINE) + SCHEDULING_SLACK
"""Once the storage answers and the QEMUs run, what was stuck returns at once; two cycles bring
fresh values from everyone."""
WARM_UP_BOUND = 60.0
"""Every VM fresh at once before the faults: 22 VMs just started run their firmware for seconds, and
on a loaded machine their monitors then answer the bulk call late; this only waits for a start."""
SCRAPE_BOUND = 2.0
"""A scrape serves the snapshot in milliseconds; one that waited on a hung call would not return."""
MAX_AGE = INTERVAL + 3 * DEADLINE + INTERVAL + SCHEDULING_SLACK
"""Oldest a value flagged fresh may be when scraped: the exporter's stale age (interval + 3 x
deadline), plus the interval for which one snapshot is served, plus slack."""

SAMPLERS = ("basic", "bulk", "block")
ROUND_SAMPLERS = ("bulk", "block")
"""The samplers whose calls can hang, which start together each round after its survey (the job
sampler's cycles are empty here; the basic sampler's survey also runs on domain events)."""
QUIET_MARGIN = 0.5
"""The faults begin at least this long before the next round starts."""
QUIET_TIMEOUT = 60.0
THREADS = ("busy", "stuck")
HANG_SIGNALS = ("qemu_stopped", "storage_unresponsive", "monitor_busy")
BASIC_FAMILIES = (
    "libvirt_domain_state_code",
    "libvirt_domain_cpu_time_seconds_total",
    "libvirt_domain_cpu_user_seconds_total",
    "libvirt_domain_cpu_system_seconds_total",
)
INTERFACE_FAMILIES = tuple(
    f"libvirt_domain_interface_{direction}_{what}_total"
    for direction in ("receive", "transmit")
    for what in ("bytes", "packets", "errors", "drops")
)


# --- the VMs and the neighbour ------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FuseStorage]:
    with fuse_storage(tmp_path / "fuse") as mounted:
        yield mounted


@pytest.fixture
def outage_vms(libvirt_uri: str, storage: FuseStorage, tmp_path: Path) -> Iterator[OutageVMs]:
    """The VMs of the outage; whatever happens, the storage answers again, frozen QEMUs are thawed
    and every VM is destroyed afterwards."""
    local = tmp_path / "local"
    local.mkdir()
    starting = time.monotonic()
    groups = start_vms(
        libvirt_uri,
        {
            "f": (FROZEN_COUNT, local),
            "s": (STORAGE_COUNT, storage.mount_point),
            "h": (HEALTHY_COUNT, local),
        },
    )
    vms = OutageVMs(frozen=groups["f"], on_storage=groups["s"], healthy=groups["h"])
    print(f"{len(vms.all)} VMs started in {time.monotonic() - starting:.1f} s")
    try:
        yield vms
    finally:
        storage.resume()  # a QEMU waiting on its disk exits only once the storage answers
        destroy_when_libvirtd_answers(libvirt_uri, vms.all)


@pytest.fixture
def neighbour(libvirt_uri: str, outage_vms: OutageVMs) -> Iterator[Neighbour]:
    """The neighbour, not started yet; stopped afterwards."""
    watcher = Neighbour(libvirt_uri, outage_vms.healthy[0])
    yield watcher
    watcher.stop()


# --- reading a scrape ---------------------------------------------------------------------


def has_series(series: Series, name: str, **labels: str) -> bool:
    """Whether a sample `name` carries at least these labels."""
    wanted = set(labels.items())
    return any(found == name and wanted <= label_set for found, label_set in series)


@dataclass
class Scrape:
    series: Series
    seconds: float
    at: float
    """Unix time the scrape was answered."""


def scrape(exporter: Exporter) -> Scrape:
    started = time.monotonic()
    body = exporter.scrape(timeout=10)
    return Scrape(parse(body), time.monotonic() - started, time.time())


@dataclass
class Expect:
    """What one scrape must show, as a list of problems (empty: all is well)."""

    vms: OutageVMs
    storage: str
    """The storage label: the mount point's path."""
    neighbour: Neighbour

    def invariants(self, got: Scrape) -> list[str]:
        """What must hold at every scrape, from the first moment of the faults, even before they
        show: libvirtd reachable, quick scrapes, stuck calls within the cap, the neighbour served
        quickly. (The healthy VMs' freshness is part of the outage state: a host-wide call in
        flight when QEMUs freeze waits on them, and may take a healthy VM's values of that round
        with it.)"""
        problems = self.neighbour.problems()
        if value(got.series, "libvirt_up") != 1:
            problems.append(f"libvirt_up = {value(got.series, 'libvirt_up')}")
        if got.seconds >= SCRAPE_BOUND:
            problems.append(f"the scrape took {got.seconds:.2f} s")
        stuck = value(got.series, "libvirt_sampler_threads", state="stuck")
        if stuck is None or stuck > MAX_STUCK_CALLS:
            problems.append(f'libvirt_sampler_threads{{state="stuck"}} = {stuck}')
        return problems

    def healthy(self, got: Scrape, vms: list[TinyVM] | None = None) -> list[str]:
        problems = []
        for vm in self.vms.healthy if vms is None else vms:
            for sampler in SAMPLERS:
                problems += self.fresh(got, vm, sampler)
            for hang_signal in HANG_SIGNALS:
                problems += self.signal(got, vm, hang_signal, 0)
        return problems

    def outage(self, got: Scrape) -> list[str]:
        """The state the faults must be seen in: each hung VM's readable values fresh, the rest of
        its values stale, its hang signal, and the storage flagged."""
        problems = self.healthy(got)
        for vm in self.vms.hung:
            problems += self.fresh(got, vm, "basic")
            problems += self.basic_values(got, vm)
        for vm in self.vms.on_storage:
            problems += self.fresh(got, vm, "bulk")
            problems += self.stale(got, vm, "block")
            problems += self.signal(got, vm, "storage_unresponsive", 1)
            problems += self.signal(got, vm, "qemu_stopped", 0)
        for vm in self.vms.frozen:
            problems += self.stale(got, vm, "bulk")  # balloon and vCPUs need the monitor
            problems += self.stale(got, vm, "block")
            problems += self.signal(got, vm, "qemu_stopped", 1)
            problems += self.signal(got, vm, "storage_unresponsive", 0)
        problems += self.storage_state(got, stale=1)
        domains = value(got.series, "libvirt_storage_domains", storage=self.storage)
        if domains != len(self.vms.on_storage):
            problems.append(f"libvirt_storage_domains{{storage={self.storage}}} = {domains}")
        return problems

    def recovered(self, got: Scrape) -> list[str]:
        """After the outage: every VM fresh in every sampler, no signal, the storage fresh, no
        call stuck."""
        problems = self.healthy(got, self.vms.all) + self.storage_state(got, stale=0)
        stuck = value(got.series, "libvirt_sampler_threads", state="stuck")
        if stuck != 0:
            problems.append(f'libvirt_sampler_threads{{state="stuck"}} = {stuck}')
        return problems

    @staticmethod
    def fresh(got: Scrape, vm: TinyVM, sampler: str) -> list[str]:
        stale = value(got.series, "libvirt_domain_sample_stale", domain=vm.name, sampler=sampler)
        if stale != 0:
            return [f"{vm.name}: sample_stale{{sampler={sampler}}} = {stale}, want 0"]
        taken = value(got.series, "libvirt_domain_sample_timestamp_seconds", domain=vm.name, sampler=sampler)
        if taken is None or got.at - taken > MAX_AGE:
            age = "none" if taken is None else f"{got.at - taken:.1f} s old"
            return [f"{vm.name}: {sampler} values flagged fresh but {age}"]
        return []

    @staticmethod
    def stale(got: Scrape, vm: TinyVM, sampler: str) -> list[str]:
        stale = value(got.series, "libvirt_domain_sample_stale", domain=vm.name, sampler=sampler)
        return [] if stale == 1 else [f"{vm.name}: sample_stale{{sampler={sampler}}} = {stale}, want 1"]

    @staticmethod
    def signal(got: Scrape, vm: TinyVM, name: str, want: int) -> list[str]:
        found = value(got.series, "libvirt_domain_hang_signal", domain=vm.name, signal=name)
        return [] if found == want else [f"{vm.name}: hang_signal{{signal={name}}} = {found}, want {want}"]

    @staticmethod
    def basic_values(got: Scrape, vm: TinyVM) -> list[str]:
        missing = [name for name in BASIC_FAMILIES if value(got.series, name, domain=vm.name) is None]
        missing += [
            name
            for name in INTERFACE_FAMILIES
            if value(got.series, name, domain=vm.name, device=vm.interface_name) is None
        ]
        # libvirt still calls a SIGSTOPped QEMU, and one waiting on its disk, running.
        if not has_series(got.series, "libvirt_domain_state", domain=vm.name, state="running"):
            missing.append('libvirt_domain_state{state="running"}')
        return [f"{vm.name}: no {name}" for name in missing]

    def storage_state(self, got: Scrape, stale: int) -> list[str]:
        found = value(got.series, "libvirt_storage_sample_stale", storage=self.storage, sampler="storage")
        if found != stale:
            return [f"libvirt_storage_sample_stale{{storage={self.storage}}} = {found}, want {stale}"]
        return []


def is_up(exporter: Exporter) -> bool:
    return value(scrape(exporter).series, "libvirt_up") == 1


def summary(problems: list[str], limit: int = 15) -> str:
    """The problems, and the machine's load: on a 2-core machine shared with other work, a load of
    10 or more makes libvirt calls on healthy VMs overrun a 1 s deadline with no fault at all."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    load = f"\n  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    return "\n  " + "\n  ".join(problems[:limit]) + more + load


@dataclass
class Figures:
    max_stuck: float = 0.0
    max_scrape_s: float = 0.0
    detections: dict[str, float] = field(default_factory=dict)
    """Seconds after the faults began at which each part of the outage state first showed."""
    healthy_stale: list[str] = field(default_factory=list)
    """What a scrape showed of the healthy VMs before the outage state was reached."""

    def note(self, got: Scrape) -> None:
        stuck = value(got.series, "libvirt_sampler_threads", state="stuck") or 0.0
        self.max_stuck = max(self.max_stuck, stuck)
        self.max_scrape_s = max(self.max_scrape_s, got.seconds)

    def note_detections(self, expect: Expect, got: Scrape, elapsed: float) -> None:
        vms = expect.vms
        parts = {
            "storage stale": expect.storage_state(got, stale=1),
            "qemu_stopped": [p for vm in vms.frozen for p in expect.signal(got, vm, "qemu_stopped", 1)],
            "storage_unresponsive": [
                p for vm in vms.on_storage for p in expect.signal(got, vm, "storage_unresponsive", 1)
            ],
            "storage VMs' block stale": [p for vm in vms.on_storage for p in expect.stale(got, vm, "block")],
            "frozen VMs' bulk and block stale": [
                p for vm in vms.frozen for x in ("bulk", "block") for p in expect.stale(got, vm, x)
            ],
        }
        for part, problems in parts.items():
            if not problems:
                self.detections.setdefault(part, elapsed)
        self.healthy_stale += [f"{elapsed:.1f} s: {problem}" for problem in expect.healthy(got)]


def wait_until(
    exporter: Exporter,
    goal: Callable[[Scrape], list[str]],
    invariants: Callable[[Scrape], list[str]],
    since: float,
    bound: float,
    what: str,
    figures: Figures,
    on_scrape: Callable[[Scrape, float], None] | None = None,
    every: float = 0.25,
) -> float:
    """Scrape every `every` seconds until `goal` shows no problem; the invariants must hold at
    every scrape meanwhile. Returns the seconds from `since` (monotonic) to the scrape that met it,
    which must be within `bound`."""
    while True:
        got = scrape(exporter)
        figures.note(got)
        if on_scrape is not None:
            on_scrape(got, time.monotonic() - since)
        broken = invariants(got)
        assert not broken, f"while waiting for {what}:{summary(broken)}"
        missing = goal(got)
        took = time.monotonic() - since
        if not missing:
            assert took <= bound, f"{what} after {took:.1f} s, more than {bound:g} s"
            return took
        assert took <= bound, f"{what}: not within {bound:g} s; still{summary(missing)}"
        time.sleep(every)


def hold(
    exporter: Exporter, check: Callable[[Scrape], list[str]], seconds: float, what: str, figures: Figures
) -> int:
    """Scrape every INTERVAL for `seconds`; every scrape must show no problem. Returns the count."""
    started = time.monotonic()
    count = 0
    while (elapsed := time.monotonic() - started) < seconds:
        got = scrape(exporter)
        figures.note(got)
        count += 1
        problems = check(got)
        assert not problems, f"{what}, scrape {count} at {elapsed:.0f} s:{summary(problems)}"
        time.sleep(max(0.0, started + count * INTERVAL - time.monotonic()))
    return count


def between_rounds(exporter: Exporter) -> None:
    """Return at a moment when the exporter has no call in flight: the cycles of its latest round
    are all over, no thread runs a libvirt call, and the next round is at least QUIET_MARGIN away.
    A round's start is its cycles' end minus their duration; the next one starts an interval later.
    On a loaded machine a round can take most of its interval: wait for one that leaves time."""

    def not_quiet(got: Scrape) -> str | None:
        starts = []
        for sampler in ROUND_SAMPLERS:
            ended = value(got.series, "libvirt_sampler_last_success_timestamp_seconds", sampler=sampler)
            took = value(got.series, "libvirt_sampler_duration_seconds", sampler=sampler)
            if ended is None or took is None:
                return f"no cycle of {sampler} yet"
            starts.append(ended - took)
        if max(starts) - min(starts) > DEADLINE:
            return f"the latest cycles are not of one round: they started at {starts}"
        threads = {state: value(got.series, "libvirt_sampler_threads", state=state) for state in THREADS}
        if any(count != 0 for count in threads.values()):
            return f"calls in flight: {threads}"
        left = max(starts) + INTERVAL - time.time()
        return None if left > QUIET_MARGIN else f"the next round starts in {left:.2f} s"

    deadline = time.monotonic() + QUIET_TIMEOUT
    while (why := not_quiet(scrape(exporter))) is not None:
        assert time.monotonic() < deadline, f"no moment between two rounds within {QUIET_TIMEOUT:g} s: {why}"
        time.sleep(0.05)


# --- the test -----------------------------------------------------------------------------


def test_a_storage_outage_with_frozen_qemus_loses_no_value_that_could_still_be_read(
    libvirt_uri: str,
    storage: FuseStorage,
    outage_vms: OutageVMs,
    neighbour: Neighbour,
    run_exporter: Callable[..., Exporter],
) -> None:
    vms = outage_vms
    expect = Expect(vms, str(storage.mount_point), neighbour)
    figures = Figures()
    exporter = run_exporter(*ARGS)
    warm_up = time.monotonic()
    warmed = wait_until(
        exporter,
        lambda got: expect.healthy(got, vms.all) + expect.storage_state(got, stale=0),
        lambda got: [],
        warm_up,
        WARM_UP_BOUND,
        "every VM and the storage fresh before the faults",
        figures,
        every=1.0,  # parsing 22 VMs' series costs CPU that a loaded machine lacks
    )
    print(f"every VM fresh {warmed:.1f} s after the exporter answered")

    neighbour.start()
    # The faults begin while no call is in flight. A block call already sent when the storage dies
    # waits on it, and QEMU's main loop with it: from then on that VM's balloon and vCPU values
    # cannot be read either, by anyone (docs/storage-outage-measurements.md); and a round decides
    # whom to call from the survey at its start. What the exporter must do is what follows.
    between_rounds(exporter)
    faults_began = time.monotonic()
    begin_outage(storage, vms.frozen)
    print(f"faults injected in {time.monotonic() - faults_began:.2f} s")

    detected = wait_until(
        exporter,
        expect.outage,
        expect.invariants,
        faults_began,
        DETECTION_BOUND,
        "the outage state",
        figures,
        lambda got, elapsed: figures.note_detections(expect, got, elapsed),
    )
    print(f"outage state reached {detected:.1f} s after the faults began; parts: {figures.detections}")
    print(f"healthy VMs not fresh meanwhile: {figures.healthy_stale or 'none'}")

    def both(got: Scrape) -> list[str]:
        return expect.invariants(got) + expect.outage(got)

    count = hold(exporter, both, HOLD_S, "during the outage", figures)
    print(f"held through {count} scrapes; neighbour's slowest domblkinfo so far {neighbour.slowest():.3f} s")

    stopping = time.monotonic()
    code = exporter.stop()
    stopped = time.monotonic()
    print(f"exporter stopped in {stopped - stopping:.1f} s, exit code {code}")
    exporter = run_exporter(*ARGS)
    answering = time.monotonic()
    # It answers HTTP before its first connection to libvirtd is open, and says libvirt_up 0 until
    # then, rightly; the invariants (libvirt_up 1 among them) hold from that connection on.
    wait_for(partial(is_up, exporter), RESTART_BOUND, "the restarted exporter connected to libvirtd")
    converged = wait_until(
        exporter,
        expect.outage,
        expect.invariants,
        answering,
        RESTART_BOUND,
        "the outage state after the restart",
        figures,
    )
    print(
        f"restarted exporter answered {answering - stopped:.1f} s after the old one exited and"
        f" reached the outage state {converged:.1f} s later"
    )
    count = hold(exporter, both, HOLD_AFTER_RESTART_S, "after the restart, during the outage", figures)
    print(f"held through {count} scrapes after the restart")

    ending = time.monotonic()
    storage.resume()
    for vm in vms.frozen:
        vm.thaw()
    recovered = wait_until(
        exporter,
        expect.recovered,
        expect.invariants,
        ending,
        RECOVERY_BOUND,
        "every VM and the storage fresh after the outage",
        figures,
    )
    neighbour.stop()
    print(
        f"recovered {recovered:.1f} s after the outage ended; max stuck threads {figures.max_stuck:g};"
        f" slowest scrape {figures.max_scrape_s:.3f} s; neighbour: {len(neighbour.calls)} calls,"
        f" slowest {neighbour.slowest():.3f} s"
    )
    assert not neighbour.problems(), summary(neighbour.problems())

"""One chaos run: the exporter on the private libvirtd, scraped three ways, while faults hit at random.

The run mounts the storage that can die (storage.py) and warms up (the control VM and a pool of VMs,
some with their disks on that storage, fresh in the metrics), then for `duration` seconds starts a
fault every 0.5-3 s, up to MAX_PARALLEL at once: first every kind once, in random order (one that
finds the host not ready after all is tried again), then at random by WEIGHTS. Then it lets the host
settle and checks that what the exporter serves matches libvirt's domains and disks. What it
measured goes to a RunResult for report.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos import faults, private_libvirtd
from tests.chaos.faults import (
    FAULTS,
    DeadStorageCheck,
    FaultContext,
    FaultRecord,
    devices_of,
    fresh,
    hang_signal,
)
from tests.chaos.host import STORAGE_VMS, ChaosHost
from tests.chaos.observe import (
    PeriodicScraper,
    ResourceSample,
    ResourceSampler,
    ScrapeStats,
    Watcher,
)
from tests.chaos.private_libvirtd import PrivateLibvirtd
from tests.chaos.storage import Storage
from tests.exposition import Series, domains_in, value
from tests.integration.vms import FAST_SAMPLING, Exporter, start_exporter

MAX_PARALLEL = 3
POOL_MIN, POOL_MAX = 2, 5
POOL_START = POOL_MIN + 1
"""STORAGE_VMS[0] of them on the storage, the other beside."""
WEIGHTS = {
    "vm_freeze": 4,
    "disk_attach": 2,
    "disk_detach": 2,
    "vm_create": 2,
    "vm_destroy": 1,
    "qemu_kill": 1,
    "libvirtd_restart": 1,
    "libvirtd_freeze": 1,
    "storage_outage": 2,
}
FALSE_ALARMS = ("qemu_stopped", "storage_unresponsive")
"""Hang signals a VM no fault touches must never show (`monitor_busy` may: a slow VM is slow)."""
LIBVIRTD_KINDS = ("libvirtd_restart", "libvirtd_freeze")
LIBVIRTD_SPACING_S = 20.0
"""Time between two libvirtd faults, so that most of the run checks the VMs with libvirtd up."""
HAMMER_WORKERS = 4
RESOURCE_PERIOD_S = 2.0
WARMUP_TIMEOUT_S = 120.0


@dataclass
class HealthyCheck:
    """Every scrape checks that the VMs no fault is touching are fresh."""

    checked: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)
    busy_monitor: int = 0
    """Stale while libvirt reported its QEMU monitor busy: the VM itself was slow, the flag right."""
    false_signals: int = 0
    """A hang signal of a healthy VM at 1 (`qemu_stopped`, `storage_unresponsive`: a false alarm)."""
    signal_examples: list[str] = field(default_factory=list)


@dataclass
class StuckCheck:
    """The exporter's stuck calls (`libvirt_sampler_threads{state="stuck"}`) at every watcher scrape."""

    checked: int = 0
    most: float = 0.0
    most_at: float = 0.0
    """Seconds since the run started."""


@dataclass
class RunResult:
    duration: float
    seed: int
    exporter_args: tuple[str, ...]
    records: list[FaultRecord] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    scrapes: list[ScrapeStats] = field(default_factory=list)
    resources: list[ResourceSample] = field(default_factory=list)
    baseline: ResourceSample | None = None
    healthy: HealthyCheck = field(default_factory=HealthyCheck)
    stuck: StuckCheck = field(default_factory=StuckCheck)
    dead_storage: DeadStorageCheck = field(default_factory=DeadStorageCheck)
    settled: str | None = None
    """None when the host settled into a consistent state after the faults; else what was wrong."""
    exporter_log: str = ""
    exporter_exit: int | None = None
    exporter_alive_at_end: bool = False


class Run:
    def __init__(
        self,
        workdir: Path,
        libvirtd: PrivateLibvirtd,
        duration: float,
        seed: int,
        hold_s: tuple[float, float],
    ) -> None:
        self.workdir = workdir
        self.duration = duration
        self.rng = random.Random(seed)
        self.storage = Storage(workdir / "storage-backing", workdir / "storage")
        self.host = ChaosHost(private_libvirtd.URI, workdir / "vms", self.rng, libvirtd, self.storage)
        self.result = RunResult(duration, seed, FAST_SAMPLING)
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._running: dict[threading.Thread, str] = {}
        self._pending: list[str] = []
        """Kinds not injected yet in this run."""
        self._started = time.monotonic()

    def execute(self) -> RunResult:
        """The run; whatever ends it (a failure, Ctrl-C), the storage is continued before the VMs
        are destroyed, and unmounted after (see storage.py for when even this cannot run)."""
        (self.workdir / "vms").mkdir(parents=True, exist_ok=True)
        self.storage.mount(self.workdir / "logs" / "bindfs.log")
        try:
            self.host.start_control()
            for index in range(POOL_START):
                self.host.release(self.host.create(on_storage=index < STORAGE_VMS[0]))
            exporter = start_exporter(self.host.uri, FAST_SAMPLING, self.workdir / "exporter.log")
            try:
                self._observe_and_inject(exporter)
            finally:
                self.storage.cont()
                self.result.exporter_alive_at_end = exporter.process.poll() is None
                self.result.exporter_exit = exporter.stop()
                self.result.exporter_log = exporter.log_text()
        finally:
            try:
                self.host.destroy_all()
            finally:
                print(f"chaos: storage {self.storage.path} {self.storage.close()}", flush=True)
        return self.result

    def _observe_and_inject(self, exporter: Exporter) -> None:
        watcher = Watcher(exporter.url)
        scraper = PeriodicScraper("scraper", exporter.url, 1.0, lambda _: None)
        started = self._started = time.monotonic()
        resources = ResourceSampler(exporter.process.pid, exporter.log_path, started, RESOURCE_PERIOD_S)
        for thread in (watcher.scraper, scraper, resources):
            thread.start()
        ctx = FaultContext(self.host, watcher, started, self.rng, self.hold_s, self.result.dead_storage)
        watcher.on_series(self._check_stuck)
        try:
            self._warm_up(ctx)
            self.result.baseline = resources.sample()
            watcher.on_series(self._check_healthy)
            hammer = self._start_hammer(exporter.url)
            self._inject(ctx)
            self._settle(ctx)
            self.result.scrapes.append(self._hammer_stats(hammer))
        finally:
            for stoppable in (watcher.scraper, scraper, resources):
                stoppable.stop()
            self.result.scrapes[:0] = [scraper.stats, watcher.scraper.stats]
            self.result.resources = resources.samples

    def _warm_up(self, ctx: FaultContext) -> None:
        names = {vm.name for vm in self.host.all_vms()}
        ready = ctx.watcher.expect(lambda s: all(fresh(s, name) for name in names))
        if ctx.wait(ready, WARMUP_TIMEOUT_S) is None:
            raise RuntimeError(f"the VMs were not fresh in the metrics within {WARMUP_TIMEOUT_S:g} s")

    def _start_hammer(self, url: str) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.workdir / "hammer.json"
        command = [sys.executable, "-m", "tests.chaos.hammer", url, str(self.duration), str(HAMMER_WORKERS)]
        return subprocess.Popen([*command, str(out)]), out

    def _hammer_stats(self, hammer: tuple[subprocess.Popen[bytes], Path]) -> ScrapeStats:
        process, out = hammer
        process.wait(timeout=60)
        return ScrapeStats(**json.loads(out.read_text()))

    # --- faults -------------------------------------------------------------------

    def _inject(self, ctx: FaultContext) -> None:
        self._pending = list(FAULTS)
        self.rng.shuffle(self._pending)  # every kind once first, in random order
        while ctx.now() < self.duration:
            if self._running_count() < MAX_PARALLEL:
                kind = self._next_kind()
                if kind is not None:
                    self._start_fault(ctx, kind)
            time.sleep(self.rng.uniform(0.5, 3.0))
        for thread in list(self._running):
            thread.join()

    def _next_kind(self) -> str | None:
        """The next kind of fault the host can take now: a pending one first, else by WEIGHTS.

        While an outage is pending and nothing but claims keeps it from starting, other faults leave
        the storage's VMs alone: it needs them all unclaimed at once, and with faults claiming VMs at
        random it could wait out a short run."""
        with self._lock:
            pending = list(self._pending)
        self.host.storage_reserved = "storage_outage" in pending and not self._restart_waits()
        for kind in pending:
            if self._can_start(kind):
                with self._lock:
                    self._pending.remove(kind)
                return kind
        kinds = [kind for kind in WEIGHTS if self._can_start(kind)]
        if not kinds:
            return None
        return self.rng.choices(kinds, weights=[WEIGHTS[kind] for kind in kinds])[0]

    def _can_start(self, kind: str) -> bool:
        pool = self.host.pool()
        free = [vm for vm in pool if not vm.claimed]
        running = list(self._running.values())
        if kind in LIBVIRTD_KINDS:
            quiet_for = time.monotonic() - self.host.libvirtd_quiet_since
            if kind == "libvirtd_restart" and "storage_outage" in running:
                return False  # see faults.libvirtd_restart
            return not set(running) & set(LIBVIRTD_KINDS) and quiet_for >= LIBVIRTD_SPACING_S
        if kind == "vm_create":
            return len(pool) < POOL_MAX and "vm_create" not in running
        if kind in ("vm_destroy", "qemu_kill"):
            return len(pool) > POOL_MIN and bool(free)
        if kind == "disk_detach":
            return any(vm.hotplugged for vm in free)
        if kind == "storage_outage":
            held = self.host.storage_vms()
            enough = len(held) >= STORAGE_VMS[0] and not any(vm.claimed for vm in held)
            return enough and not self._restart_waits()
        return bool(free)

    def _restart_waits(self) -> bool:
        """A restart waits for the storage to answer, and outages come back to back in a short run:
        none starts while the restart has yet to run once, or it might never."""
        with self._lock:
            return "libvirtd_restart" in self._running.values() or "libvirtd_restart" in self._pending

    def _running_count(self) -> int:
        with self._lock:
            for thread in [t for t in self._running if not t.is_alive()]:
                del self._running[thread]
            return len(self._running)

    def _start_fault(self, ctx: FaultContext, kind: str) -> None:
        thread = threading.Thread(target=self._run_fault, args=(ctx, kind), name=kind, daemon=True)
        with self._lock:
            self._running[thread] = kind
        thread.start()

    def _run_fault(self, ctx: FaultContext, kind: str) -> None:
        try:
            record = FAULTS[kind](ctx)
        except Exception:
            self.result.harness_errors.append(f"{kind} at {ctx.now():.0f} s: {traceback.format_exc()}")
            return
        if record is not None:
            self.result.records.append(record)
        elif not any(done.kind == kind for done in self.result.records):
            # It found the host not ready after all (a harness thread on the storage, a VM claimed
            # meanwhile): pending again, so that every kind still runs once in a short run.
            with self._lock:
                self._pending.append(kind)

    # --- checks while it runs, and after ------------------------------------------------

    def _check_stuck(self, series: Series, at: float) -> None:
        stuck = value(series, "libvirt_sampler_threads", state="stuck")
        check = self.result.stuck
        check.checked += 1
        if stuck is not None and stuck > check.most:
            check.most, check.most_at = stuck, at - self._started

    def _check_healthy(self, series: Series, at: float) -> None:
        """The VMs no fault touches, and none touched within VM_BOUND, must be fresh. One whose QEMU
        monitor libvirt reports busy is slow itself (a chaos run can leave a QEMU so): its stale
        flag is right, and counted apart."""
        if self.host.libvirtd_down or at - self.host.libvirtd_quiet_since < faults.VM_BOUND:
            return
        check = self.result.healthy
        for vm in self.host.all_vms():
            if vm.claimed or at - vm.quiet_since < faults.VM_BOUND:
                continue
            check.checked += 1
            for signal in FALSE_ALARMS:
                if hang_signal(series, vm.name, signal) == 1:
                    check.false_signals += 1
                    if len(check.signal_examples) < 5:
                        check.signal_examples.append(f"{vm.name} {signal} at {at - self._started:.1f} s")
            if fresh(series, vm.name):
                continue
            if (value(series, "libvirt_domain_monitor_busy_seconds", domain=vm.name) or 0) > 0:
                check.busy_monitor += 1
            else:
                check.violations += 1
                if len(check.examples) < 5:
                    check.examples.append(f"{vm.name} at {at - self._started:.1f} s")

    def _settle(self, ctx: FaultContext) -> None:
        """After the last fault: the metrics must come to match libvirt exactly, every VM fresh."""
        problems: list[str] = []

        def consistent(series: Series) -> bool:
            problems[:] = self._inconsistencies(series)
            return not problems

        if ctx.wait(ctx.watcher.expect(consistent), faults.RECOVERY_BOUND) is None:
            self.result.settled = "; ".join(problems) or "no scrape"

    def _inconsistencies(self, series: Series) -> list[str]:
        problems = []
        if value(series, "libvirt_up") != 1:
            problems.append("libvirt_up is not 1")
        running = self.host.libvirt_domains()
        served = domains_in(series)
        if served != running:
            problems.append(f"domains served {sorted(served)} but running {sorted(running)}")
        for vm in self.host.all_vms():
            if not fresh(series, vm.name):
                problems.append(f"{vm.name} is not fresh")
            disks = devices_of(series, vm.name) - {vm.vm.interface_name}
            if disks != vm.disks():
                problems.append(f"{vm.name} has disks {sorted(vm.disks())} but serves {sorted(disks)}")
        problems.extend(self._storage_inconsistencies(series))
        return problems

    def _storage_inconsistencies(self, series: Series) -> list[str]:
        """The storage that can die, up again: fresh, with the count of the VMs on it; no series
        of it at all when none is."""
        path, held = self.storage.path, len(self.host.storage_vms())
        if not held:
            left = sorted({name for name, labels in series if dict(labels).get("storage") == path})
            return [f"no VM is on {path} but {left} are served for it"] if left else []
        problems = []
        if value(series, "libvirt_storage_sample_stale", storage=path, sampler="storage") != 0:
            problems.append(f"storage {path} is not fresh")
        served = value(series, "libvirt_storage_domains", storage=path)
        if served != held:
            problems.append(f"{held} VMs are on {path} but libvirt_storage_domains is {served}")
        return problems

"""The faults, each injected, watched for in the exporter's metrics, held, undone and watched again.

Every fault kind is a function that takes what it needs from a FaultContext and returns the
FaultRecord of what happened (None when the host offers no target for it right now). How soon a
fault must show is the product's promise: within one deadline plus one interval for what the
samplers see (a frozen VM's timeout and stale flag, a VM or disk that goes, libvirtd restarted, a
storage that stops answering), within the liveness probe's bound for a frozen libvirtd, and within
a cycle's longest for a new VM's or disk's values, plus SCHEDULING_SLACK on a noisy 2-core machine.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from libvirt_exporter.connection import (
    MAX_BACKOFF_SECONDS,
    PROBE_INTERVAL_SECONDS,
    UNRESPONSIVE_AFTER_SECONDS,
)
from tests.chaos.host import HOTPLUG_TARGETS, ChaosHost, ChaosVM
from tests.chaos.observe import Expectation, Watcher
from tests.chaos.storage import Storage
from tests.exposition import Series, domains_in, value
from tests.integration.vms import DEADLINE, INTERVAL

SCHEDULING_SLACK = 3.0
"""Measured: a frozen libvirtd noticed after 10.4 s (2 s + 6 s by design) at a load of 9 on 2 cores."""
SAMPLERS = ("bulk", "block")
"""The samplers whose calls go to QEMU."""
FRESH_SAMPLERS = ("basic", *SAMPLERS)
"""The samplers a healthy VM has fresh values of; `basic` needs no QEMU (state, CPU, network)."""
VM_BOUND = DEADLINE + INTERVAL + SCHEDULING_SLACK
"""A fault a sampler sees: the next cycle starts within an interval, its call ends within a deadline."""
CYCLE_BOUND = INTERVAL + 3 * DEADLINE + SCHEDULING_SLACK
"""A new VM or disk with values: a cycle may take three deadlines to bring them (config.stale_after)."""
LIVENESS_BOUND = PROBE_INTERVAL_SECONDS + UNRESPONSIVE_AFTER_SECONDS + SCHEDULING_SLACK
RECOVERY_BOUND = MAX_BACKOFF_SECONDS + 2 * (INTERVAL + DEADLINE) + SCHEDULING_SLACK
"""Fresh values again after a fault ends: the reconnect backoff at worst, then two cycles."""
STORAGE_OUTAGE_MAX_S = 2 * RECOVERY_BOUND + 60.0
"""Longer than any storage outage lasts: its detection's wait, its hold, its recovery's wait."""
LIBVIRTD_FREEZE_S = (10.0, 20.0)
"""Well past the 6 s after which an unanswered probe counts libvirtd as unreachable."""


@dataclass
class FaultRecord:
    """One injected fault; times are seconds since the run started."""

    kind: str
    target: str
    injected_at: float
    bound: float
    detected_at: float | None = None
    recovered_at: float | None = None
    ended_at: float | None = None
    note: str = ""

    @property
    def detection_seconds(self) -> float | None:
        return None if self.detected_at is None else self.detected_at - self.injected_at


@dataclass
class DeadStorageCheck:
    """At every watcher scrape while a storage is stopped and until its VMs have recovered (libvirtd
    up): each VM on it serves fresh `basic` values (state, CPU, network need no storage)."""

    checked: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class FaultContext:
    host: ChaosHost
    watcher: Watcher
    started: float
    """Monotonic time the run started."""
    rng: random.Random
    hold_s: tuple[float, float]
    """How long a frozen VM (or a stopped storage) stays so."""
    dead_storage: DeadStorageCheck = field(default_factory=DeadStorageCheck)

    def now(self) -> float:
        return time.monotonic() - self.started

    def wait(self, expectation: Expectation, timeout: float = RECOVERY_BOUND) -> float | None:
        """When (in run time) the metrics first showed `expectation`; None if not within `timeout`."""
        met_at = expectation.wait(timeout)
        self.watcher.done(expectation)
        return None if met_at is None else met_at - self.started


def fresh(series: Series, domain: str) -> bool:
    return all(
        value(series, "libvirt_domain_sample_stale", domain=domain, sampler=s) == 0 for s in FRESH_SAMPLERS
    )


def hang_signal(series: Series, domain: str, signal: str) -> float | None:
    return value(series, "libvirt_domain_hang_signal", domain=domain, signal=signal)


def devices_of(series: Series, domain: str) -> set[str]:
    return {
        labels["device"]
        for _, label_set in series
        if (labels := dict(label_set)).get("domain") == domain and "device" in labels
    }


def _counter(series: Series, name: str, **labels: str) -> float:
    return value(series, name, **labels) or 0.0


# --- faults on one VM ------------------------------------------------------------------


def vm_freeze(ctx: FaultContext) -> FaultRecord | None:
    """SIGSTOP a VM's QEMU: the round's survey sees it stopped and no call goes to it, or a call sent
    just before the freeze times out and stays in flight (the block sampler's or the bulk
    sampler's, whichever touched QEMU first; the other then sends none); its block values go stale,
    as the stuck-call alert reads it."""
    chaos_vm = ctx.host.claim()
    if chaos_vm is None:
        return None
    name = chaos_vm.name
    timeouts = "libvirt_domain_sample_timeouts_total"
    before = sum(_counter(ctx.watcher.latest(), timeouts, domain=name, sampler=s) for s in SAMPLERS)

    def flagged(s: Series) -> bool:
        in_flight = "libvirt_domain_call_in_flight_seconds"
        stuck = max(value(s, in_flight, domain=name, sampler=sampler) or 0 for sampler in SAMPLERS)
        stale = value(s, "libvirt_domain_sample_stale", domain=name, sampler="block") == 1
        timed_out = sum(_counter(s, timeouts, domain=name, sampler=sampler) for sampler in SAMPLERS)
        # After a libvirtd restart, libvirtd's own reconnect to the frozen QEMU holds the monitor
        # and no call of ours gets stuck: the busy monitor shows it (as the stuck-call alert reads).
        busy = value(s, "libvirt_domain_monitor_busy_seconds", domain=name) or 0
        stopped = value(s, "libvirt_domain_hang_signal", domain=name, signal="qemu_stopped") == 1
        return stale and (stopped or timed_out > before or stuck >= DEADLINE or busy >= DEADLINE)

    try:
        with ctx.host.gate.shared():  # never while libvirtd is being stopped with SIGTERM
            # Watched from the freeze on, not from before the gate: a libvirtd fault meanwhile
            # would make the VM look flagged (stale, its calls stuck) before it is frozen.
            seen = ctx.watcher.expect(flagged)
            chaos_vm.vm.freeze()
            restarts = ctx.host.libvirtd_restarts
        record = FaultRecord("vm_freeze", name, ctx.now(), VM_BOUND)
        record.detected_at = ctx.wait(seen)
        time.sleep(ctx.rng.uniform(*ctx.hold_s))

        def recovered(s: Series) -> bool:
            return fresh(s, name) and hang_signal(s, name, "qemu_stopped") == 0

        settled = ctx.watcher.expect(lambda s: recovered(s) or name not in domains_in(s))
        with contextlib.suppress(FileNotFoundError):  # its pid file: libvirtd may have ended it
            chaos_vm.vm.thaw()
        record.ended_at = ctx.now()
        ctx.wait(settled)
        if ctx.host.libvirtd_restarts != restarts and _ended_by_libvirtd(ctx, chaos_vm):
            record.note = "ended by libvirtd, restarted while it was frozen"
            record.recovered_at = ctx.wait(ctx.watcher.expect(lambda s: name not in domains_in(s)))
            return record
        record.recovered_at = ctx.wait(ctx.watcher.expect(recovered))
        return record
    finally:
        ctx.host.release(chaos_vm)


def _ended_by_libvirtd(ctx: FaultContext, chaos_vm: ChaosVM) -> bool:
    """Whether libvirtd ended the VM, which it does to a VM whose QEMU was frozen in the middle of a
    monitor command when libvirtd was restarted: once thawed, QEMU answers that command on the new
    libvirtd's connection, whose reconnect then fails (`unexpected type returned by QEMU command
    'query-migrate-capabilities'`) and shuts the VM down, reason=daemon (measured on libvirt 9.0).
    That is libvirt's doing: the exporter must then drop the VM's series, as for any VM that goes.
    Called once the metrics showed the VM fresh again or gone, which is after libvirtd's reconnect
    (it happens as soon as QEMU answers)."""
    with ctx.host.gate.shared():  # libvirtd up
        if chaos_vm.name in ctx.host.libvirt_domains():
            return False
    chaos_vm.vm.frozen = False
    ctx.host.forget(chaos_vm)
    return True


def _gone(ctx: FaultContext, kind: str, chaos_vm: ChaosVM, act: Callable[[ChaosVM], None]) -> FaultRecord:
    """A VM that goes away: all its series must go too."""
    seen = ctx.watcher.expect(lambda s: chaos_vm.name not in domains_in(s))
    injected_at = ctx.now()
    act(chaos_vm)
    record = FaultRecord(kind, chaos_vm.name, injected_at, VM_BOUND)
    record.detected_at = record.ended_at = record.recovered_at = ctx.wait(seen)
    return record


def vm_destroy(ctx: FaultContext) -> FaultRecord | None:
    chaos_vm = ctx.host.claim()
    if chaos_vm is None:
        return None
    return _gone(ctx, "vm_destroy", chaos_vm, ctx.host.destroy)


def qemu_kill(ctx: FaultContext) -> FaultRecord | None:
    """SIGKILL a VM's QEMU, half of the time after freezing it: libvirt ends the transient domain."""
    chaos_vm = ctx.host.claim()
    if chaos_vm is None:
        return None
    if ctx.rng.random() < 0.5:
        with ctx.host.gate.shared():  # a hung QEMU that is then killed: its stuck calls must end too
            chaos_vm.vm.freeze()
        time.sleep(ctx.rng.uniform(0, 2 * INTERVAL))
    record = _gone(ctx, "qemu_kill", chaos_vm, ctx.host.kill_qemu)
    ctx.host.forget(chaos_vm)
    return record


def vm_create(ctx: FaultContext) -> FaultRecord | None:
    """A new VM: its series appear, fresh, within a cycle."""
    injected_at = ctx.now()
    chaos_vm = ctx.host.create()
    seen = ctx.watcher.expect(lambda s: fresh(s, chaos_vm.name))
    record = FaultRecord("vm_create", chaos_vm.name, injected_at, CYCLE_BOUND)
    record.detected_at = record.ended_at = record.recovered_at = ctx.wait(seen)
    ctx.host.release(chaos_vm)
    return record


def disk_attach(ctx: FaultContext) -> FaultRecord | None:
    chaos_vm = ctx.host.claim(lambda vm: len(vm.hotplugged) < len(HOTPLUG_TARGETS))
    if chaos_vm is None:
        return None
    try:
        target = next(t for t in HOTPLUG_TARGETS if t not in chaos_vm.hotplugged)
        capacity = "libvirt_domain_block_capacity_bytes"
        seen = ctx.watcher.expect(
            lambda s: value(s, capacity, domain=chaos_vm.name, device=target) is not None
        )
        record = FaultRecord("disk_attach", f"{chaos_vm.name}/{target}", ctx.now(), CYCLE_BOUND)
        ctx.host.attach_disk(chaos_vm, target)
        record.detected_at = record.ended_at = record.recovered_at = ctx.wait(seen)
        return record
    finally:
        ctx.host.release(chaos_vm)


def disk_detach(ctx: FaultContext) -> FaultRecord | None:
    chaos_vm = ctx.host.claim(lambda vm: bool(vm.hotplugged))
    if chaos_vm is None:
        return None
    try:
        target = ctx.rng.choice(sorted(chaos_vm.hotplugged))
        seen = ctx.watcher.expect(lambda s: target not in devices_of(s, chaos_vm.name))
        record = FaultRecord("disk_detach", f"{chaos_vm.name}/{target}", ctx.now(), VM_BOUND)
        ctx.host.detach_disk(chaos_vm, target)
        record.detected_at = record.ended_at = record.recovered_at = ctx.wait(seen)
        return record
    finally:
        ctx.host.release(chaos_vm)


# --- faults of libvirtd ----------------------------------------------------------------


def _libvirtd_noticed(before: float) -> Callable[[Series], bool]:
    """`libvirt_up` dropped, or it has already come back: the reconnect counter moved on."""
    return lambda s: (
        value(s, "libvirt_up") == 0 or _counter(s, "libvirt_connection_reconnects_total") > before
    )


def _control_flowing_since(ctx: FaultContext, wall_time: float) -> Callable[[Series], bool]:
    """Up again, and the control VM has fresh values taken after `wall_time`."""
    assert ctx.host.control is not None
    name = ctx.host.control.name

    def flowing(s: Series) -> bool:
        taken = value(s, "libvirt_domain_sample_timestamp_seconds", domain=name, sampler="block") or 0
        return value(s, "libvirt_up") == 1 and fresh(s, name) and taken > wall_time

    return flowing


def _libvirtd_fault(
    ctx: FaultContext,
    kind: str,
    bound: float,
    inject: Callable[[], str],
    undo: Callable[[FaultRecord], None],
    prepare: Callable[[], None] = lambda: None,
) -> FaultRecord:
    with ctx.host.gate.exclusive():
        prepare()
        ctx.host.libvirtd_down = True
        try:
            before = _counter(ctx.watcher.latest(), "libvirt_connection_reconnects_total")
            seen = ctx.watcher.expect(_libvirtd_noticed(before))
            injected_at = ctx.now()
            record = FaultRecord(kind, "libvirtd", injected_at, bound, note=inject())
            record.detected_at = ctx.wait(seen)
            undo(record)
            record.ended_at, wall_time = ctx.now(), time.time()
            record.recovered_at = ctx.wait(ctx.watcher.expect(_control_flowing_since(ctx, wall_time)))
            return record
        finally:
            ctx.host.libvirtd_down = False
            ctx.host.libvirtd_quiet_since = time.monotonic()


def libvirtd_restart(ctx: FaultContext) -> FaultRecord:
    """Stop libvirtd and start it again: SIGTERM, or SIGKILL (always while a VM is frozen: its
    shutdown would wait on the frozen monitor for good), chosen once the gate is held, so that no
    VM freezes in between. Never during a storage outage (the harness starts none then, and one
    that stopped the storage just before this took the gate is waited for): a libvirtd restarted
    while a QEMU hangs on its storage kills that VM once the storage answers again (measured on
    libvirt 9.0: its reconnect fails with `unexpected type returned by QEMU command
    'query-migrate-capabilities'`, and the VM is shut down, reason=daemon), which is libvirt's
    doing, not a fault the exporter must show."""
    kill = ctx.rng.random() < 0.5
    storage_running = True

    def wait_for_storage() -> None:
        nonlocal storage_running
        storage_running = ctx.host.storage.wait_running(STORAGE_OUTAGE_MAX_S)

    def restart() -> str:
        how = signal.SIGKILL if kill or ctx.host.frozen_count() else signal.SIGTERM
        ctx.host.libvirtd_restarts += 1
        ctx.host.libvirtd.restart(how)
        return how.name + ("" if storage_running else ", the storage still stopped")

    return _libvirtd_fault(ctx, "libvirtd_restart", VM_BOUND, restart, lambda _: None, wait_for_storage)


def libvirtd_freeze(ctx: FaultContext) -> FaultRecord:
    """SIGSTOP libvirtd for 10-20 s: connections stay open, nothing answers on them."""
    seconds = ctx.rng.uniform(*LIBVIRTD_FREEZE_S)

    def freeze() -> str:
        ctx.host.libvirtd.freeze()
        return f"{seconds:.0f} s"

    def thaw(record: FaultRecord) -> None:
        time.sleep(max(0.0, record.injected_at + seconds - ctx.now()))
        ctx.host.libvirtd.thaw()

    return _libvirtd_fault(ctx, "libvirtd_freeze", LIVENESS_BOUND, freeze, thaw)


# --- a storage that stops answering --------------------------------------------------------


def _storage_stale(s: Series, storage: Storage) -> float | None:
    return value(s, "libvirt_storage_sample_stale", storage=storage.path, sampler="storage")


def _storage_unresponsive(s: Series, domain: str) -> float | None:
    return hang_signal(s, domain, "storage_unresponsive")


def storage_outage(ctx: FaultContext) -> FaultRecord | None:
    """SIGSTOP the storage's bindfs: every VM on it hangs at once, as on a dead NFS server. The
    exporter's probe of the storage stops answering: the storage is stale, each VM on it flagged
    (`storage_unresponsive`), its block values stale (the exporter sends it no block call), while
    what needs no storage (the `basic` sampler: state, CPU, network) stays fresh throughout, and
    so does every other VM (the healthy check: these VMs are claimed, the others not). Then
    SIGCONT: all fresh again, the flags down."""
    storage = ctx.host.storage
    vms = ctx.host.claim_storage()
    if vms is None:
        return None
    names = [vm.name for vm in vms]
    check = ctx.dead_storage

    def detected(s: Series) -> bool:
        return _storage_stale(s, storage) == 1 and all(
            value(s, "libvirt_domain_sample_stale", domain=name, sampler="block") == 1
            and _storage_unresponsive(s, name) == 1
            for name in names
        )

    def recovered(s: Series) -> bool:
        return _storage_stale(s, storage) == 0 and all(
            fresh(s, name) and _storage_unresponsive(s, name) == 0 for name in names
        )

    def basic_fresh(s: Series, at: float) -> None:
        if ctx.host.libvirtd_down or at - ctx.host.libvirtd_quiet_since < VM_BOUND:
            return  # nothing is fresh while libvirtd is down, nor for a cycle after
        for name in names:
            check.checked += 1
            if value(s, "libvirt_domain_sample_stale", domain=name, sampler="basic") != 0:
                check.violations += 1
                if len(check.examples) < 5:
                    check.examples.append(f"{name} at {at - ctx.started:.1f} s")

    try:
        with ctx.host.gate.shared():  # never while libvirtd is being stopped with SIGTERM
            seen = ctx.watcher.expect(detected)  # from the stop on (as in vm_freeze)
            stopped = storage.stop()
        if not stopped:  # the harness is placing a new VM on it: another time
            ctx.watcher.done(seen)
            return None
        ctx.watcher.on_series(basic_fresh)
        record = FaultRecord("storage_outage", f"{storage.path} ({len(vms)} VMs)", ctx.now(), VM_BOUND)
        record.note = " ".join(names)
        record.detected_at = ctx.wait(seen)
        time.sleep(ctx.rng.uniform(*ctx.hold_s))
        back = ctx.watcher.expect(recovered)
        storage.cont()
        record.ended_at = ctx.now()
        record.recovered_at = ctx.wait(back)
        return record
    finally:
        storage.cont()  # whatever happened above: never leave the storage stopped
        with contextlib.suppress(ValueError):
            ctx.watcher.off_series(basic_fresh)
        for vm in vms:
            ctx.host.release(vm)


FAULTS: dict[str, Callable[[FaultContext], FaultRecord | None]] = {
    "vm_freeze": vm_freeze,
    "vm_create": vm_create,
    "vm_destroy": vm_destroy,
    "disk_attach": disk_attach,
    "disk_detach": disk_detach,
    "qemu_kill": qemu_kill,
    "libvirtd_restart": libvirtd_restart,
    "libvirtd_freeze": libvirtd_freeze,
    "storage_outage": storage_outage,
}

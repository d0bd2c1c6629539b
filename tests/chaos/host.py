"""The host under chaos: the private libvirtd, its VMs, their hot-plugged disks, and a storage that
can die (storage.py) with the disk images of some of the VMs on it.

Faults run in threads of their own, at once, so the host hands out VMs one fault at a time
(`claim`) and keeps a gate between the faults that use libvirt's API (they share it) and the ones
that take libvirtd down (they hold it alone): a harness call into a frozen or restarting libvirtd
would only measure the harness. A freeze takes the shared side too (libvirtd cannot stop with
SIGTERM while a QEMU is frozen, so none starts while it does); other signals to QEMU need no gate.
A storage outage hangs every VM on the storage at once, so it claims them all, and takes the shared
side to stop the storage as a freeze does.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from tests.chaos.private_libvirtd import PrivateLibvirtd
from tests.chaos.storage import Storage
from tests.integration.vms import (
    TinyVM,
    connection,
    create_disk,
    create_tiny_vms,
    destroy_vms,
)

PREFIX = "lvexp-chaos-"
"""Distinct from the integration tests' `lvexp-test-`."""
STORAGE_PREFIX = PREFIX + "st-"
"""VMs whose disk images are on the storage that can die."""
STORAGE_VMS = (2, 4)
"""How many pool VMs the storage holds: an outage needs at least 2 (several VMs hang at once); a
new VM goes there while it holds fewer than 2, or by a coin's toss while fewer than 4."""
HOTPLUG_TARGETS = ("sda", "sdb")
"""USB disks: QEMU unplugs them at once, where a PCI (virtio) disk waits for a guest OS we lack."""
HOTPLUG_DISK_MIB = 16


class Gate:
    """Many holders of `shared()` at once, or one of `exclusive()`; a waiting exclusive goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass(eq=False)
class ChaosVM:
    vm: TinyVM
    hotplugged: dict[str, Path] = field(default_factory=dict)
    """Target -> image of each disk attached by a fault and not detached since."""
    on_storage: bool = False
    """Whether its disk images (not the hot-plugged ones) are on the storage that can die."""
    claimed: bool = False
    quiet_since: float = 0.0
    """Monotonic time the last fault on it ended (or it was created)."""

    @property
    def name(self) -> str:
        return self.vm.name

    def disks(self) -> set[str]:
        return set(self.vm.disk_targets) | set(self.hotplugged)


def usb_disk_xml(target: str, path: Path) -> str:
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{path}'/><target dev='{target}' bus='usb'/></disk>"
    )


class ChaosHost:
    """The VMs on the private libvirtd: one control VM no fault touches, and a pool the faults use."""

    def __init__(
        self, uri: str, workdir: Path, rng: random.Random, libvirtd: PrivateLibvirtd, storage: Storage
    ) -> None:
        self.uri = uri
        self.workdir = workdir
        self.storage = storage
        self.rng = rng
        self.libvirtd = libvirtd
        self.gate = Gate()
        self._lock = threading.Lock()
        self._vms: dict[str, ChaosVM] = {}
        self.control: ChaosVM | None = None
        self.libvirtd_quiet_since = time.monotonic()
        """Monotonic time the last libvirtd fault ended (recovered or given up on)."""
        self.libvirtd_down = False
        self.libvirtd_restarts = 0
        """How many times a fault restarted libvirtd."""
        self.storage_reserved = False
        """While set, `claim` gives no VM on the storage: an outage waits for all of them unclaimed."""

    # --- the VMs ------------------------------------------------------------------

    def start_control(self) -> ChaosVM:
        self.control = self._create(PREFIX + "control-", on_storage=False)
        return self.control

    def create(self, on_storage: bool | None = None) -> ChaosVM:
        """A new pool VM, claimed; on the storage if `on_storage`, or if None as STORAGE_VMS says.
        Never on a stopped storage: it goes beside the others then."""
        if on_storage is None:
            held = len(self.storage_vms())
            on_storage = held < STORAGE_VMS[0] or (held < STORAGE_VMS[1] and self.rng.random() < 0.5)
        with self.gate.shared():
            if not on_storage:
                return self._create(PREFIX, on_storage=False)
            with self.storage.use() as usable:  # it cannot be stopped meanwhile
                return self._create(STORAGE_PREFIX if usable else PREFIX, on_storage=usable)

    def _create(self, prefix: str, on_storage: bool) -> ChaosVM:
        directory = self.storage.mount_point if on_storage else self.workdir
        with connection(self.uri) as conn:
            (vm,) = create_tiny_vms(conn, 1, directory, prefix=prefix)
        chaos_vm = ChaosVM(vm, on_storage=on_storage, claimed=True, quiet_since=time.monotonic())
        with self._lock:
            self._vms[vm.name] = chaos_vm
        return chaos_vm

    def all_vms(self) -> list[ChaosVM]:
        with self._lock:
            return list(self._vms.values())

    def pool(self) -> list[ChaosVM]:
        return [vm for vm in self.all_vms() if vm is not self.control]

    def claim(self, suits: Callable[[ChaosVM], bool] = lambda _: True) -> ChaosVM | None:
        """A random unclaimed pool VM that `suits` the fault, now reserved to it; None if none."""
        with self._lock:
            candidates = [
                vm
                for vm in self._vms.values()
                if vm is not self.control
                and not vm.claimed
                and not (vm.on_storage and self.storage_reserved)
                and suits(vm)
            ]
            if not candidates:
                return None
            chosen = self.rng.choice(candidates)
            chosen.claimed = True
            return chosen

    def claim_storage(self) -> list[ChaosVM] | None:
        """Every VM on the storage, now reserved to an outage: None unless it holds at least
        STORAGE_VMS[0] and no other fault has one (an outage hangs them all: a VM that another fault
        froze or is destroying would hang with them, and its fault's checks with it)."""
        with self._lock:
            held = [vm for vm in self._vms.values() if vm.on_storage]
            if len(held) < STORAGE_VMS[0] or any(vm.claimed for vm in held):
                return None
            for vm in held:
                vm.claimed = True
            return held

    def storage_vms(self) -> list[ChaosVM]:
        return [vm for vm in self.all_vms() if vm.on_storage]

    def release(self, chaos_vm: ChaosVM) -> None:
        with self._lock:
            chaos_vm.claimed = False
            chaos_vm.quiet_since = time.monotonic()

    def forget(self, chaos_vm: ChaosVM) -> None:
        """The VM is gone: drop its disk images, then it (while it is known, and claimed, the storage
        it is on cannot be stopped under the harness' feet)."""
        for path in [*chaos_vm.vm.disk_paths, *chaos_vm.hotplugged.values()]:
            path.unlink(missing_ok=True)
        with self._lock:
            self._vms.pop(chaos_vm.name, None)

    def frozen_count(self) -> int:
        """VMs whose QEMU is hung: frozen, or on the stopped storage."""
        stopped = self.storage.stopped
        return sum(1 for vm in self.all_vms() if vm.vm.frozen or (stopped and vm.on_storage))

    # --- what faults do to a VM ----------------------------------------------------

    def destroy(self, chaos_vm: ChaosVM) -> None:
        with self.gate.shared(), connection(self.uri) as conn:
            destroy_vms(conn, [chaos_vm.vm])
        self.forget(chaos_vm)

    def kill_qemu(self, chaos_vm: ChaosVM) -> None:
        """SIGKILL QEMU outright, frozen or not: libvirtd sees its monitor close."""
        os.kill(chaos_vm.vm.qemu_pid(), signal.SIGKILL)
        chaos_vm.vm.frozen = False

    def attach_disk(self, chaos_vm: ChaosVM, target: str) -> None:
        path = self.workdir / f"{chaos_vm.name}-{target}.qcow2"
        create_disk(path, HOTPLUG_DISK_MIB)
        with self.gate.shared(), connection(self.uri) as conn:
            chaos_vm.vm.domain(conn).attachDeviceFlags(
                usb_disk_xml(target, path), libvirt.VIR_DOMAIN_AFFECT_LIVE
            )
        chaos_vm.hotplugged[target] = path

    def detach_disk(self, chaos_vm: ChaosVM, target: str) -> None:
        path = chaos_vm.hotplugged[target]
        with self.gate.shared(), connection(self.uri) as conn:
            chaos_vm.vm.domain(conn).detachDeviceFlags(
                usb_disk_xml(target, path), libvirt.VIR_DOMAIN_AFFECT_LIVE
            )
        del chaos_vm.hotplugged[target]
        path.unlink(missing_ok=True)

    def libvirt_domains(self) -> set[str]:
        with connection(self.uri) as conn:
            return {dom.name() for dom in conn.listAllDomains()}

    def destroy_all(self) -> None:
        """At the end: thaw libvirtd, continue the storage, thaw and destroy every VM, so that
        libvirtd can stop cleanly (it would hang on a stopped storage, restoring an image's owner)."""
        self.libvirtd.thaw()
        self.storage.cont()
        vms = self.all_vms()
        with connection(self.uri) as conn:
            destroy_vms(conn, [vm.vm for vm in vms])
        for vm in vms:
            self.forget(vm)

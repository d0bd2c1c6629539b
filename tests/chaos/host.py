"""The host under chaos: the private libvirtd, its VMs and their hot-plugged disks.

Faults run in threads of their own, at once, so the host hands out VMs one fault at a time
(`claim`) and keeps a gate between the faults that use libvirt's API (they share it) and the ones
that take libvirtd down (they hold it alone): a harness call into a frozen or restarting libvirtd
would only measure the harness. A freeze takes the shared side too (libvirtd cannot stop with
SIGTERM while a QEMU is frozen, so none starts while it does); other signals to QEMU need no gate.
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
from tests.integration.vms import (
    TinyVM,
    connection,
    create_disk,
    create_tiny_vms,
    destroy_vms,
)

PREFIX = "lvexp-chaos-"
"""Distinct from the integration tests' `lvexp-test-`."""
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

    def __init__(self, uri: str, workdir: Path, rng: random.Random, libvirtd: PrivateLibvirtd) -> None:
        self.uri = uri
        self.workdir = workdir
        self.rng = rng
        self.libvirtd = libvirtd
        self.gate = Gate()
        self._lock = threading.Lock()
        self._vms: dict[str, ChaosVM] = {}
        self.control: ChaosVM | None = None
        self.libvirtd_quiet_since = time.monotonic()
        """Monotonic time the last libvirtd fault ended (recovered or given up on)."""
        self.libvirtd_down = False

    # --- the VMs ------------------------------------------------------------------

    def start_control(self) -> ChaosVM:
        self.control = self._create(PREFIX + "control-")
        return self.control

    def create(self) -> ChaosVM:
        with self.gate.shared():
            chaos_vm = self._create(PREFIX)
        return chaos_vm

    def _create(self, prefix: str) -> ChaosVM:
        with connection(self.uri) as conn:
            (vm,) = create_tiny_vms(conn, 1, self.workdir, prefix=prefix)
        chaos_vm = ChaosVM(vm, claimed=True, quiet_since=time.monotonic())
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
                vm for vm in self._vms.values() if vm is not self.control and not vm.claimed and suits(vm)
            ]
            if not candidates:
                return None
            chosen = self.rng.choice(candidates)
            chosen.claimed = True
            return chosen

    def release(self, chaos_vm: ChaosVM) -> None:
        with self._lock:
            chaos_vm.claimed = False
            chaos_vm.quiet_since = time.monotonic()

    def forget(self, chaos_vm: ChaosVM) -> None:
        """The VM is gone: drop it and its disk images."""
        with self._lock:
            self._vms.pop(chaos_vm.name, None)
        for path in [*chaos_vm.vm.disk_paths, *chaos_vm.hotplugged.values()]:
            path.unlink(missing_ok=True)

    def frozen_count(self) -> int:
        return sum(1 for vm in self.all_vms() if vm.vm.frozen)

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
        """At the end: thaw and destroy every VM, so that libvirtd can stop cleanly."""
        vms = self.all_vms()
        with connection(self.uri) as conn:
            destroy_vms(conn, [vm.vm for vm in vms])
        for vm in vms:
            self.forget(vm)

"""The pieces of a storage outage on the real libvirtd, for the outage test and `make bench-outage`:
the VMs of each kind, the faults begun at once, and a neighbour (another client of libvirtd) whose
calls are timed all along."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import libvirt

from tests.integration.storage import FuseStorage
from tests.integration.vms import (
    DEFAULT_PREFIX,
    FREEZE_TIMEOUT_S,
    LIBVIRTD_TIMEOUT_S,
    TinyVM,
    connection,
    create_tiny_vms,
    destroy_vms,
    process_state,
    wait_for,
)

PREFIX = f"{DEFAULT_PREFIX}outage-"
"""Within DEFAULT_PREFIX, so that a crashed run's VMs are removed by the next session."""

NEIGHBOUR_BOUND = 1.0
"""A healthy VM's `virsh domblkinfo` takes 0.03 s; with libvirtd's 20 workers held by calls stuck on
hung VMs it takes 28 s (docs/libvirt-behaviour.md)."""
NEIGHBOUR_PAUSE_S = 0.5
NEIGHBOUR_TIMEOUT_S = 10.0


@dataclass
class OutageVMs:
    frozen: list[TinyVM]
    """Their QEMU is stopped with SIGSTOP during the outage; disks on local storage."""
    on_storage: list[TinyVM]
    """Their disks are on the FUSE storage that stops answering."""
    healthy: list[TinyVM]
    """Local disks, never touched: they and the neighbour must not notice anything."""

    @property
    def hung(self) -> list[TinyVM]:
        return self.frozen + self.on_storage

    @property
    def all(self) -> list[TinyVM]:
        return self.frozen + self.on_storage + self.healthy


def start_vms(uri: str, groups: dict[str, tuple[int, Path]]) -> dict[str, list[TinyVM]]:
    """Start each group (name: count, disk directory) on a connection of its own, the groups in
    parallel. Either all start or none is left running."""

    def start(name: str, count: int, workdir: Path) -> list[TinyVM]:
        with connection(uri) as conn:
            return create_tiny_vms(conn, count, workdir, prefix=f"{PREFIX}{name}-")

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = {name: pool.submit(start, name, *group) for name, group in groups.items()}
    failed = [error for future in futures.values() if (error := future.exception()) is not None]
    if failed:
        destroy_when_libvirtd_answers(
            uri, [vm for future in futures.values() if future.exception() is None for vm in future.result()]
        )
        raise failed[0]
    return {name: future.result() for name, future in futures.items()}


def destroy_when_libvirtd_answers(uri: str, vms: list[TinyVM]) -> None:
    """Destroy the VMs (thawing frozen ones first), retrying for LIBVIRTD_TIMEOUT_S: libvirtd is
    shared, and another test may be restarting it right now."""
    deadline = time.monotonic() + LIBVIRTD_TIMEOUT_S
    while True:
        try:
            with connection(uri) as conn:
                destroy_vms(conn, vms)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class NeighbourCall:
    started: float
    """Monotonic time."""
    seconds: float
    returncode: int
    stderr: str


@dataclass
class Neighbour:
    """Another client of libvirtd: `virsh domblkinfo` of a healthy VM, again and again, on a
    read-write connection (virsh's default as root), each call timed from start to exit."""

    uri: str
    vm: TinyVM
    calls: list[NeighbourCall] = field(default_factory=list)
    running_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="neighbour", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(NEIGHBOUR_TIMEOUT_S + 5)

    def _run(self) -> None:
        command = ["virsh", "-c", self.uri, "domblkinfo", self.vm.name, self.vm.disk_targets[0]]
        while not self._stop.is_set():
            self.running_since = started = time.monotonic()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=NEIGHBOUR_TIMEOUT_S)
                returncode, stderr = done.returncode, done.stderr.strip()
            except subprocess.TimeoutExpired:
                returncode, stderr = -1, f"no answer within {NEIGHBOUR_TIMEOUT_S:g} s"
            self.calls.append(NeighbourCall(started, time.monotonic() - started, returncode, stderr))
            self.running_since = None
            self._stop.wait(NEIGHBOUR_PAUSE_S)

    def problems(self) -> list[str]:
        """Every call so far that failed or took NEIGHBOUR_BOUND or longer, and the one running
        now if it already has."""
        found = [
            f"neighbour's domblkinfo {call.seconds:.2f} s, exit {call.returncode} {call.stderr}".strip()
            for call in self.calls
            if call.seconds >= NEIGHBOUR_BOUND or call.returncode != 0
        ]
        since = self.running_since
        if since is not None and time.monotonic() - since >= NEIGHBOUR_BOUND:
            found.append(f"neighbour's domblkinfo running for {time.monotonic() - since:.2f} s")
        return found

    def slowest(self) -> float:
        return max((call.seconds for call in self.calls), default=0.0)


def begin_outage(storage: FuseStorage, frozen: list[TinyVM]) -> None:
    """Stop the storage's daemon and the QEMU of every VM in `frozen` at once, then wait until each
    is stopped. One by one, waiting for each, took 1.2 s on a loaded machine: a round that starts
    meanwhile sends calls to VMs that freeze under them."""
    pids = [storage.pid, *(vm.qemu_pid() for vm in frozen)]
    storage.stopped = True
    for vm in frozen:
        vm.frozen = True
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        wait_for(partial(is_stopped, pid), FREEZE_TIMEOUT_S, f"process {pid} to stop")


def is_stopped(pid: int) -> bool:
    return process_state(pid) == "T"

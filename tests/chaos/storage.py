"""A storage that can die: a bindfs FUSE mount whose daemon the harness stops and continues.

A VM whose disk image lives on a FUSE file system whose daemon is stopped (SIGSTOP) behaves like a
VM on a hard-mounted NFS export whose server died (docs/libvirt-behaviour.md, "A storage outage is
not a frozen QEMU"): QEMU runs on, but the first operation on the image blocks, and from then on its
monitor hangs; so does any other process that touches the mount, the exporter's probe included.

The mount is made by the harness, which runs in the private mount namespace (private_libvirtd.py):
libvirtd, its QEMUs (whose own mount namespaces libvirt copies from libvirtd's) and the exporter
are all started in it afterwards, so all of them see it, and the host does not (the namespace's
mounts are private): no process outside the run can hang on it. When the run ends, however it ends,
the kernel kills bindfs with the rest of the pid namespace, which ends the FUSE connection, and
the mount goes with the mount namespace; `close()` does it in order before that (continue bindfs,
unmount, wait for it to exit).

bindfs runs in the foreground (`-f`), so that its pid is the child's, and in a session of its own,
so that a Ctrl-C meant for the harness does not reach it (it would unmount itself); the harness
alone stops, continues and ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.integration.vms import process_state, wait_for

MOUNT_TIMEOUT_S = 10.0
SIGNAL_TIMEOUT_S = 5.0
EXIT_TIMEOUT_S = 10.0


class Storage:
    """`mount_point`, a bindfs mount of `backing`: mounted, stopped (the outage), continued, closed."""

    def __init__(self, backing: Path, mount_point: Path) -> None:
        self.backing = backing
        self.mount_point = mount_point
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Condition()
        self._stopped = False
        self._closed = False
        self._users = 0

    @property
    def path(self) -> str:
        """The mount point, as the exporter labels the storage (`storage`)."""
        return str(self.mount_point)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def mount(self, log_path: Path) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["bindfs", "-f", str(self.backing), str(self.mount_point)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(self._mounted, MOUNT_TIMEOUT_S, f"bindfs to mount {self.mount_point}")

    def _mounted(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"bindfs exited with {self._process.returncode} (see its log)")
        return os.path.ismount(self.mount_point)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- who may touch it ---------------------------------------------------------------

    @contextlib.contextmanager
    def use(self) -> Iterator[bool]:
        """Yields whether the storage is up and may be used (to place a VM on it): while in use,
        it cannot be stopped. A harness thread that touched a stopped storage would hang with it."""
        with self._lock:
            usable = not self._stopped
            if usable:
                self._users += 1
        try:
            yield usable
        finally:
            if usable:
                with self._lock:
                    self._users -= 1

    # --- the outage ---------------------------------------------------------------------

    def stop(self) -> bool:
        """SIGSTOP bindfs and wait until it is stopped; False (and nothing done) if a harness thread
        is using the storage right now, or it is stopped or closed already."""
        with self._lock:
            if self._users or self._stopped or self._closed or self._process is None:
                return False
            self._stopped = True
        pid = self._process.pid
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: process_state(pid) in ("T", None), SIGNAL_TIMEOUT_S, "bindfs to stop")
        return True

    def cont(self) -> None:
        """SIGCONT bindfs (harmless when it runs) and wait until it runs again."""
        if self._process is not None and self._process.poll() is None:
            pid = self._process.pid
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: process_state(pid) != "T", SIGNAL_TIMEOUT_S, "bindfs to continue")
        with self._lock:
            self._stopped = False
            self._lock.notify_all()

    def wait_running(self, timeout: float) -> bool:
        """Wait until the storage is not stopped; False if it still is after `timeout` s."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._stopped, timeout)

    def close(self) -> str:
        """Continue bindfs, unmount (lazily if a process still holds a file on it), and wait until
        bindfs exits; kill it if it does not. It cannot be stopped after this. Says what it did."""
        with self._lock:
            self._closed = True
        if self._process is None:
            return "never mounted"
        with contextlib.suppress(Exception):
            self.cont()
        how = "not mounted"
        if os.path.ismount(self.mount_point):
            how = "unmounted"
            unmounted = subprocess.run(["umount", str(self.mount_point)], capture_output=True, check=False)
            if unmounted.returncode != 0:
                how = "unmounted lazily"
                subprocess.run(["umount", "--lazy", str(self.mount_point)], capture_output=True, check=False)
        try:
            self._process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(EXIT_TIMEOUT_S)
            how += ", bindfs killed"
        return how

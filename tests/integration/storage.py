"""Storage that stops answering, for real: disk images on a FUSE mount whose daemon is stopped.

The kernel here has no NFS, but FUSE behaves like a hard-mounted NFS export whose server died
(docs/libvirt-behaviour.md, "A storage outage is not a frozen QEMU"): Debian's `bindfs` serves a
directory through a FUSE mount, and once its daemon is stopped with SIGSTOP every file operation
under the mount point waits, unbounded, until it is continued. A QEMU whose disk lives there keeps
running until something makes it touch the image (a block-info call); from then on its monitor
hangs too. `statvfs` of the mount point hangs, and so does `stat` of the mount point itself: once
stopped, nothing under the mount is touched here except through the exporter and the VMs, and the
mount is found from /proc, never from the path.

bindfs runs in the foreground as a child of the test process, so its pid is ours to stop and
continue. If the test process dies without its teardown (SIGKILL), the kernel kills bindfs too
(PR_SET_PDEATHSIG): the mount then fails every operation at once instead of hanging, so that a
crashed run never leaves a host whose `df` hangs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration.vms import process_state, wait_for

MOUNT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
UNMOUNT_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def is_mounted(mount_point: Path) -> bool:
    """Whether `mount_point` is a mount point, from /proc/self/mountinfo: a check that never
    touches the file system, so it cannot hang on a stopped FUSE daemon (os.path.ismount can)."""
    wanted = str(mount_point)
    with open("/proc/self/mountinfo") as mounts:
        # Field 5 is the mount point, with spaces and the like escaped as octal (\040).
        return any(_unescape(line.split()[4]) == wanted for line in mounts)


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(eq=False)
class FuseStorage:
    """A directory (`backing`) served by bindfs at `mount_point`; `stop()` makes it hang."""

    backing: Path
    mount_point: Path
    process: subprocess.Popen[bytes]
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGSTOP the daemon and wait until it is stopped: the storage no longer answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        wait_for(lambda: process_state(self.pid) == "T", STOP_TIMEOUT_S, "bindfs to stop")

    def resume(self) -> None:
        """SIGCONT the daemon: every file operation that waited on it goes on. Harmless when it
        runs or has exited."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            wait_for(lambda: process_state(self.pid) != "T", STOP_TIMEOUT_S, "bindfs to resume")
        self.stopped = False

    def unmount(self) -> None:
        """Resume, unmount and wait for the daemon to exit (it does once unmounted). A mount that
        is still busy is detached lazily; a daemon that does not exit is killed."""
        self.resume()
        if is_mounted(self.mount_point):
            unmounted = subprocess.run(
                ["fusermount", "-u", str(self.mount_point)], capture_output=True, timeout=UNMOUNT_TIMEOUT_S
            )
            if unmounted.returncode != 0:
                subprocess.run(["umount", "-l", str(self.mount_point)], check=True, timeout=UNMOUNT_TIMEOUT_S)
        try:
            self.process.wait(UNMOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def mount_fuse_storage(root: Path) -> FuseStorage:
    """Serve `root`/backing at `root`/mnt through bindfs (in the foreground, our child), and
    return once it is mounted."""
    backing, mount_point = root / "backing", root / "mnt"
    backing.mkdir(parents=True)
    mount_point.mkdir()
    mount_point = mount_point.resolve()  # the path the kernel reports, as the exporter sees it
    process = subprocess.Popen(
        ["bindfs", "-f", str(backing), str(mount_point)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    storage = FuseStorage(backing, mount_point, process)
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while not is_mounted(mount_point):
        if process.poll() is not None or time.monotonic() > deadline:
            storage.unmount()
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"bindfs did not mount {mount_point}: {stderr.strip()}")
        time.sleep(0.05)
    return storage


@contextlib.contextmanager
def fuse_storage(root: Path) -> Iterator[FuseStorage]:
    """A FUSE storage for the duration of the block; always resumed and unmounted afterwards."""
    storage = mount_fuse_storage(root)
    try:
        yield storage
    finally:
        storage.unmount()

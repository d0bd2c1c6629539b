"""What the host shows about its VMs without asking libvirtd or QEMU: whether a QEMU process is
stopped, and on which storage (mount point) each disk lives, and whether that storage answers.

None of it holds one of libvirtd's worker threads, so it can tell a hung VM from a healthy one
before any call is sent to it (docs/libvirt-behaviour.md: a stopped QEMU shows its threads in state
T; a QEMU on dead storage shows nothing in /proc, but statfs on the storage blocks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

QEMU_RUN_DIR = Path("/run/libvirt/qemu")
"""Where libvirt's QEMU driver writes each running domain's pid (`NAME.pid`), world-readable."""
PROC = Path("/proc")
MOUNTINFO = Path("/proc/self/mountinfo")


class HostAccess(Protocol):
    """The host as the exporter reads it; tests give a fake one."""

    def qemu_stopped(self, domain: str) -> bool | None:
        """Whether the domain's QEMU process is stopped (SIGSTOP, a debugger); None when unknown."""
        ...

    def mount_points(self) -> list[str]:
        """The mount points of the host, as this process sees them."""
        ...

    def probe(self, mount_point: str) -> None:
        """Ask the storage mounted there for its state; blocks for as long as the storage does not
        answer. Runs in an OS thread of its own."""
        ...


class LocalHost:
    """The host this process runs on."""

    def __init__(
        self, qemu_run_dir: Path = QEMU_RUN_DIR, proc: Path = PROC, mountinfo: Path = MOUNTINFO
    ) -> None:
        self._qemu_run_dir = qemu_run_dir
        self._proc = proc
        self._mountinfo = mountinfo

    def qemu_stopped(self, domain: str) -> bool | None:
        try:
            pid = int((self._qemu_run_dir / f"{domain}.pid").read_text().strip())
            stat = (self._proc / str(pid) / "stat").read_text()
        except (OSError, ValueError):
            return None
        # The state follows the command name, which is in parentheses and may hold anything.
        return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("T", "t")

    def mount_points(self) -> list[str]:
        try:
            lines = self._mountinfo.read_text().splitlines()
        except OSError:
            return []
        return [_unescape(line.split(" ")[4]) for line in lines if len(line.split(" ")) > 4]

    def probe(self, mount_point: str) -> None:
        os.statvfs(mount_point)


def _unescape(field: str) -> str:
    """mountinfo writes a space, a tab, a newline and a backslash in octal (`\\040`)."""
    for octal, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(octal, char)
    return field


def storage_of(path: str, mount_points: list[str]) -> str | None:
    """The mount point a disk's path lives on: the longest that contains it. None for a path that is
    not a local file (a network volume such as `pool/image`, an RBD or iSCSI name)."""
    if not path.startswith("/"):
        return None
    best = None
    for mount_point in mount_points:
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > len(best)):
            best = mount_point
    return best

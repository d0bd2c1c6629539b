"""What the host shows about its VMs without asking libvirtd or QEMU: whether a QEMU process is
stopped, how much CPU time its domain and each of its vCPUs have used, on which storage (mount
point) each disk lives, and whether that storage answers.

None of it holds one of libvirtd's worker threads, so it can tell a hung VM from a healthy one
before any call is sent to it (docs/libvirt-behaviour.md: a stopped QEMU shows its threads in state
T; a QEMU on dead storage shows nothing in /proc, but statfs on the storage blocks), and it costs
libvirtd nothing: the CPU times are the counters libvirt itself reads from the domain's cgroup and
from /proc for each vCPU thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

QEMU_RUN_DIR = Path("/run/libvirt/qemu")
"""Where libvirt's QEMU driver writes each running domain's pid (`NAME.pid`), world-readable."""
PROC = Path("/proc")
MOUNTINFO = Path("/proc/self/mountinfo")
_CPU_STAT_FIELDS = {"usage_usec": "cpu.time", "user_usec": "cpu.user", "system_usec": "cpu.system"}
SCHEDSTATS = Path("/proc/sys/kernel/sched_schedstats")
"""1 while the kernel keeps the scheduler statistics that `sched`'s `wait_sum` shows."""
CLOCK_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
"""/proc counts a thread's user and system time in clock ticks."""
_WAIT_SUM = ("se.statistics.wait_sum", "se.wait_sum")
"""The names the kernel gives a thread's time waiting for a CPU in `sched`, newer first."""


@dataclass(frozen=True)
class VcpuTimes:
    """One vCPU thread's times in nanoseconds, as libvirt reads them (virDomainGetVcpus and the
    `vcpu` stat group): `time` from the thread's `stat` (user and system time, in clock ticks),
    `wait` from its `sched` (`wait_sum`; 0 where the kernel keeps no scheduler statistics), `delay`
    from its `schedstat` (time runnable but not running; 0 where the kernel lacks it)."""

    time: int
    wait: int
    delay: int


@dataclass(frozen=True)
class QemuProcess:
    """A domain's running QEMU as /proc and its cgroup show it, read at once by the survey."""

    read_at: float
    """time.monotonic() when it was read: libvirt's counters, read after, may only be ahead."""
    stopped: bool
    """The process is stopped (SIGSTOP, a debugger): its monitor answers nothing."""
    cpu_times: dict[str, int] | None = None
    """The CPU time, user and system time the domain's cgroup has used, in nanoseconds, by the
    names of libvirt's `cpu-total` stat group; None where this process cannot read them."""
    vcpu_times: dict[int, VcpuTimes] | None = None
    """Each online vCPU's times, by libvirt's vCPU number; None where this process cannot find
    its vCPU threads."""


class HostAccess(Protocol):
    """The host as the exporter reads it; tests give a fake one."""

    def qemu(self, domain: str, cpu: bool, vcpus: bool) -> QemuProcess | None:
        """The domain's QEMU process, with its CPU times (with `cpu`) and its vCPUs' (with
        `vcpus`); None where it has none this process can see."""
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
        self,
        qemu_run_dir: Path = QEMU_RUN_DIR,
        proc: Path = PROC,
        mountinfo: Path = MOUNTINFO,
        schedstats: Path = SCHEDSTATS,
    ) -> None:
        self._qemu_run_dir = qemu_run_dir
        self._proc = proc
        self._mountinfo = mountinfo
        self._schedstats = schedstats
        self._cgroup2_root: str | None = None
        """Where the cgroup v2 hierarchy is mounted ("" for none), found at the first need."""

    def qemu(self, domain: str, cpu: bool, vcpus: bool) -> QemuProcess | None:
        """From the pid file libvirt writes for the domain; its pid and cgroup read once, since
        the survey reads every domain's at every round."""
        read_at = time.monotonic()
        try:
            pid = int(_read(f"{self._qemu_run_dir}/{domain}.pid").strip())
            _, fields = _stat_fields(_read(f"{self._proc}/{pid}/stat"))
        except (OSError, ValueError):  # not running, or gone since
            return None
        stopped = fields[0] in ("T", "t")
        cgroup = self._domain_cgroup(pid) if cpu or vcpus else None
        if cgroup is None:
            return QemuProcess(read_at, stopped)
        return QemuProcess(
            read_at,
            stopped,
            cpu_times=_cpu_times(cgroup) if cpu else None,
            vcpu_times=self._vcpu_times(pid, cgroup) if vcpus else None,
        )

    def _vcpu_times(self, pid: int, cgroup: str) -> dict[int, VcpuTimes] | None:
        """From the domain's cgroup v2 `vcpuN` cgroups: libvirt creates one per online vCPU, N its
        vCPU number, and moves into it the thread QEMU reports for the vCPU (threads KVM starts for
        the VM may join it). Of its threads, the vCPU's is the one QEMU names `CPU N/KVM` (libvirt
        asks QEMU to name its threads). None on a host without them (cgroup v1 alone, no CPU
        controller for libvirt), or with a cgroup that holds no such thread or more than one."""
        try:
            wait_kept = self._wait_kept()
            times = {}
            for vcpu in os.scandir(cgroup):
                number = vcpu.name.removeprefix("vcpu")
                if number != vcpu.name and number.isdigit():
                    times[int(number)] = self._vcpu_thread_times(pid, vcpu.path, wait_kept)
            return times or None
        except (OSError, ValueError, IndexError):  # gone, or a kernel that writes it otherwise
            return None

    def mount_points(self) -> list[str]:
        return [fields[4] for fields in self._mounts()]

    def probe(self, mount_point: str) -> None:
        os.statvfs(mount_point)

    def _wait_kept(self) -> bool:
        try:
            return _read(str(self._schedstats)).strip() == "1"
        except OSError:  # a kernel built without them
            return False

    def _vcpu_thread_times(self, pid: int, vcpu_cgroup: str, wait_kept: bool) -> VcpuTimes:
        """As libvirt reads them; `wait` only where `wait_kept`: `sched` shows `wait_sum` only
        while the kernel keeps scheduler statistics, and it is the costliest of the files. Raises
        ValueError unless the cgroup holds one vCPU thread."""
        named = {}
        for thread in _read(f"{vcpu_cgroup}/cgroup.threads").split():
            name, fields = _stat_fields(_read(f"{self._proc}/{pid}/task/{thread}/stat"))
            if name.startswith("CPU "):
                named[thread] = fields
        ((thread, fields),) = named.items()
        ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of the line: utime, stime
        task = f"{self._proc}/{pid}/task/{thread}"
        return VcpuTimes(
            time=ticks * CLOCK_TICK_NS,
            wait=_wait_sum(_read(f"{task}/sched")) if wait_kept else 0,
            delay=_schedstat_delay(task),
        )

    def _domain_cgroup(self, pid: int) -> str | None:
        """The directory of the domain's cgroup v2: libvirt moves QEMU's main thread into the
        domain's `emulator` child, and counts the domain's time (vCPUs, I/O threads, vhost) in the
        domain's own."""
        if self._cgroup2_root is None:
            self._cgroup2_root = next((f[4] for f in self._mounts() if f[-3] == "cgroup2"), "")
        try:
            lines = _read(f"{self._proc}/{pid}/cgroup").splitlines()
        except OSError:  # gone since
            return None
        for line in lines:
            if line.startswith("0::") and self._cgroup2_root:
                path = line[3:].removesuffix("/emulator")
                return f"{self._cgroup2_root}{path}"
        return None

    def _mounts(self) -> list[list[str]]:
        """mountinfo's lines as fields, the mount point (field 4) unescaped."""
        try:
            lines = self._mountinfo.read_text().splitlines()
        except OSError:
            return []
        mounts = [line.split(" ") for line in lines]
        return [[*f[:4], _unescape(f[4]), *f[5:]] for f in mounts if len(f) > 4]


def _read(path: str) -> str:
    """A small file of /proc or /sys. The survey reads about ten per domain, so without a file
    object: that takes half the CPU of `open()` (docs/benchmarks.md, fix 23)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _stat_fields(stat: str) -> tuple[str, list[str]]:
    """A /proc `stat` line's command name, which is in parentheses and may hold anything, and the
    fields after it, from field 3 (the state) on. Raises ValueError for a line without them."""
    opening, closing = stat.find("("), stat.rfind(")")
    fields = stat[closing + 2 :].split()
    if opening < 0 or closing < opening or not fields:
        raise ValueError(f"not a /proc stat line: {stat[:80]!r}")
    return stat[opening + 1 : closing], fields


def _cpu_times(cgroup: str) -> dict[str, int] | None:
    """From the cgroup v2 `cpu.stat`, as libvirt reads it there (on a host without cgroup v2,
    libvirt reads cgroup v1, which this does not)."""
    try:
        usec = dict(line.split(" ", 1) for line in _read(f"{cgroup}/cpu.stat").splitlines())
        return {ours: int(usec[theirs]) * 1000 for theirs, ours in _CPU_STAT_FIELDS.items()}
    except (OSError, ValueError, KeyError):  # gone, or a kernel that writes it otherwise
        return None


def _wait_sum(sched: str) -> int:
    """`wait_sum`, which `sched` writes in milliseconds with decimals."""
    for line in sched.splitlines():
        if line.startswith(_WAIT_SUM):
            return int(float(line.split(":", 1)[1]) * 1_000_000)
    return 0


def _schedstat_delay(task: str) -> int:
    """`schedstat`'s second field; 0 where the kernel lacks the file (no CONFIG_SCHED_INFO)."""
    try:
        return int(_read(f"{task}/schedstat").split()[1])
    except FileNotFoundError:
        return 0


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

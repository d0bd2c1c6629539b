"""What the exporter reads of the host itself (host.LocalHost), on a copy of /proc, /run and /sys laid
out as a host with libvirt's QEMU driver shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_exporter.host import LocalHost

PID = 4242
CPU_STAT = "usage_usec 14916140\nuser_usec 544323\nsystem_usec 14371816\nnice_usec 0\n"
DOMAIN_CGROUP = "/machine/qemu-3-vm.libvirt-qemu"


def make_host(
    tmp_path: Path, cgroup_line: str, mounts: list[tuple[str, str]], stat_state: str = "S"
) -> LocalHost:
    """A host with one running domain `vm`, QEMU pid PID, whose main thread is in `cgroup_line`'s
    cgroup; `mounts` are (mount point, file system type), mount points under tmp_path."""
    run, proc = tmp_path / "run", tmp_path / "proc"
    run.mkdir(parents=True)
    (run / "vm.pid").write_text(f"{PID}\n")
    (proc / str(PID)).mkdir(parents=True)
    (proc / str(PID) / "stat").write_text(f"{PID} (qemu-system-x86) {stat_state} 1 {PID} 0\n")
    (proc / str(PID) / "cgroup").write_text(f"2:cpuacct:/\n1:cpu:{DOMAIN_CGROUP}/emulator\n{cgroup_line}\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "".join(
            f"{n} 1 0:{n} / {tmp_path}{point} rw,relatime shared:{n} - {fs} {fs} rw\n"
            for n, (point, fs) in enumerate(mounts, start=20)
        )
    )
    return LocalHost(qemu_run_dir=run, proc=proc, mountinfo=mountinfo)


def write_cpu_stat(tmp_path: Path, cgroup_root: str, content: str = CPU_STAT) -> None:
    directory = tmp_path / cgroup_root.lstrip("/") / DOMAIN_CGROUP.lstrip("/")
    (directory / "emulator").mkdir(parents=True)
    (directory / "cpu.stat").write_text(content)
    (directory / "emulator" / "cpu.stat").write_text("usage_usec 1\nuser_usec 1\nsystem_usec 0\n")


@pytest.mark.parametrize("cgroup_root", ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], ids=["v2", "hybrid"])
def test_cpu_times_are_the_domains_cgroup_v2_counters(tmp_path: Path, cgroup_root: str) -> None:
    """libvirt counts a domain in its own cgroup, the parent of the `emulator` one that QEMU's main
    thread is in; cgroup v2 mounted alone, or beside v1 (hybrid, as Debian 11 and this CI's host)."""
    host = make_host(tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [("/", "ext4"), (cgroup_root, "cgroup2")])
    write_cpu_stat(tmp_path, cgroup_root)
    assert host.cpu_times("vm") == {
        "cpu.time": 14_916_140_000,
        "cpu.user": 544_323_000,
        "cpu.system": 14_371_816_000,
    }


def test_no_cpu_times_without_cgroup_v2_or_a_running_qemu(tmp_path: Path) -> None:
    """cgroup v1 alone: libvirt reads cpuacct, which this does not, so the survey asks libvirt."""
    host = make_host(tmp_path, "3:memory:/", [("/", "ext4"), ("/sys/fs/cgroup/cpu", "cgroup")])
    assert host.cpu_times("vm") is None
    assert host.cpu_times("not-running") is None


@pytest.mark.parametrize("content", ["usage_usec 1\nuser_usec 1\n", "usage_usec\n", "usage_usec x\n"])
def test_a_cpu_stat_that_says_otherwise_gives_no_cpu_times(tmp_path: Path, content: str) -> None:
    """The survey then asks libvirt; it must not fail."""
    host = make_host(tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [("/sys/fs/cgroup", "cgroup2")])
    write_cpu_stat(tmp_path, "/sys/fs/cgroup", content)
    assert host.cpu_times("vm") is None


def test_qemu_stopped_reads_the_state_after_the_command_name(tmp_path: Path) -> None:
    running = make_host(tmp_path / "running", "0::/", [("/", "ext4")])
    stopped = make_host(tmp_path / "stopped", "0::/", [("/", "ext4")], stat_state="T")
    assert running.qemu_stopped("vm") is False
    assert stopped.qemu_stopped("vm") is True
    assert running.qemu_stopped("not-running") is None

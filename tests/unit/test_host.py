"""What the exporter reads of the host itself (host.LocalHost), on a copy of /proc, /run and /sys laid
out as a host with libvirt's QEMU driver shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_exporter.host import CLOCK_TICK_NS, LocalHost, QemuProcess, VcpuTimes

PID = 4242
CPU_STAT = "usage_usec 14916140\nuser_usec 544323\nsystem_usec 14371816\nnice_usec 0\n"
DOMAIN_CGROUP = "/machine/qemu-3-vm.libvirt-qemu"


def make_host(
    tmp_path: Path,
    cgroup_line: str,
    mounts: list[tuple[str, str]],
    stat_state: str = "S",
    schedstats: str | None = None,
) -> LocalHost:
    """A host with one running domain `vm`, QEMU pid PID, whose main thread is in `cgroup_line`'s
    cgroup; `mounts` are (mount point, file system type), mount points under tmp_path;
    `schedstats` what kernel.sched_schedstats holds (None: a kernel without it)."""
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
    sysctl = tmp_path / "sched_schedstats"
    if schedstats is not None:
        sysctl.write_text(f"{schedstats}\n")
    return LocalHost(qemu_run_dir=run, proc=proc, mountinfo=mountinfo, schedstats=sysctl)


def qemu(host: LocalHost) -> QemuProcess:
    found = host.qemu("vm", cpu=True, vcpus=True)
    assert found is not None, "vm's QEMU process was not found"
    return found


def cpu_times(host: LocalHost) -> dict[str, int] | None:
    return qemu(host).cpu_times


def vcpu_times(host: LocalHost) -> dict[int, VcpuTimes] | None:
    return qemu(host).vcpu_times


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
    assert cpu_times(host) == {
        "cpu.time": 14_916_140_000,
        "cpu.user": 544_323_000,
        "cpu.system": 14_371_816_000,
    }


def test_no_cpu_times_without_cgroup_v2_or_a_running_qemu(tmp_path: Path) -> None:
    """cgroup v1 alone: libvirt reads cpuacct, which this does not, so the survey asks libvirt."""
    host = make_host(tmp_path, "3:memory:/", [("/", "ext4"), ("/sys/fs/cgroup/cpu", "cgroup")])
    assert cpu_times(host) is None
    assert host.qemu("not-running", cpu=True, vcpus=True) is None


@pytest.mark.parametrize("content", ["usage_usec 1\nuser_usec 1\n", "usage_usec\n", "usage_usec x\n"])
def test_a_cpu_stat_that_says_otherwise_gives_no_cpu_times(tmp_path: Path, content: str) -> None:
    """The survey then asks libvirt; it must not fail."""
    host = make_host(tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [("/sys/fs/cgroup", "cgroup2")])
    write_cpu_stat(tmp_path, "/sys/fs/cgroup", content)
    assert cpu_times(host) is None


def test_qemu_stopped_reads_the_state_after_the_command_name(tmp_path: Path) -> None:
    running = make_host(tmp_path / "running", "0::/", [("/", "ext4")])
    stopped = make_host(tmp_path / "stopped", "0::/", [("/", "ext4")], stat_state="T")
    assert not qemu(running).stopped
    assert qemu(stopped).stopped


def write_vcpu(
    tmp_path: Path,
    number: int,
    threads: dict[int, str],
    cgroup_root: str = "/sys/fs/cgroup",
    wait_ms: str = "",
) -> None:
    """The domain's `vcpuN` cgroup holding `threads` (TID: name), each with 3 ticks of user time and
    4 of system time, a run delay of 1000 + TID ns, and with `wait_ms`, a `sched` with wait_sum."""
    vcpu = tmp_path / cgroup_root.lstrip("/") / DOMAIN_CGROUP.lstrip("/") / f"vcpu{number}"
    vcpu.mkdir(parents=True)
    (vcpu / "cgroup.threads").write_text("".join(f"{tid}\n" for tid in threads))
    for tid, name in threads.items():
        task = tmp_path / "proc" / str(PID) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{tid} ({name}) S 1 {PID} {PID} 0 -1 4194368 9 0 0 0 3 4 0 0 20 0 3 0\n")
        (task / "schedstat").write_text(f"70000000 {1000 + tid} 12\n")
        if wait_ms:
            (task / "sched").write_text(
                f"{name} ({tid}, #threads: 4)\n---\nse.statistics.wait_sum : {wait_ms}\n"
            )


@pytest.mark.parametrize("cgroup_root", ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], ids=["v2", "hybrid"])
def test_vcpu_times_come_from_the_vcpu_thread_of_each_vcpu_cgroup(tmp_path: Path, cgroup_root: str) -> None:
    """libvirt moves each vCPU's thread into the `vcpuN` cgroup beside `emulator`, where a thread
    KVM starts for the VM may join it (`kvm-nx-lpage-recovery`, as on this CI's host): the thread
    QEMU names `CPU N/KVM` is the vCPU's."""
    host = make_host(tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [(cgroup_root, "cgroup2")], schedstats="1")
    write_vcpu(tmp_path, 0, {5001: "CPU 0/KVM", 5003: "kvm-nx-lpage-re"}, cgroup_root, wait_ms="12.345678")
    write_vcpu(tmp_path, 1, {5002: "CPU 1/KVM"}, cgroup_root, wait_ms="0.000000")
    assert vcpu_times(host) == {
        0: VcpuTimes(time=7 * CLOCK_TICK_NS, wait=12_345_678, delay=6001),
        1: VcpuTimes(time=7 * CLOCK_TICK_NS, wait=0, delay=6002),
    }


@pytest.mark.parametrize("schedstats", ["0", None], ids=["off", "not built"])
def test_the_wait_is_0_where_the_kernel_keeps_no_scheduler_statistics(
    tmp_path: Path, schedstats: str | None
) -> None:
    """As libvirt reports it: the kernel then writes no wait_sum, and its `sched` is not read."""
    host = make_host(
        tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [("/sys/fs/cgroup", "cgroup2")], schedstats=schedstats
    )
    write_vcpu(tmp_path, 0, {5001: "CPU 0/KVM"})
    assert vcpu_times(host) == {0: VcpuTimes(time=7 * CLOCK_TICK_NS, wait=0, delay=6001)}


@pytest.mark.parametrize(
    "threads",
    [{5001: "qemu-system-x86"}, {5001: "CPU 0/KVM", 5002: "CPU 1/KVM"}, {}],
    ids=["threads not named", "two vCPU threads", "no thread"],
)
def test_no_vcpu_times_where_a_vcpu_cgroup_does_not_hold_one_vcpu_thread(
    tmp_path: Path, threads: dict[int, str]
) -> None:
    """The survey then leaves the vCPUs to libvirt's `vcpu` group."""
    host = make_host(tmp_path, f"0::{DOMAIN_CGROUP}/emulator", [("/sys/fs/cgroup", "cgroup2")])
    write_vcpu(tmp_path, 0, threads)
    assert vcpu_times(host) is None


def test_no_vcpu_times_without_cgroup_v2(tmp_path: Path) -> None:
    host = make_host(tmp_path, "3:memory:/", [("/", "ext4"), ("/sys/fs/cgroup/cpu", "cgroup")])
    write_vcpu(tmp_path, 0, {5001: "CPU 0/KVM"}, "/sys/fs/cgroup/cpu")
    assert vcpu_times(host) is None

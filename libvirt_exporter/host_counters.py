"""The counters libvirt reads from the host itself, read by the survey from the host, once they are
found to be libvirt's own.

libvirtd answers a domain's CPU times (virDomainGetCPUStats) from its cgroup, and its vCPUs' times
(the `vcpu` stat group) from /proc for each vCPU thread; the host has them for a file read. Asking
libvirtd costs more: four round trips for the CPU times, and on libvirt 9.0 the `vcpu` group makes
every QEMU answer a `query-stats` on its monitor (docs/benchmarks.md, fixes 17 and 23). The host's
counters are checked against libvirt's once per QEMU process (a domain name and id); where they
agree they are read from then on, and where they do not (cgroup v1 alone, another layout, a
container that sees other cgroups), libvirt is asked, as before. One source per QEMU process, so
that a counter never steps back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import libvirt

from libvirt_exporter.domain_xml import DomainDescription
from libvirt_exporter.host import CLOCK_TICK_NS, QemuProcess, VcpuTimes
from libvirt_exporter.libvirt_client import is_missing_domain

Process = tuple[str, int]
"""A QEMU process: its domain's name and id (a restarted domain gets a new id)."""
_CPU_FIELDS = {"cpu_time": "cpu.time", "user_time": "cpu.user", "system_time": "cpu.system"}
"""virDomainGetCPUStats' names of the `cpu-total` stat group's fields."""
_ROUNDING_NS = 1000
"""cgroup v2 counts in microseconds; libvirt's answer may come from a counter in nanoseconds."""
_HOST_CPUS = os.cpu_count() or 1
VCPUS_RECHECK_SECONDS = 300.0
"""How long a QEMU process whose vCPU figures on the host were not libvirt's waits for another
check: libvirt's come with the `bulk` sampler's call meanwhile, and a QEMU caught starting up may
show fewer vCPU threads than it will."""


@dataclass(frozen=True)
class Checked:
    """What the host was found to give as libvirt does, per QEMU process. Replaced after each
    survey, never changed: the survey's thread reads it."""

    cpu: frozenset[Process] = frozenset()
    """The processes whose CPU times the host gives."""
    vcpus: frozenset[Process] = frozenset()
    """The processes whose vCPU figures the host gives."""
    vcpus_refused: Mapping[Process, float] = field(default_factory=dict)
    """When (time.monotonic()) the host's vCPU figures of these processes were last found not to
    be libvirt's; checked again after VCPUS_RECHECK_SECONDS."""


@dataclass
class Counted:
    """One domain's counters as a survey read them."""

    values: dict[str, int] = field(default_factory=dict)
    """Its CPU times, and its vCPUs' figures where the host gives them, by the stat groups' keys."""
    cpu_from_host: bool = False
    vcpus_from_host: bool = False
    vcpus_refused_at: float | None = None
    """When the host's vCPU figures were last found not to be libvirt's, if they were."""


def read_counters(
    dom: Any, process: Process, description: DomainDescription | None, qemu: QemuProcess | None,
    checked: Checked, cpu: bool, vcpu: bool,
) -> Counted:  # fmt: skip
    """The running domain's CPU times (with `cpu`) and vCPU figures (with `vcpu`), from what the
    host showed of its QEMU where `checked` says the host gives them, checking it where not yet
    checked. Runs in the survey's thread; raises the libvirt error of a domain that is gone."""
    counted = Counted()
    if cpu:
        counted.values, counted.cpu_from_host = _cpu_times(dom, qemu, process in checked.cpu)
    if vcpu and description is not None:
        vcpus, counted.vcpus_refused_at = _vcpu_times(dom, qemu, process, checked)
        if vcpus is not None:
            counted.vcpus_from_host = True
            counted.values.update(_vcpu_keys(vcpus, description.vcpus_maximum))
    return counted


def _cpu_times(dom: Any, qemu: QemuProcess | None, from_host: bool) -> tuple[dict[str, int], bool]:
    """The domain's CPU times, and whether they came from the host. libvirt's counter agrees with
    the host's when, read after it, it is ahead by no more than every host CPU ran since."""
    hosts = qemu.cpu_times if qemu is not None else None
    if from_host and hosts is not None:
        return hosts, True
    libvirts = _libvirt_cpu_times(dom)
    if qemu is not None and hosts is not None and "cpu.time" in libvirts:
        ahead = libvirts["cpu.time"] - hosts["cpu.time"]
        if -_ROUNDING_NS <= ahead <= (time.monotonic() - qemu.read_at) * _HOST_CPUS * 1e9 + _ROUNDING_NS:
            return hosts, True
    return libvirts, False


def _libvirt_cpu_times(dom: Any) -> dict[str, int]:
    """virDomainGetCPUStats of the whole domain, in the `cpu-total` group's names; none from a
    driver that lacks it."""
    try:
        totals = dom.getCPUStats(True)[0]
    except libvirt.libvirtError as error:
        if is_missing_domain(error):
            raise
        return {}
    return {ours: totals[theirs] for theirs, ours in _CPU_FIELDS.items() if theirs in totals}


def _vcpu_times(
    dom: Any, qemu: QemuProcess | None, process: Process, checked: Checked
) -> tuple[dict[int, VcpuTimes] | None, float | None]:
    """The vCPUs' times where the host gives them, and when they were last found not to be
    libvirt's, if they were.

    Checked with virDomainGetVcpus, which libvirtd answers from /proc without the domain's job or
    its monitor: the same vCPU numbers, and each vCPU's time read after the host's and ahead by no
    more than the time since plus a clock tick (one thread runs on one CPU at a time). A vCPU
    plugged or unplugged since changes the host's answer with libvirt's; where the host cannot
    read them any more, libvirt's come with this round's call, and the next survey checks again."""
    if qemu is None or qemu.vcpu_times is None:  # nothing to check (cgroup v1, ...): no call
        return None, None
    hosts = qemu.vcpu_times
    if process in checked.vcpus:
        return hosts, None
    refused_at = checked.vcpus_refused.get(process)
    if refused_at is not None and time.monotonic() - refused_at < VCPUS_RECHECK_SECONDS:
        return None, refused_at
    try:
        libvirts = {number: cpu_time for number, _, cpu_time, _ in dom.vcpus()[0]}
    except libvirt.libvirtError as error:
        if is_missing_domain(error):
            raise
        return None, time.monotonic()  # a driver without it, or vCPU threads libvirt does not know
    slack = (time.monotonic() - qemu.read_at) * 1e9 + CLOCK_TICK_NS
    agree = hosts.keys() == libvirts.keys() and all(
        0 <= cpu_time - hosts[number].time <= slack for number, cpu_time in libvirts.items()
    )
    return (hosts, None) if agree else (None, time.monotonic())


def _vcpu_keys(vcpus: Mapping[int, VcpuTimes], maximum: int) -> dict[str, int]:
    """The `vcpu` stat group's keys, as libvirt fills them: the state of an online vCPU is always
    VIR_VCPU_RUNNING."""
    keys = {"vcpu.current": len(vcpus), "vcpu.maximum": maximum}
    for number, times in vcpus.items():
        keys[f"vcpu.{number}.state"] = libvirt.VIR_VCPU_RUNNING
        keys[f"vcpu.{number}.time"] = times.time
        keys[f"vcpu.{number}.wait"] = times.wait
        keys[f"vcpu.{number}.delay"] = times.delay
    return keys

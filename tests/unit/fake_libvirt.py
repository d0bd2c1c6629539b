"""A fake libvirt connection for fast, deterministic unit tests of the exporter's logic.

It copies the behaviour measured on a real libvirtd with a frozen QEMU
(docs/libvirt-behaviour.md): a call that needs a frozen domain's monitor blocks until the
domain is thawed, whoever holds its job makes NOWAIT stats calls answer at once with partial
stats, and control info reports the monitor as occupied while a call waits in it. libvirtd serves
at most MAX_CLIENT_REQUESTS calls of one connection at once (its `max_client_requests`), so calls
stuck on frozen domains make the connection's other calls wait. Every call is counted per domain
and method, so that tests can check that no second call was sent, and each connection records
the most calls it carried at once.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from libvirt_exporter.host import QemuProcess, VcpuTimes

NOWAIT = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
MAX_CLIENT_REQUESTS = 5
"""libvirtd's default max_client_requests."""
MONITOR_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_IOTHREAD
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
"""The groups that need QEMU's monitor (docs/libvirt-behaviour.md); `block` also its disks."""
IMAGES = "/var/lib/libvirt/images"


class FakeLibvirtError(libvirt.libvirtError):  # type: ignore[misc]  # libvirt-python has no type hints
    def __init__(self, message: str, code: int = libvirt.VIR_ERR_INTERNAL_ERROR) -> None:
        super().__init__(message)
        self._code = code

    def get_error_code(self) -> int:
        return self._code


@dataclass
class FakeDomain:
    """A running domain with 2 vCPUs, one disk and one NIC unless told otherwise."""

    name: str
    id: int
    vcpus: int = 2
    disks: tuple[str, ...] = ("vda",)
    nics: tuple[str, ...] = ("vnet0",)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    reads: int = 0
    """Stats calls answered so far: every value grows with it, so that fresher reads differ."""
    survey_reads: int = 0
    block_reads: int = 0
    frozen: threading.Event = field(default_factory=threading.Event)
    job_holders: int = 0
    monitor_waiters: int = 0
    monitor_busy_since: float = 0.0
    failures: dict[str, FakeLibvirtError] = field(default_factory=dict)
    perf_events: tuple[str, ...] = ()
    iothreads: tuple[int, ...] = ()
    job: dict[str, Any] | None = None
    """A running background job's statistics (virDomainGetJobStats), if one runs."""
    metadata: str = ""
    """What its <metadata> holds, as XML."""
    title: str = ""
    description: str = ""
    devices: str = ""
    """More devices for its XML (network disks, hostdev NICs); the disks among them are in its
    block stats group too."""
    cpuset: str = ""
    """The host CPUs all its vCPUs may run on (<vcpu cpuset=>); empty for any."""
    vcpupin: dict[int, str] = field(default_factory=dict)
    """Per vCPU, the host CPUs it is pinned to (<cputune><vcpupin>)."""
    block_group: bool = True
    """False: the driver's bulk stats leave out the block group, as libvirt's test driver does."""
    storage: str = IMAGES
    """The mount point its disk images live on."""
    qemu_stopped: bool = False
    """Its QEMU process is stopped (SIGSTOP): /proc shows it, and its monitor does not answer."""
    stuck_on_storage: bool = False
    """A call made its QEMU touch its dead storage: its main loop waits for the storage."""
    iotune: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per disk target, the settings of its <iotune> (`total_bytes_sec`: 10485760, ...)."""
    guest_balloon: bool = True
    """False: no balloon driver in the guest, or no stats period: libvirt reports the balloon's
    size and QEMU's RSS, none of the guest's own figures."""
    agent: str | None = None
    """The state of its guest-agent channel in its XML (`connected`, `disconnected`); None: none."""
    guest_info: dict[str, Any] = field(default_factory=dict)
    """What virDomainGetGuestInfo answers while its agent is connected."""
    agent_answers: threading.Event = field(default_factory=threading.Event)
    """Cleared: the agent inside the guest is frozen, every agent call waits."""

    def __post_init__(self) -> None:
        self.frozen.set()  # set = thawed: waiting on it returns at once
        self.agent_answers.set()

    def cpu_times(self) -> dict[str, int]:
        """Its cgroup's counters, in the `cpu-total` group's names: they grow from one survey to the
        next (whose stats call ends it), and whoever reads them within a survey reads the same."""
        n = self.survey_reads + 1
        return {"cpu.time": n * 1_000_000_000, "cpu.user": n * 600_000_000, "cpu.system": n * 300_000_000}

    def vcpu_times(self) -> dict[int, VcpuTimes]:
        """Each vCPU thread's counters in /proc, as the `vcpu` group names them; like `cpu_times`,
        they grow from one survey to the next."""
        n = self.survey_reads + 1
        return {v: VcpuTimes(time=n * 500_000_000, wait=n * 1000, delay=n * 2000) for v in range(self.vcpus)}

    def block_counters(self) -> dict[str, int]:
        """One read of a disk's I/O counters, as the block stats group names them."""
        n = self.block_reads = self.block_reads + 1
        return {
            "rd.reqs": n,
            "rd.bytes": n * 4096,
            "rd.times": n * 1_000_000,
            "wr.reqs": n,
            "wr.bytes": n * 8192,
            "wr.times": n * 2_000_000,
            "fl.reqs": n,
            "fl.times": n * 500_000,
        }

    @property
    def active(self) -> bool:
        return self.id >= 0

    def xml(self) -> str:
        disks = "".join(
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{self.storage}/{self.name}-{d}.qcow2'/>"
            f"<target dev='{d}' bus='virtio'/>{self._iotune(d)}</disk>"
            for d in self.disks
        )
        nics = "".join(
            f"<interface type='bridge'><mac address='52:54:00:00:00:0{i}'/><source bridge='br0'/>"
            f"<target dev='{n}'/><model type='virtio'/></interface>"
            for i, n in enumerate(self.nics)
        )
        return (
            f"<domain type='kvm'><name>{escape(self.name)}</name><uuid>{self.uuid}</uuid>"
            f"<title>{escape(self.title)}</title><description>{escape(self.description)}</description>"
            f"<metadata>{self.metadata}</metadata>{self._vcpus_xml()}{self._iothreads_xml()}"
            f"<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
            f"<devices>{disks}{nics}{self._agent_channel()}{self.devices}</devices></domain>"
        )

    def _agent_channel(self) -> str:
        if self.agent is None:
            return ""
        target = f"<target type='virtio' name='org.qemu.guest_agent.0' state='{self.agent}'/>"
        return f"<channel type='unix'>{target}</channel>"

    def _vcpus_xml(self) -> str:
        cpuset = f" cpuset='{self.cpuset}'" if self.cpuset else ""
        pins = "".join(f"<vcpupin vcpu='{v}' cpuset='{cpus}'/>" for v, cpus in self.vcpupin.items())
        return f"<vcpu placement='static'{cpuset}>{self.vcpus}</vcpu><cputune>{pins}</cputune>"

    def _iothreads_xml(self) -> str:
        return f"<iothreads>{len(self.iothreads)}</iothreads>" if self.iothreads else ""

    def _iotune(self, disk: str) -> str:
        settings = self.iotune.get(disk)
        if not settings:
            return ""
        return "<iotune>" + "".join(f"<{k}>{v}</{k}>" for k, v in settings.items()) + "</iotune>"

    def stats(self, groups: int, with_monitor: bool) -> dict[str, Any]:
        """The stat groups asked for, as libvirt reports them; what needs the job only with it.
        Reads of groups that need the monitor and reads of the others (the survey's) are counted
        apart, so that each sampler's values grow with its own reads."""
        if groups & MONITOR_GROUPS:
            self.reads += 1
            n = self.reads
        else:
            self.survey_reads += 1
            n = self.survey_reads
        stats: dict[str, Any] = {
            "state.state": 1 if self.active else 5,
            "state.reason": 1 if self.active else 2,
        }
        if not self.active:
            return stats
        if groups & libvirt.VIR_DOMAIN_STATS_CPU_TOTAL:
            stats.update(
                {"cpu.time": n * 1_000_000_000, "cpu.user": n * 600_000_000, "cpu.system": n * 300_000_000}
            )
        if groups & libvirt.VIR_DOMAIN_STATS_BALLOON:
            stats.update(self._balloon(with_monitor))
        if groups & libvirt.VIR_DOMAIN_STATS_VCPU:
            stats.update({"vcpu.current": self.vcpus, "vcpu.maximum": self.vcpus})
            for v in range(self.vcpus):
                stats.update(
                    {
                        f"vcpu.{v}.state": 1,
                        f"vcpu.{v}.time": n * 500_000_000,
                        f"vcpu.{v}.wait": n * 1000,
                        f"vcpu.{v}.exits.sum": n * 7,
                        f"vcpu.{v}.blocking.cur": 0,
                    }
                )
                stats[f"vcpu.{v}.delay"] = n * 2000
        if groups & libvirt.VIR_DOMAIN_STATS_INTERFACE:
            stats["net.count"] = len(self.nics)
            for i, nic in enumerate(self.nics):
                stats[f"net.{i}.name"] = nic
                for direction in ("rx", "tx"):
                    stats.update({f"net.{i}.{direction}.bytes": n * 1500, f"net.{i}.{direction}.pkts": n})
                    stats.update({f"net.{i}.{direction}.errs": 0, f"net.{i}.{direction}.drop": 0})
        if groups & libvirt.VIR_DOMAIN_STATS_PERF:
            stats.update({f"perf.{event}": n * 1000 for event in self.perf_events})
        if groups & libvirt.VIR_DOMAIN_STATS_IOTHREAD and with_monitor and self.iothreads:
            stats["iothread.count"] = len(self.iothreads)
            for iothread in self.iothreads:
                stats.update(
                    {f"iothread.{iothread}.poll-max-ns": 32_768, f"iothread.{iothread}.poll-grow": 2}
                )
                stats[f"iothread.{iothread}.poll-shrink"] = 4
        if groups & libvirt.VIR_DOMAIN_STATS_MEMORY and self.iothreads:  # resctrl: on hosts that have it
            stats.update(
                {"memory.bandwidth.monitor.count": 1, "memory.bandwidth.monitor.0.name": "all-vcpus"}
            )
            for node in (0, 1):
                prefix = f"memory.bandwidth.monitor.0.node.{node}"
                stats.update(
                    {f"{prefix}.id": node, f"{prefix}.bytes.total": n * 4096, f"{prefix}.bytes.local": n}
                )
        if groups & libvirt.VIR_DOMAIN_STATS_BLOCK and with_monitor and self.block_group:
            disks = self.disks + tuple(re.findall(r"<disk\b.*?<target dev='([^']+)'", self.devices, re.S))
            stats["block.count"] = len(disks)
            for index, disk in enumerate(disks):
                stats[f"block.{index}.name"] = disk
                stats.update({f"block.{index}.{k}": v for k, v in self.block_counters().items()})
        if groups & libvirt.VIR_DOMAIN_STATS_DIRTYRATE:
            stats.update({"dirtyrate.calc_status": 2, "dirtyrate.megabytes_per_second": 12})
        return stats

    def _balloon(self, with_monitor: bool) -> dict[str, Any]:
        balloon = {"balloon.current": 1_048_576, "balloon.maximum": 2_097_152}
        if with_monitor:  # QEMU's RSS and the guest's own figures come through the monitor
            balloon["balloon.rss"] = 524_288
        if with_monitor and self.guest_balloon:
            balloon.update({"balloon.usable": 700_000, "balloon.available": 1_000_000})
            balloon.update(
                {"balloon.swap_in": 0, "balloon.major_fault": 3, "balloon.last-update": 1_700_000_000}
            )
        return balloon


class FakeVirDomain:
    """The virDomain handle: what the exporter calls per domain."""

    def __init__(self, conn: FakeConnection, domain: FakeDomain) -> None:
        self._conn = conn
        self._domain = domain

    def name(self) -> str:
        return self._domain.name

    def ID(self) -> int:
        return self._domain.id

    def UUIDString(self) -> str:
        return self._domain.uuid

    def UUID(self) -> bytes:
        return uuid.UUID(self._domain.uuid).bytes

    def connect(self) -> FakeConnection:
        return self._conn

    def XMLDesc(self, flags: int = 0) -> str:
        self._conn.count(self._domain.name, "XMLDesc")
        self._conn.check(self._domain, "XMLDesc")
        return self._domain.xml()

    def controlInfo(self) -> list[int]:
        self._conn.count(self._domain.name, "controlInfo")
        self._conn.check(self._domain, "controlInfo")
        if self._domain.monitor_waiters:
            busy_ms = int((time.monotonic() - self._domain.monitor_busy_since) * 1000)
            return [libvirt.VIR_DOMAIN_CONTROL_OCCUPIED, 0, busy_ms]
        if self._domain.job is not None:
            return [libvirt.VIR_DOMAIN_CONTROL_JOB, 0, 0]
        return [libvirt.VIR_DOMAIN_CONTROL_OK, 0, 0]

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        self._conn.count(self._domain.name, "jobStats")
        self._conn.enter_monitor(self._domain, "jobStats")
        return dict(self._domain.job or {"type": libvirt.VIR_DOMAIN_JOB_NONE})

    def blockStatsFlags(self, disk: str, flags: int = 0) -> dict[str, int]:
        self._conn.count(self._domain.name, "blockStatsFlags")
        self._conn.enter_monitor(self._domain, "blockStatsFlags")
        counters = self._domain.block_counters()
        legacy: tuple[str, ...] = ("rd_operations", "rd_bytes", "rd_total_times", "wr_operations", "wr_bytes")
        legacy += ("wr_total_times", "flush_operations", "flush_total_times")
        return dict(zip(legacy, counters.values(), strict=True))

    def blockInfo(self, disk: str, flags: int = 0) -> list[int]:
        self._conn.count(self._domain.name, "blockInfo")
        self._conn.enter_monitor(self._domain, "blockInfo", touches_disks=True)
        return [64 * 1024 * 1024, 200_704, 262_144]

    def guestInfo(self, types: int = 0, flags: int = 0) -> dict[str, Any]:
        """Through the agent: refused on a read-only connection or without the permission, as
        libvirtd refuses it; waits while the agent is frozen (not the domain's job or monitor)."""
        self._conn.count(self._domain.name, "guestInfo")
        if self._conn.read_only:
            raise FakeLibvirtError(
                "operation forbidden: read only access prevents virDomainGetGuestInfo",
                libvirt.VIR_ERR_OPERATION_DENIED,
            )
        if self._conn.host.agent_denied:
            raise FakeLibvirtError(
                "access denied: 'domain:write' permission required", libvirt.VIR_ERR_ACCESS_DENIED
            )
        self._conn.check(self._domain, "guestInfo")
        if self._domain.agent != "connected":
            raise FakeLibvirtError("QEMU guest agent is not connected", libvirt.VIR_ERR_AGENT_UNRESPONSIVE)
        with self._conn.carrying(), self._conn.requests:
            self._domain.agent_answers.wait()
        return dict(self._domain.guest_info)

    def vcpus(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[bool, ...]]]:
        """virDomainGetVcpus: from /proc, no monitor."""
        self._conn.count(self._domain.name, "vcpus")
        self._conn.check(self._domain, "vcpus")
        times = self._domain.vcpu_times()
        return [(v, libvirt.VIR_VCPU_RUNNING, t.time, 0) for v, t in times.items()], [(True,)] * len(times)

    def getCPUStats(self, total: bool, flags: int = 0) -> list[dict[str, int]]:
        """From the domain's cgroup: no monitor."""
        self._conn.count(self._domain.name, "getCPUStats")
        self._conn.check(self._domain, "getCPUStats")
        times = self._domain.cpu_times()
        return [
            {
                "cpu_time": times["cpu.time"],
                "user_time": times["cpu.user"],
                "system_time": times["cpu.system"],
            }
        ]


class FakeConnection:
    """What `libvirt.openReadOnly` returns, for the calls the exporter makes."""

    def __init__(self, host: FakeHost, read_only: bool = True) -> None:
        self.host = host
        self.read_only = read_only
        self.alive = True
        self.requests = threading.BoundedSemaphore(MAX_CLIENT_REQUESTS)
        """The requests of this connection libvirtd serves at once."""
        self.served: Counter[str] = Counter()
        """Calls served on this connection, by domain."""
        self.in_flight = 0
        self.most_in_flight = 0
        """The most domain calls this connection carried at the same moment."""
        self.close_callbacks: list[tuple[Callable[..., None], Any]] = []
        self.event_registrations: dict[int, tuple[int, Callable[..., None]]] = {}
        """Callback id -> (event id, callback), as domainEventRegisterAny returned them."""

    def count(self, domain: str, method: str) -> None:
        with self.host.lock:
            self.host.calls[(domain, method)] += 1

    @contextlib.contextmanager
    def carrying(self) -> Iterator[None]:
        """A domain call is on this connection for as long as this lasts."""
        with self.host.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self.host.lock:
                self.in_flight -= 1

    def check(self, domain: FakeDomain, method: str) -> None:
        with self.carrying(), self.requests:  # waits while stuck calls hold every request we may send
            self.served[domain.name] += 1
        self.host.responsive.wait()
        if not self.alive:
            raise FakeLibvirtError("internal error: client socket is closed")
        if domain.name not in self.host.domains:
            raise FakeLibvirtError("Domain not found", libvirt.VIR_ERR_NO_DOMAIN)
        if method in domain.failures:
            raise domain.failures[method]

    def enter_monitor(self, domain: FakeDomain, method: str, touches_disks: bool = False) -> None:
        """Take the domain's job and talk to its monitor: blocks while the domain is frozen, and
        once a call made its QEMU touch dead storage, until the storage answers again."""
        self.check(domain, method)
        storage = self.host.storage_alive(domain.storage)
        if touches_disks and not storage.is_set():
            domain.stuck_on_storage = True
        with self.host.lock:
            domain.job_holders += 1
            domain.monitor_waiters += 1
            if domain.monitor_waiters == 1:
                domain.monitor_busy_since = time.monotonic()
        with self.carrying(), self.requests:
            domain.frozen.wait()
            if domain.stuck_on_storage:
                storage.wait()
                domain.stuck_on_storage = False
        with self.host.lock:
            domain.job_holders -= 1
            domain.monitor_waiters -= 1

    # --- the libvirt API ----------------------------------------------------------------------
    def listAllDomains(self, flags: int = 0) -> list[FakeVirDomain]:
        self.host.responsive.wait()
        if not self.alive:
            raise FakeLibvirtError("internal error: client socket is closed")
        return [FakeVirDomain(self, d) for d in list(self.host.domains.values())]

    def lookupByUUID(self, raw_uuid: bytes) -> FakeVirDomain:
        self.host.responsive.wait()
        wanted = str(uuid.UUID(bytes=raw_uuid))
        for domain in list(self.host.domains.values()):
            if domain.uuid == wanted:
                self.count(domain.name, "lookupByUUID")
                return FakeVirDomain(self, domain)
        raise FakeLibvirtError("Domain not found", libvirt.VIR_ERR_NO_DOMAIN)

    def domainListGetStats(self, doms: list[FakeVirDomain], stats: int, flags: int) -> list[Any]:
        records = []
        for handle in doms:
            domain = handle._domain
            # Counted apart: a read of the groups that need no monitor (the survey's) cannot hang.
            self.count(domain.name, "domainListGetStats" if stats & MONITOR_GROUPS else "survey stats")
            self.host.stat_groups_asked.add(stats)
            self.check(domain, "domainListGetStats")
            with_monitor = domain.active and bool(stats & MONITOR_GROUPS)
            if with_monitor and flags & NOWAIT and domain.job_holders:
                with_monitor = False  # libvirt answers at once without what needs the job
            elif with_monitor:
                touches_disks = bool(stats & libvirt.VIR_DOMAIN_STATS_BLOCK)
                self.enter_monitor(domain, "domainListGetStats", touches_disks)
            records.append((handle, domain.stats(stats, with_monitor)))
        return records

    def listAllStoragePools(self, flags: int = 0) -> list[FakeStoragePool]:
        self.host.responsive.wait()
        with self.host.lock:
            self.host.calls[("*", "listAllStoragePools")] += 1
        return list(self.host.pools)

    def storagePoolLookupByName(self, name: str) -> FakeStoragePool:
        self.host.responsive.wait()
        for pool in list(self.host.pools):
            if pool.pool_name == name:
                return pool
        raise FakeLibvirtError("Storage pool not found", libvirt.VIR_ERR_NO_STORAGE_POOL)

    def registerCloseCallback(self, cb: Callable[..., None], opaque: Any) -> None:
        self.close_callbacks.append((cb, opaque))

    def unregisterCloseCallback(self) -> None:
        self.close_callbacks.clear()

    def domainEventRegisterAny(self, dom: Any, event_id: int, cb: Callable[..., None], opaque: Any) -> int:
        callback_id = len(self.event_registrations) + 1
        self.event_registrations[callback_id] = (event_id, cb)
        return callback_id

    def domainEventDeregisterAny(self, callback_id: int) -> int:
        del self.event_registrations[callback_id]
        return 0

    @property
    def event_callbacks(self) -> list[Callable[..., None]]:
        return [
            cb
            for event_id, cb in self.event_registrations.values()
            if event_id == libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
        ]

    def getHostname(self) -> str:
        return "hv1"

    def getLibVersion(self) -> int:
        self.host.responsive.wait()
        return 9_000_000

    def getType(self) -> str:
        return "QEMU"

    def getVersion(self) -> int:
        return 7_002_000

    def isAlive(self) -> int:
        return int(self.alive)

    def close(self) -> int:
        """As virConnectClose: each registered callback (close or domain event) holds a reference to
        the connection, which stays open, its socket too, until they are unregistered."""
        references = len(self.event_registrations) + len(self.close_callbacks)
        self.alive = references > 0
        return references


@dataclass
class FakeStoragePool:
    pool_name: str
    pool_info: list[int]
    """[state, capacity, allocation, available], as virStoragePoolGetInfo returns them."""
    reachable: threading.Event = field(default_factory=threading.Event)
    """Cleared: the pool's storage is dead and info() hangs, as on a lost NFS server."""

    def __post_init__(self) -> None:
        self.reachable.set()

    def name(self) -> str:
        return self.pool_name

    def info(self) -> list[int]:
        self.reachable.wait()
        return list(self.pool_info)


def _in_event_loop_thread(calls: Callable[[], object]) -> None:
    """libvirt runs its callbacks in its event-loop thread, never in the caller's."""
    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()


def _run_close_callbacks(conn: FakeConnection) -> None:
    for callback, opaque in conn.close_callbacks:
        callback(conn, 1, opaque)


def _run_event_callbacks(conn: FakeConnection, domain: FakeVirDomain) -> None:
    for callback in conn.event_callbacks:
        callback(conn, domain, 0, 0, None)


class FakeHost:
    """A libvirtd with its domains: every connection opened to it sees the same domains, and
    calls are counted across connections."""

    def __init__(self, domains: list[FakeDomain]) -> None:
        self.domains = {d.name: d for d in domains}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.stat_groups_asked: set[int] = set()
        self.pools = [FakeStoragePool("default", [2, 100 * 2**30, 40 * 2**30, 60 * 2**30])]
        self.connections: list[FakeConnection] = []
        self.refuse = False
        self.agent_denied = False
        """True: the access driver refuses the guest agent's calls to the exporter."""
        self.lock = threading.Lock()
        self.responsive = threading.Event()
        self.responsive.set()
        """Cleared: libvirtd is frozen, every call waits."""
        self.mounts = ["/", IMAGES]
        self._storages: dict[str, threading.Event] = {}
        """Per mount point: cleared while the storage does not answer."""
        self.probes: Counter[str] = Counter()
        self.cgroups_readable = True
        """False: this process cannot read the domains' cgroups (cgroup v1, a container)."""
        self.cgroup_skew_ns = 0
        """What the cgroup this process finds counts beyond libvirt's (not the domain's: its parent)."""

    # --- the host as the exporter sees it without libvirt (host.HostAccess) -------------------
    def qemu(self, domain: str, cpu: bool, vcpus: bool) -> QemuProcess | None:
        found = self.domains.get(domain)
        if found is None or not found.active:
            return None
        if not self.cgroups_readable:
            return QemuProcess(time.monotonic(), found.qemu_stopped)
        skew = self.cgroup_skew_ns
        return QemuProcess(
            time.monotonic(),
            found.qemu_stopped,
            cpu_times={key: count + skew for key, count in found.cpu_times().items()} if cpu else None,
            vcpu_times={v: replace(t, time=t.time + skew) for v, t in found.vcpu_times().items()}
            if vcpus
            else None,
        )

    def mount_points(self) -> list[str]:
        return list(self.mounts)

    def probe(self, mount_point: str) -> None:
        self.probes[mount_point] += 1
        self.storage_alive(mount_point).wait()

    def storage_alive(self, mount_point: str) -> threading.Event:
        with self.lock:
            if mount_point not in self._storages:
                self._storages[mount_point] = threading.Event()
                self._storages[mount_point].set()
            return self._storages[mount_point]

    def storage_outage(self, mount_point: str) -> None:
        """The storage stops answering, as a dead NFS server: its VMs' QEMUs keep running."""
        if mount_point not in self.mounts:
            self.mounts.append(mount_point)
        self.storage_alive(mount_point).clear()

    def storage_back(self, mount_point: str) -> None:
        self.storage_alive(mount_point).set()

    def stop_qemu(self, name: str) -> None:
        """SIGSTOP on the domain's QEMU: /proc shows it stopped, and its monitor does not answer."""
        self.domains[name].qemu_stopped = True
        self.freeze(name)

    def continue_qemu(self, name: str) -> None:
        self.domains[name].qemu_stopped = False
        self.thaw(name)

    def open(self, uri: str, read_only: bool = True) -> FakeConnection:
        if self.refuse:
            raise FakeLibvirtError("Failed to connect socket to '/run/libvirt/libvirt-sock-ro'")
        conn = FakeConnection(self, read_only)
        self.connections.append(conn)
        return conn

    def open_read_write(self, uri: str) -> FakeConnection:
        return self.open(uri, read_only=False)

    def open_connections(self) -> list[FakeConnection]:
        return [conn for conn in self.connections if conn.alive]

    def freeze(self, name: str) -> None:
        self.domains[name].frozen.clear()

    def thaw(self, name: str) -> None:
        self.domains[name].frozen.set()

    def thaw_all(self) -> None:
        for domain in self.domains.values():
            domain.agent_answers.set()
        self.responsive.set()
        for domain in self.domains.values():
            domain.frozen.set()
            domain.qemu_stopped = False
        for storage in list(self._storages.values()):
            storage.set()

    def add(self, domain: FakeDomain) -> None:
        self.domains[domain.name] = domain
        self.emit_event(domain)

    def remove(self, name: str) -> None:
        self.emit_event(self.domains.pop(name))

    def stop_libvirtd(self, close_callbacks: bool = True) -> None:
        """libvirtd went away: every connection closes, and libvirt runs their close callbacks
        (or, as measured while calls wait on a frozen libvirtd, does not run them yet)."""
        for conn in self.open_connections():
            conn.alive = False
            if close_callbacks:
                _in_event_loop_thread(partial(_run_close_callbacks, conn))

    def emit_event(self, domain: FakeDomain) -> None:
        """A lifecycle or device event about `domain`, on every open connection."""
        for conn in self.open_connections():
            handle = FakeVirDomain(conn, domain)
            _in_event_loop_thread(partial(_run_event_callbacks, conn, handle))


GUEST_INFO: dict[str, Any] = {
    "user.count": 2,
    "os.id": "debian",
    "os.name": "Debian GNU/Linux",
    "os.pretty-name": "Debian GNU/Linux 12 (bookworm)",
    "os.version": "12 (bookworm)",
    "os.version-id": "12",
    "os.machine": "x86_64",
    "os.kernel-release": "6.1.0-57-amd64",
    "os.kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3",
    "timezone.name": "CET",
    "timezone.offset": 3600,
    "hostname": "web-01",
    "fs.count": 3,
    "fs.0.name": "vda1",
    "fs.0.mountpoint": "/",
    "fs.0.fstype": "ext4",
    "fs.0.total-bytes": 38398976,
    "fs.0.used-bytes": 5257216,
    "fs.0.disk.count": 1,
    "fs.0.disk.0.alias": "vda",
    "fs.1.name": "sr0",
    "fs.1.mountpoint": "/media/cdrom",
    "fs.1.fstype": "iso9660",
    "fs.1.total-bytes": 4096,
    "fs.1.used-bytes": 4096,
    "fs.2.name": "dm-0",
    "fs.2.mountpoint": "/srv",
    "fs.2.fstype": "xfs",
    "fs.2.total-bytes": 2**30,
    "fs.2.used-bytes": 2**29,
    "if.count": 2,
    "if.0.name": "lo",
    "if.0.hwaddr": "00:00:00:00:00:00",
    "if.0.addr.count": 1,
    "if.0.addr.0.type": "ipv4",
    "if.0.addr.0.addr": "127.0.0.1",
    "if.0.addr.0.prefix": 8,
    "if.1.name": "eth0",
    "if.1.hwaddr": "52:54:00:00:00:01",
    "if.1.addr.count": 2,
    "if.1.addr.0.type": "ipv4",
    "if.1.addr.0.addr": "192.0.2.10",
    "if.1.addr.0.prefix": 24,
    "if.1.addr.1.type": "ipv6",
    "if.1.addr.1.addr": "2001:db8::10",
    "if.1.addr.1.prefix": 64,
}
"""What libvirt 9.0 answered for the suite's booting guest, with a root, a CD and an XFS volume."""


def agent_vm(name: str, agent: str | None = "connected") -> FakeDomain:
    """A running domain whose guest agent answers GUEST_INFO (`agent`: its channel's state)."""
    return FakeDomain(name, 1, agent=agent, guest_info=dict(GUEST_INFO))

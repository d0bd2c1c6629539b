"""The domains of the host, as of the last survey, with what the host shows of each without QEMU.

A survey is one call, which asks libvirtd only what it answers without any domain's job or QEMU
monitor, even for a hung QEMU (docs/libvirt-behaviour.md): the domain list, each running domain's
control info (whether its monitor is busy, and for how long), XML (only for domains that are new,
restarted or reported changed by an event), state and network counters (the `state` and `interface`
stat groups, which need no job); and from the host itself, whether each QEMU process is stopped, on
which mount point each disk lives, and the CPU times of each domain and its vCPUs (host_counters.py).
The samplers then send no call that would only get stuck.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import libvirt

from libvirt_exporter.calls import CallKey, Domain, Outcome, Status
from libvirt_exporter.domain_xml import Disk, DomainDescription, MetadataField, parse_domain_xml
from libvirt_exporter.host import HostAccess, storage_of
from libvirt_exporter.host_counters import Checked, Counted, read_counters
from libvirt_exporter.lanes import Dispatcher, Lane
from libvirt_exporter.libvirt_client import describe, is_missing_domain
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import CycleFailed, SamplerName

log = get_logger(__name__)

SURVEY = CallKey(SamplerName.BASIC)
_MONITOR_FREE_STATES = (libvirt.VIR_DOMAIN_CONTROL_OK, libvirt.VIR_DOMAIN_CONTROL_JOB)


@dataclass(frozen=True)
class DomainEntry:
    name: str
    domain: Any
    """The virDomain of the lane the survey ran on; calls use `Lane.domain`."""
    id: int
    monitor_free: bool
    monitor_busy_seconds: float
    job_running: bool
    """A background job (a migration, a backup, a dump) runs: its progress can be read."""
    description: DomainDescription | None
    qemu_stopped: bool = False
    """Its QEMU process is stopped: nothing it is asked will be answered until it runs again."""
    storages: tuple[str, ...] = ()
    """The mount points its disks with a medium live on (local paths only)."""
    vcpus_from_host: bool = False
    """The survey read its vCPUs' figures from the host (host_counters.py): a call need not ask
    libvirt for the `vcpu` group."""

    @property
    def active(self) -> bool:
        return self.id >= 0

    @cached_property
    def subject(self) -> Domain:
        return Domain(self.name)

    @property
    def disks_with_media(self) -> tuple[Disk, ...]:
        return _disks_with_media(self.description)


def _disks_with_media(description: DomainDescription | None) -> tuple[Disk, ...]:
    return description.disks_with_media if description is not None else ()


@dataclass
class _Surveyed:
    """One domain as the survey thread saw it."""

    entry: DomainEntry
    uuid: bytes
    counted: Counted
    """Its CPU times and vCPU figures; the survey's stats call adds its state and network counters."""
    parsed: bool = False
    """Its XML was read and parsed in this survey."""


@dataclass(frozen=True)
class Survey:
    """What a survey found: the values read for each domain, and the domains gone since the last."""

    values: Mapping[str, Mapping[str, Any]]
    taken_at: float
    gone: set[Domain]


def _control_info(dom: Any) -> list[int] | None:
    try:
        info: list[int] = dom.controlInfo()
        return info
    except libvirt.libvirtError as error:
        if is_missing_domain(error):
            raise
        return None  # unsupported by the driver, or unknown: treat the monitor as free


Described = tuple[int, DomainDescription | None]
"""A domain's description, and the domain id its XML was read at."""


@dataclass(frozen=True)
class _Asked:
    """What a survey reads besides the domain list: the stat `groups` (which must need no job),
    and with `cpu` and `vcpu` the domains' CPU times and vCPU figures."""

    groups: int
    cpu: bool
    vcpu: bool


def _survey(
    lane: Lane,
    asked: _Asked,
    known: Mapping[str, Described],
    checked: Checked,
    host: HostAccess,
    metadata: tuple[MetadataField, ...],
) -> list[_Surveyed]:
    """Runs in a pool thread, and builds each domain's entry there, XML parsed and disks placed on
    their storages: the hub only swaps the new entries in, so that the deadlines it times and the
    hand-over to the front do not wait for it.
    `known` holds the descriptions read so far; `checked` what the host was found to give."""
    mount_points = host.mount_points()
    surveyed = []
    for dom in lane.conn.listAllDomains(0):
        try:
            name, dom_id = dom.name(), dom.ID()
            active = dom_id >= 0
            control = _control_info(dom) if active else None
            known_id, description = known.get(name, (None, None))
            parsed = known_id != dom_id
            if parsed:
                description = _parse(name, dom.XMLDesc(0), metadata)
            qemu, counted = None, Counted()
            if active:
                qemu = host.qemu(name, asked.cpu, asked.vcpu)
                counted = read_counters(
                    dom, (name, dom_id), description, qemu, checked, asked.cpu, asked.vcpu
                )
        except libvirt.libvirtError as error:
            if not is_missing_domain(error):
                log.warning("cannot survey domain", err=describe(error))
            continue
        entry = DomainEntry(
            name=name,
            domain=dom,
            id=dom_id,
            monitor_free=control is None or control[0] in _MONITOR_FREE_STATES,
            monitor_busy_seconds=_busy_seconds(control),
            job_running=control is not None and control[0] == libvirt.VIR_DOMAIN_CONTROL_JOB,
            description=description,
            qemu_stopped=qemu is not None and qemu.stopped,
            storages=_storages(description, mount_points),
            vcpus_from_host=counted.vcpus_from_host,
        )
        surveyed.append(_Surveyed(entry, dom.UUID(), counted, parsed))
    by_name = {seen.entry.name: seen for seen in surveyed}
    for dom, stats in lane.conn.domainListGetStats([seen.entry.domain for seen in surveyed], asked.groups, 0):
        if (seen := by_name.get(dom.name())) is not None:
            seen.counted.values.update(stats)
    return surveyed


def _storages(description: DomainDescription | None, mount_points: list[str]) -> tuple[str, ...]:
    disks = _disks_with_media(description)
    return tuple(sorted({storage for disk in disks if (storage := storage_of(disk.path, mount_points))}))


_NO_SIGNALS: frozenset[str] = frozenset()


class HangSignal:
    """What tells, without a call to the domain, that its QEMU is hung or that a call would hang."""

    QEMU_STOPPED = "qemu_stopped"
    MONITOR_BUSY = "monitor_busy"
    STORAGE_UNRESPONSIVE = "storage_unresponsive"
    ALL = (QEMU_STOPPED, MONITOR_BUSY, STORAGE_UNRESPONSIVE)


class Inventory:
    """Which domains exist now, and what the host shows of each; the `basic` sampler surveys."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        host: HostAccess,
        include_inactive: bool = False,
        metadata: tuple[MetadataField, ...] = (),
    ) -> None:
        self._dispatcher = dispatcher
        self._host = host
        self._include_inactive = include_inactive
        self._metadata = metadata
        """What to read from each domain's <metadata> (`--libvirt.metadata`)."""
        self._entries: dict[str, DomainEntry] = {}
        self._descriptions: dict[str, Described] = {}
        self._checked = Checked()
        """What the host was found to give as libvirt does (host_counters.py)."""
        self.unresponsive_storages: frozenset[str] = frozenset()
        """The mount points whose storage did not answer its latest probe (set by the survey)."""

    def domains(self) -> list[DomainEntry]:
        """The domains to export: the running ones, and shut-off ones with --libvirt.include-inactive."""
        return [e for e in self._entries.values() if e.active or self._include_inactive]

    def inactive_left_out(self) -> int:
        """Shut-off domains not exported: they still count in `libvirt_domains{state="shutoff"}`."""
        return 0 if self._include_inactive else sum(1 for e in self._entries.values() if not e.active)

    def get(self, name: str) -> DomainEntry | None:
        entry = self._entries.get(name)
        return entry if entry is not None and (entry.active or self._include_inactive) else None

    def storages(self) -> dict[str, int]:
        """Each mount point that running domains' disks live on, with how many domains use it."""
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            for storage in entry.storages if entry.active else ():
                counts[storage] = counts.get(storage, 0) + 1
        return counts

    def storages_probed(self, answered: set[str], unanswered: frozenset[str]) -> None:
        """Storages probed again outside the survey (samplers/storage.py `recheck`)."""
        self.unresponsive_storages = (self.unresponsive_storages - answered) | unanswered

    def hang_signals(self, entry: DomainEntry, busy_for: float) -> frozenset[str]:
        """The signals that hold for the domain: its QEMU stopped, its monitor busy for `busy_for`
        seconds or more (stuck on a call already), a storage of its disks unresponsive. For a
        domain without any, one shared empty set: a render's state holds the signals of every
        domain, and would otherwise hold an object per domain for the garbage collector to scan."""
        signals = []
        if entry.qemu_stopped:
            signals.append(HangSignal.QEMU_STOPPED)
        if not entry.monitor_free and entry.monitor_busy_seconds >= busy_for:
            signals.append(HangSignal.MONITOR_BUSY)
        if not self.unresponsive_storages.isdisjoint(entry.storages):
            signals.append(HangSignal.STORAGE_UNRESPONSIVE)
        return frozenset(signals) if signals else _NO_SIGNALS

    def mark_changed(self, names: set[str]) -> None:
        """A lifecycle or device event: read these domains' XML again at the next survey."""
        for name in names:
            self._descriptions.pop(name, None)

    def refresh(self, deadline: float, groups: int, cpu: bool, vcpu: bool) -> Survey:
        """Survey the host, reading the stat `groups` (which must need no job) and, with `cpu` and
        `vcpu`, the CPU times and vCPU figures of each domain. Keeps the previous inventory when
        the survey cannot be done (raises CycleFailed)."""
        if not self._dispatcher.up:
            raise CycleFailed("not connected to libvirt")
        asked, checked, known = _Asked(groups, cpu, vcpu), self._checked, dict(self._descriptions)
        # Reserved: the survey cannot hang on QEMU, and it is how hung VMs are found, so it must
        # not be refused when calls stuck on hung VMs fill the cap.
        outcome = self._dispatcher.call(
            SURVEY,
            lambda lane: _survey(lane, asked, known, checked, self._host, self._metadata),
            deadline,
            reserved=True,
        )
        if outcome.status is not Status.OK or outcome.value is None or outcome.call is None:
            raise CycleFailed(f"surveying the domains failed: {_why(outcome)}")
        read: list[_Surveyed] = outcome.value
        self._dispatcher.keep_handles({seen.uuid for seen in read})
        self._checked = _checked(read)
        gone = self._replace(read)
        values = {seen.entry.name: seen.counted.values for seen in read}
        return Survey(values, outcome.call.started_at, gone)

    def _replace(self, read: list[_Surveyed]) -> set[Domain]:
        entries = {seen.entry.name: seen.entry for seen in read}
        for seen in read:
            if seen.parsed:
                self._descriptions[seen.entry.name] = (seen.entry.id, seen.entry.description)
        for name in self._descriptions.keys() - entries.keys():
            del self._descriptions[name]
        exported_before = {entry.name for entry in self.domains()}
        self._entries = entries
        return {Domain(name) for name in exported_before - {entry.name for entry in self.domains()}}


def _checked(read: list[_Surveyed]) -> Checked:
    processes = [((seen.entry.name, seen.entry.id), seen.counted) for seen in read]
    return Checked(
        cpu=frozenset(process for process, counted in processes if counted.cpu_from_host),
        vcpus=frozenset(process for process, counted in processes if counted.vcpus_from_host),
        vcpus_refused={p: c.vcpus_refused_at for p, c in processes if c.vcpus_refused_at is not None},
    )


def _why(outcome: Outcome[Any]) -> str:
    if outcome.error is not None:
        return describe(outcome.error)
    if outcome.status is Status.TIMEOUT:
        return "ran past its deadline"
    return "the previous listing has not returned yet"


def _busy_seconds(control: list[int] | None) -> float:
    if control is None or control[0] != libvirt.VIR_DOMAIN_CONTROL_OCCUPIED:
        return 0.0
    return control[2] / 1000.0


def _parse(name: str, xml: str, metadata: tuple[MetadataField, ...]) -> DomainDescription | None:
    try:
        return parse_domain_xml(xml, metadata)
    except Exception as error:
        log.warning("cannot parse domain XML", domain=name, err=str(error))
        return None

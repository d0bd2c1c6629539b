"""The domains of the host, as of the last survey, with each one's parsed XML.

A survey lists the domains and asks each running one for its control info, which libvirt answers
without the QEMU monitor even when QEMU is frozen: it tells which domains' monitors are busy, so
that the samplers do not send them calls that would only get stuck too. Domain XML is read only
for domains that are new, restarted or reported changed by an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gevent.lock
import libvirt

from libvirt_exporter.calls import CallKey, Domain, Outcome, Status
from libvirt_exporter.domain_xml import Disk, DomainDescription, parse_domain_xml
from libvirt_exporter.lanes import Dispatcher, Lane
from libvirt_exporter.libvirt_client import describe, is_missing_domain
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import CycleFailed

log = get_logger(__name__)

SURVEY = CallKey("inventory")
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

    @property
    def active(self) -> bool:
        return self.id >= 0

    @property
    def subject(self) -> Domain:
        return Domain(self.name)

    @property
    def disks_with_media(self) -> tuple[Disk, ...]:
        """An empty CD-ROM drive has no statistics to read."""
        if self.description is None:
            return ()
        return tuple(disk for disk in self.description.disks if disk.target and disk.path)


@dataclass
class _Surveyed:
    """One domain as the survey thread saw it."""

    name: str
    domain: Any
    id: int
    uuid: bytes
    control: list[int] | None
    xml: str | None


def _control_info(dom: Any) -> list[int] | None:
    try:
        info: list[int] = dom.controlInfo()
        return info
    except libvirt.libvirtError as error:
        if is_missing_domain(error):
            raise
        return None  # unsupported by the driver, or unknown: treat the monitor as free


def _survey(lane: Lane, known_ids: dict[str, int]) -> list[_Surveyed]:
    """Runs in a pool thread. `known_ids` maps names to the domain id their XML was read at."""
    surveyed = []
    for dom in lane.conn.listAllDomains(0):
        try:
            name, dom_id = dom.name(), dom.ID()
            control = _control_info(dom) if dom_id >= 0 else None
            xml = dom.XMLDesc(0) if known_ids.get(name) != dom_id else None
        except libvirt.libvirtError as error:
            if not is_missing_domain(error):
                log.warning("cannot survey domain", err=describe(error))
            continue
        surveyed.append(_Surveyed(name, dom, dom_id, dom.UUID(), control, xml))
    return surveyed


class Inventory:
    """Which domains exist now; samplers read it, the bulk sampler refreshes it every cycle."""

    def __init__(self, dispatcher: Dispatcher, deadline: float, include_inactive: bool = False) -> None:
        self._dispatcher = dispatcher
        self._deadline = deadline
        self._include_inactive = include_inactive
        self._entries: dict[str, DomainEntry] = {}
        self._surveying = gevent.lock.Semaphore()
        self._descriptions: dict[str, tuple[int, DomainDescription | None]] = {}

    def domains(self) -> list[DomainEntry]:
        """The domains to export: the running ones, and shut-off ones with --libvirt.include-inactive."""
        return [e for e in self._entries.values() if e.active or self._include_inactive]

    def inactive_left_out(self) -> int:
        """Shut-off domains not exported: they still count in `libvirt_domains{state="shutoff"}`."""
        return 0 if self._include_inactive else sum(1 for e in self._entries.values() if not e.active)

    def get(self, name: str) -> DomainEntry | None:
        entry = self._entries.get(name)
        return entry if entry is not None and (entry.active or self._include_inactive) else None

    def mark_changed(self, names: set[str]) -> None:
        """A lifecycle or device event: read these domains' XML again at the next survey."""
        for name in names:
            self._descriptions.pop(name, None)

    def refresh(self) -> set[Domain]:
        """Survey the host; keep the previous inventory when the survey cannot be done (raises
        CycleFailed). Returns the domains no longer exported: undefined, or shut off and not
        exported, whose series must go.

        A refresh asked for while another runs (after an event) waits for that one instead.
        """
        if self._surveying.locked():
            with self._surveying:
                return set()
        with self._surveying:
            return self._survey()

    def _survey(self) -> set[Domain]:
        if not self._dispatcher.up:
            raise CycleFailed("not connected to libvirt")
        known_ids = {name: dom_id for name, (dom_id, _) in self._descriptions.items()}
        outcome = self._dispatcher.call(SURVEY, lambda lane: _survey(lane, known_ids), self._deadline)
        if outcome.status is not Status.OK or outcome.value is None:
            raise CycleFailed(f"listing domains failed: {_why(outcome)}")
        self._dispatcher.keep_handles({seen.uuid for seen in outcome.value})
        return self._replace(outcome.value)

    def _replace(self, surveyed: list[_Surveyed]) -> set[Domain]:
        entries = {}
        for seen in surveyed:
            if seen.xml is not None:
                self._descriptions[seen.name] = (seen.id, _parse(seen.name, seen.xml))
            entries[seen.name] = DomainEntry(
                name=seen.name,
                domain=seen.domain,
                id=seen.id,
                monitor_free=seen.control is None or seen.control[0] in _MONITOR_FREE_STATES,
                monitor_busy_seconds=_busy_seconds(seen.control),
                job_running=seen.control is not None and seen.control[0] == libvirt.VIR_DOMAIN_CONTROL_JOB,
                description=self._descriptions.get(seen.name, (0, None))[1],
            )
        for name in self._entries.keys() - entries.keys():
            self._descriptions.pop(name, None)
        exported_before = {entry.subject for entry in self.domains()}
        self._entries = entries
        return exported_before - {entry.subject for entry in self.domains()}


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


def _parse(name: str, xml: str) -> DomainDescription | None:
    try:
        return parse_domain_xml(xml)
    except Exception as error:
        log.warning("cannot parse domain XML", domain=name, err=str(error))
        return None

"""The `guest` sampler: what the QEMU guest agent in each VM reports, off by default.

One call per domain, virDomainGetGuestInfo, which asks the agent for the guest's file systems, OS,
logged-in users, time zone, host name and interfaces' addresses at once (the addresses are what
virDomainInterfaceAddresses with the agent as source answers; libvirt 9.0 gives them here too).

An agent that does not answer (a guest busy or frozen, the agent stopped) makes the call wait for as
long as it does not: libvirt waits for the agent without a timeout unless one was set on the domain,
which would change it (measured: docs/libvirt-behaviour.md). So each call runs under its own
deadline, a domain whose guest call is stuck gets no second one, and the stuck call counts against
`--sampler.max-stuck-calls` like any other: an agent that does not answer costs one thread, as a
hung QEMU does. The call holds the domain's agent job in libvirt, not its job or QEMU's monitor, so
a stuck one holds up no other sampler's calls on the domain (`CallKey.holds_domain`).

No call goes to a domain without an agent channel (it has no guest values to be stale), nor to one
whose channel no agent is connected to: libvirt writes that into the domain XML, which the survey
reads again on libvirt's agent-lifecycle event, so that nothing is asked of the agent to find out.
Such a domain's guest values are flagged stale, as are those of a domain a hang signal holds for.

libvirt refuses these calls on a read-only connection, so they run on read-write lanes of their own
(`--sampler.guest.uri`), opened only when this sampler runs; what the exporter may do through them
is for libvirt's access control to narrow (docs/security.md). A refusal is logged once, not for
every domain at every cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import libvirt

from libvirt_exporter.calls import Outcome, Status, Subject
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.lanes import Lane
from libvirt_exporter.libvirt_client import describe, is_denied
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainSampler

log = get_logger(__name__)

GUEST_INFO_TYPES = (
    libvirt.VIR_DOMAIN_GUEST_INFO_USERS
    | libvirt.VIR_DOMAIN_GUEST_INFO_OS
    | libvirt.VIR_DOMAIN_GUEST_INFO_TIMEZONE
    | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME
    | libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM
    | libvirt.VIR_DOMAIN_GUEST_INFO_INTERFACES
)
"""Everything but the guest's disks, which the block sampler and the domain XML tell already."""


def read_guest_info(domain: Any, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread, on a read-write lane."""
    info: Mapping[str, Any] = lane.domain(domain).guestInfo(GUEST_INFO_TYPES, 0)
    return info


class GuestSampler(DomainSampler):
    name = SamplerName.GUEST
    holds_domain = False
    _denied: bool = False
    """A refusal was logged, and no call has succeeded since."""

    def entries(self) -> list[DomainEntry]:
        """The running domains with a guest-agent channel."""
        return [
            entry
            for entry in self._inventory.domains()
            if entry.active and entry.description is not None and entry.description.agent is not None
        ]

    def _sample(self) -> None:
        entries = self.entries()
        self._dispatcher.keep_handles({entry.domain.UUID() for entry in entries})
        self._sample_each(
            (entry.subject, partial(read_guest_info, entry.domain)) for entry in self._callable(entries)
        )

    def _callable(self, entries: Iterable[DomainEntry]) -> list[DomainEntry]:
        """Those with an agent connected, and no hang signal: the others' values are flagged."""
        connected = []
        for entry in entries:
            if entry.description is not None and entry.description.agent_connected:
                connected.append(entry)
            else:
                self._store.count_failure(self.name, entry.subject, Status.SKIPPED)
        return super()._callable(connected)

    def _record(self, subject: Subject, outcome: Outcome[Any]) -> None:
        """A refusal for want of a privilege says so once, until a call succeeds again: it is the
        same for every domain and every cycle."""
        if outcome.status is Status.ERROR and outcome.error is not None and is_denied(outcome.error):
            self._store.count_failure(self.name, subject, Status.ERROR)
            if not self._denied:
                self._denied = True
                log.error(
                    "libvirt refuses the guest sampler's calls: grant the exporter's user the "
                    "permissions docs/security.md names, or turn --collector.guest off",
                    err=describe(outcome.error),
                )
            return
        if outcome.status is Status.OK:
            self._denied = False
        super()._record(subject, outcome)

"""The `basic` sampler: the round's survey of the host, and each domain's state, CPU time, network
counters and, where the host gives them, vCPU figures. It has no loop of its own: the round's first
domain sampler runs its cycle.

Everything it reads, libvirtd answers without any domain's job or QEMU monitor (inventory.py), so it
never hangs on a hung VM, and its values stay fresh for every domain, hung ones included. The other
domain samplers start their cycles with `ensure_recent`: the first of a round surveys, the others
wait for that survey, so that every call of the round is chosen from what the host shows now (a
QEMU stopped, a monitor busy, a storage that does not answer: samplers/storage.py probes it here).
"""

from __future__ import annotations

import time

import gevent.lock
import libvirt

from libvirt_exporter.calls import Domain
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.cycle import run_cycle_and_record
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainParts, DomainSampler
from libvirt_exporter.samplers.storage import StorageSampler
from libvirt_exporter.store import Sample


def stat_groups(collectors: frozenset[str]) -> int:
    """The stat groups that need no job: `state` always, `interface` when its collector is on."""
    groups = libvirt.VIR_DOMAIN_STATS_STATE
    if "interface" in collectors:
        groups |= libvirt.VIR_DOMAIN_STATS_INTERFACE
    return int(groups)


class BasicSampler(DomainSampler):
    name = SamplerName.BASIC

    def __init__(
        self, config: SamplerConfig, parts: DomainParts, storage: StorageSampler, collectors: frozenset[str]
    ) -> None:
        super().__init__(config, parts)
        self._prober = storage
        self._groups = stat_groups(collectors)
        self._cpu = "cpu" in collectors
        self._vcpu = "vcpu" in collectors
        self._surveying = gevent.lock.Semaphore()
        self._surveyed_at = -float("inf")

    def ensure_recent(self) -> None:
        """Survey, unless a survey ended within half an interval (this round's): the samplers of a
        round all start with this, and the first one surveys."""
        if time.monotonic() - self._surveyed_at >= self.config.interval / 2:
            self.refresh()

    def refresh(self) -> None:
        """Survey now, as a cycle of this sampler."""
        run_cycle_and_record(self, self._store)

    def run_cycle(self) -> None:
        """One asked for while another runs waits for that one instead."""
        if self._surveying.locked():
            with self._surveying:
                return
        with self._surveying:
            self._read_survey()
            self._surveyed_at = time.monotonic()

    def _read_survey(self) -> None:
        survey = self._inventory.refresh(self.config.deadline, self._groups, self._cpu, self._vcpu)
        self._store.forget(survey.gone)
        for name, values in survey.values.items():
            if self._inventory.get(name) is not None:
                self._store.offer(self.name, Domain(name), Sample(values, survey.taken_at))
        run_cycle_and_record(self._prober, self._store)

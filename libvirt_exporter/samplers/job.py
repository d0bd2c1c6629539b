"""The `job` sampler: progress of a domain's background job, such as a migration.

Only domains whose control info says a job runs get a call (virDomainGetJobStats), each under its
own deadline: the call needs the QEMU monitor, which a hung QEMU does not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.lanes import Lane
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainSampler


def read_job(domain: Any, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread."""
    stats: Mapping[str, Any] = lane.domain(domain).jobStats(0)
    return stats


class JobSampler(DomainSampler):
    name = SamplerName.JOB

    def entries(self) -> list[DomainEntry]:
        return [entry for entry in self._inventory.domains() if entry.job_running]

    def _sample(self) -> None:
        ready = self._callable(self.entries())
        self._sample_each((entry.subject, partial(read_job, entry.domain)) for entry in ready)

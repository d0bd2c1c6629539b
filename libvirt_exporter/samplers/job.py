"""The `job` sampler: progress of a domain's background job, such as a migration.

Only domains whose control info says a job runs get a call (virDomainGetJobStats), each under its
own deadline: the call needs the QEMU monitor, which a frozen QEMU does not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from libvirt_exporter.lanes import Lane
from libvirt_exporter.samplers.per_domain import DomainSampler

NAME = "job"


def read_job(domain: Any, lane: Lane) -> Mapping[str, Any]:
    """Runs in a pool thread."""
    stats: Mapping[str, Any] = lane.domain(domain).jobStats(0)
    return stats


class JobSampler(DomainSampler):
    def subjects(self) -> list[str]:
        return [entry.name for entry in self._inventory.domains() if entry.job_running]

    def run_cycle(self) -> None:
        self._connection.require_up()
        running = self._callable(entry for entry in self._inventory.domains() if entry.job_running)
        self._sample_each((entry.name, partial(read_job, entry.domain)) for entry in running)

"""One call per domain, all sent at once, each under its own deadline: how a sampler isolates a
frozen VM from the healthy ones."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent

from libvirt_exporter.calls import CallKey, CallRunner, Outcome, Status
from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.libvirt_client import describe
from libvirt_exporter.store import Sample, Store

log = logging.getLogger(__name__)

Read = Callable[[], Mapping[str, Any]]


class PerDomainCalls:
    """Sends a sampler's per-domain calls and books their outcomes in the store."""

    def __init__(
        self,
        config: SamplerConfig,
        runner: CallRunner,
        store: Store,
        still_exists: Callable[[str], bool],
    ) -> None:
        self._config = config
        self._runner = runner
        self._store = store
        self._still_exists = still_exists

    def run(self, reads: Iterable[tuple[str, Read]]) -> None:
        """Sample each (domain, read) at once, and return when each has returned or timed out."""
        gevent.joinall([gevent.spawn(self._run_one, domain, read) for domain, read in reads])

    def _run_one(self, domain: str, read: Read) -> None:
        outcome = self._runner.run(
            CallKey(self._config.name, domain),
            read,
            self._config.deadline,
            on_late=lambda late: self._record_late(domain, late),
        )
        self.record(domain, outcome)

    def record(self, domain: str, outcome: Outcome[Any]) -> None:
        """Store the values of a call that returned, or count why there are none."""
        if outcome.status is Status.OK and outcome.call is not None:
            self._store.offer(self._config.name, domain, Sample(outcome.value or {}, outcome.call.started_at))
            return
        self._store.count_failure(self._config.name, domain, outcome.status)
        if outcome.status is Status.ERROR:
            log.info(
                "libvirt call failed",
                extra={
                    "fields": {
                        "sampler": self._config.name,
                        "domain": domain,
                        "err": describe(outcome.error or Exception()),
                    }
                },
            )
        elif outcome.status is Status.TIMEOUT:
            log.warning(
                "libvirt call ran past its deadline",
                extra={
                    "fields": {
                        "sampler": self._config.name,
                        "domain": domain,
                        "deadline": self._config.deadline,
                    }
                },
            )

    def _record_late(self, domain: str, outcome: Outcome[Any]) -> None:
        if self._still_exists(domain):
            self.record(domain, outcome)

"""The loop that runs one sampler every interval, and what a sampler must offer to be run by it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import gevent

from libvirt_exporter.config import SamplerConfig
from libvirt_exporter.store import Store

log = logging.getLogger(__name__)


class CycleFailed(Exception):
    """A cycle that produced nothing at all (no connection, or the host-wide call failed)."""


class Sampler(Protocol):
    config: SamplerConfig

    def subjects(self) -> list[str]:
        """The domains this sampler is expected to have fresh values for."""
        ...

    def run_cycle(self) -> None:
        """Sample once; raise CycleFailed when nothing could be sampled."""
        ...


def run_cycle_and_record(sampler: Sampler, store: Store) -> None:
    """One cycle, with its duration and success recorded for the sampler-health metrics."""
    name = sampler.config.name
    started = time.monotonic()
    try:
        sampler.run_cycle()
    except CycleFailed as error:
        store.cycle_failed(name, time.monotonic() - started)
        log.warning("sampling cycle failed", extra={"fields": {"sampler": name, "err": str(error)}})
    except Exception:
        store.cycle_failed(name, time.monotonic() - started)
        log.exception("sampling cycle failed", extra={"fields": {"sampler": name}})
    else:
        store.cycle_succeeded(name, time.monotonic() - started, time.time())


def run_forever(sampler: Sampler, store: Store, publish: Callable[[], None]) -> None:
    """Start a cycle every interval (at once when one ran longer), and publish after each."""
    while True:
        started = time.monotonic()
        run_cycle_and_record(sampler, store)
        publish()
        gevent.sleep(max(0.0, started + sampler.config.interval - time.monotonic()))

"""The loop that runs each sampler every interval, and renders once the cycles of a round are over."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import CycleFailed
from libvirt_exporter.samplers.base import Sampler
from libvirt_exporter.store import Store

log = get_logger(__name__)


def run_cycle_and_record(sampler: Sampler, store: Store) -> None:
    """One cycle, with its duration and success recorded for the sampler-health metrics, under
    each name the sampler's cycles stand for."""
    name = sampler.name
    started = time.monotonic()
    succeeded = False
    try:
        sampler.run_cycle()
        succeeded = True
    except CycleFailed as error:
        log.warning("sampling cycle failed", sampler=name, err=str(error))
    except Exception:
        log.exception("sampling cycle failed", sampler=name)
    duration = time.monotonic() - started
    for account in sampler.accounts():
        if succeeded:
            store.cycle_succeeded(account, duration, time.time())
        else:
            store.cycle_failed(account, duration)


class Rounds:
    """Runs the samplers' cycles, and publishes once the cycles that run together are all over.

    Samplers on the same interval start their cycles together, and rendering the snapshot costs
    about as much CPU as their sampling: one render per round, not one per sampler. So that
    overlapping cycles (samplers on other intervals, cycles longer than their interval) cannot
    put it off for ever, a cycle that ends `longest_wait` seconds or more after the last render
    publishes whatever else runs.
    """

    def __init__(self, store: Store, publish: Callable[[], None], longest_wait: float) -> None:
        self._store = store
        self._publish = publish
        self._longest_wait = longest_wait
        self._running = 0
        self.started = self._published_at = time.monotonic()

    def run_cycle(self, sampler: Sampler) -> None:
        self._running += 1
        try:
            run_cycle_and_record(sampler, self._store)
        finally:
            self._running -= 1
        if self._running == 0 or time.monotonic() - self._published_at >= self._longest_wait:
            self._published_at = time.monotonic()
            self._publish()


def run_forever(sampler: Sampler, rounds: Rounds) -> None:
    """Start a cycle on each tick of the sampler's interval, counted from the start of the rounds,
    so that samplers on one interval keep starting together, and a round is rendered once. A cycle
    that runs longer than its interval (a call that hit a newly hung VM) skips the ticks it overran:
    starting again at once would put its sampler out of step with the others for good, and each
    round would be rendered once per sampler."""
    interval = sampler.config.interval
    while True:
        rounds.run_cycle(sampler)
        gevent.sleep(interval - (time.monotonic() - rounds.started) % interval)

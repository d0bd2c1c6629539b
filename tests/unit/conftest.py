"""Fixtures for unit tests: an exporter wired to a fake libvirt host, cycles driven by the test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.config import Config, SamplerConfig
from libvirt_exporter.cycle import run_cycle_and_record
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import Sampler
from tests.exposition import Series, domains_in, parse, plain_text, value
from tests.unit.fake_libvirt import FakeDomain, FakeHost

__all__ = ["Series", "domains_in", "parse", "value"]  # unit tests import them from here

DEADLINE = 0.2
INTERVAL = 1.0


SIZES_INTERVAL = 3600.0
"""Disk sizes are read in a domain's first bulk cycle, and not again within a test unless it says so."""


def make_config(
    deadline: float = DEADLINE,
    interval: float = INTERVAL,
    max_stuck: int = 16,
    sizes_interval: float = SIZES_INTERVAL,
) -> Config:
    samplers = tuple(
        SamplerConfig(name, sizes_interval if name is SamplerName.BLOCK_INFO else interval, deadline)
        for name in SamplerName
    )
    return Config("127.0.0.1", 0, "/metrics", "qemu:///system", samplers, 4, max_stuck)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the hub run until a condition set by a thread or a greenlet holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.01)


class Harness:
    """An exporter on a fake host, whose cycles the test runs one at a time."""

    def __init__(self, host: FakeHost, config: Config) -> None:
        self.host = host
        self.exporter = Exporter(config, opener=host.open, host=host, guest_opener=host.open_read_write)
        self.exporter.follow_changes()
        assert self.exporter.connection.connect_once()
        self.exporter.refresh_inventory()  # as the exporter does before it starts its samplers

    def cycle(self, sampler: Sampler) -> Series:
        """A round of the sampler: the round's survey first, as at each tick of the exporter."""
        if sampler not in (self.exporter.basic, self.exporter.storage):
            self.exporter.basic.refresh()
        run_cycle_and_record(sampler, self.exporter.store)
        return self.scrape()

    def cycle_without_survey(self, sampler: Sampler) -> Series:
        """The sampler's cycle alone, as when it follows the round's survey at once."""
        run_cycle_and_record(sampler, self.exporter.store)
        return self.scrape()

    def scrape(self) -> Series:
        self.exporter.publish()
        return parse(plain_text(self.exporter.snapshot.current))


@pytest.fixture
def fake_host() -> FakeHost:
    return FakeHost([FakeDomain("a", 1), FakeDomain("b", 2), FakeDomain("c", 3)])


@pytest.fixture
def harness(fake_host: FakeHost) -> Iterator[Harness]:
    yield from _harness(fake_host)


@pytest.fixture
def harness_without_cgroups(fake_host: FakeHost) -> Iterator[Harness]:
    """On a host whose cgroups this process cannot read: the vCPU figures come with the bulk
    sampler's calls, read anew by each of them, and the CPU times with libvirt's answer."""
    fake_host.cgroups_readable = False
    yield from _harness(fake_host)


def _harness(host: FakeHost) -> Iterator[Harness]:
    harness = Harness(host, make_config())
    yield harness
    host.thaw_all()  # let stuck threads finish
    harness.exporter.stop()

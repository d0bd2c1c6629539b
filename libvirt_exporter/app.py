"""Wires the parts together: the connection, the call runner and its lanes, the samplers, the store,
the snapshot, HTTP."""

from __future__ import annotations

import gc
import signal
import socket
import sys
from dataclasses import replace
from functools import partial

import gevent
import gevent.event
from gevent.baseserver import parse_address
from gevent.server import StreamServer
from prometheus_client import CollectorRegistry, ProcessCollector

from libvirt_exporter import status_page
from libvirt_exporter.calls import CallRunner
from libvirt_exporter.collector import SnapshotCollector
from libvirt_exporter.collector.view import View
from libvirt_exporter.config import Config
from libvirt_exporter.connection import DomainsChanged, MainConnection, Opener
from libvirt_exporter.cycle import Rounds, run_forever
from libvirt_exporter.exposition import Snapshot, TakenState
from libvirt_exporter.front_link import Front, FrontFailed
from libvirt_exporter.host import HostAccess, LocalHost
from libvirt_exporter.inventory import Inventory
from libvirt_exporter.lanes import Dispatcher
from libvirt_exporter.libvirt_client import open_read_only, open_read_write
from libvirt_exporter.logs import get_logger
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.samplers.base import DomainParts, Sampler
from libvirt_exporter.samplers.basic import BasicSampler
from libvirt_exporter.samplers.block import BlockSampler
from libvirt_exporter.samplers.block_info import BlockInfoSampler
from libvirt_exporter.samplers.bulk import BulkSampler, stat_groups
from libvirt_exporter.samplers.guest import GuestSampler
from libvirt_exporter.samplers.job import JobSampler
from libvirt_exporter.samplers.storage import StorageSampler
from libvirt_exporter.samplers.storage_pool import StoragePoolSampler
from libvirt_exporter.store import Store

log = get_logger(__name__)

FRONT_NAMESPACE = "libvirt_exporter_front"
"""The front process's `process_*` families are named `libvirt_exporter_front_process_*`."""

SWITCH_INTERVAL = 0.001
"""Seconds the hub, when it wants the GIL, waits before the thread holding it must let it go
(Python's default: 5 ms)."""


def _favour_the_hub() -> None:
    """The hub hands each render to the front, answers its status page requests and times every
    call's deadline, while the threads of the render and of the calls (which split libvirt's
    answers in Python) hold the GIL for long stretches: the hub gets it back within
    SWITCH_INTERVAL. A garbage collection holds it throughout, so what lives as long as the process
    (modules, classes, functions) is left out of the collector's passes (what each bought:
    docs/benchmarks.md)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


class Exporter:
    """The running exporter. `start` spawns its greenlets; nothing here blocks the hub."""

    def __init__(
        self,
        config: Config,
        opener: Opener = open_read_only,
        host: HostAccess | None = None,
        guest_opener: Opener = open_read_write,
    ) -> None:
        self.config = config
        self.store = Store()
        self.runner = CallRunner(config.max_concurrent_calls, config.max_stuck_calls)
        self.connection = MainConnection(config.libvirt_uri, self.runner, config.connect_deadline, opener)
        self.dispatcher = Dispatcher(self.runner, self.connection)
        self.host = host if host is not None else LocalHost()
        self.inventory = Inventory(self.dispatcher, self.host, config.include_inactive, config.metadata)
        self.storage = StorageSampler(
            config.sampler(SamplerName.STORAGE), self.store, self.inventory, self.host
        )
        parts = DomainParts(self.dispatcher, self.store, self.inventory, self.storage)
        self.basic = BasicSampler(config.sampler(SamplerName.BASIC), parts, self.storage, config.collectors)
        groups = stat_groups(config.collectors)
        bulk = config.sampler(SamplerName.BULK)
        self.block = BlockSampler(config.sampler(SamplerName.BLOCK), self.store, self.inventory)
        self.block_info = BlockInfoSampler(
            config.sampler(SamplerName.BLOCK_INFO), self.store, self.inventory, bulk.interval
        )
        disks = (self.block, self.block_info) if config.enabled("block") else None
        self.bulk = BulkSampler(bulk, parts, self.basic, groups, disks)
        self.job = JobSampler(config.sampler(SamplerName.JOB), parts, self.basic)
        self.guest_dispatcher = Dispatcher(self.runner, self.connection, guest_opener, config.guest_uri)
        """Read-write lanes for the guest sampler alone, opened only when it runs."""
        guest_parts = replace(parts, dispatcher=self.guest_dispatcher)
        self.guest = GuestSampler(config.sampler(SamplerName.GUEST), guest_parts, self.basic)
        self.storage_pools = StoragePoolSampler(
            config.sampler(SamplerName.STORAGE_POOL), self.dispatcher, self.store
        )
        switched = ((self.job, "job"), (self.storage_pools, "storage_pool"), (self.guest, "guest"))
        self.looped: tuple[Sampler, ...] = (
            self.bulk,
            *(sampler for sampler, collector in switched if config.enabled(collector)),
        )
        """The samplers that run on their interval; the round's first runs the survey (`basic`)."""
        self.samplers: tuple[Sampler, ...] = (
            self.basic,
            self.storage,
            self.bulk,
            *(disks or ()),
            *self.looped[1:],
        )
        """Every sampler whose values are served; the disks' come with the bulk sampler's cycles."""
        self.view = View(
            self.connection,
            self.inventory,
            self.store,
            self.runner,
            self.storage.runner,
            self.samplers,
            config.collectors,
            busy_for=self.bulk.config.deadline,
            metadata_labels=tuple(field.label for field in config.metadata),
        )
        process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=process)
        self._front_pid = 0
        """The front process's, once started: its `process_*` families come with ours."""
        ProcessCollector(FRONT_NAMESPACE, pid=lambda: self._front_pid, registry=process)
        self.collector = SnapshotCollector(self.view)
        self.snapshot = Snapshot(self.take_state, process)
        self._greenlets: list[gevent.Greenlet] = []

    def take_state(self) -> TakenState:
        """The state as it is now (on the hub), and what renders it: the families and the status
        page of the same moment."""
        state = self.view.state()
        return TakenState(
            partial(self.collector.collect, state),
            partial(status_page.render, state, self.config.telemetry_path),
        )

    def publish(self) -> None:
        """Render a new snapshot for the scrapes to come."""
        self.snapshot.publish()

    def start(self) -> None:
        """Connect and start sampling in the background."""
        self.follow_changes()
        self._greenlets.append(gevent.spawn(self.connection.run))
        self._greenlets.append(gevent.spawn(self._start_samplers))

    def _start_samplers(self) -> None:
        """Once the first connection attempt is over, so that start-up is not counted as failing."""
        self.connection.first_attempt_done.wait()
        self.refresh_inventory()  # at once, not at the first tick
        rounds = Rounds(self.store, self.publish, min(s.config.interval for s in self.looped))
        for sampler in self.looped:
            self._greenlets.append(gevent.spawn(run_forever, sampler, rounds))

    def stop(self) -> None:
        gevent.killall(self._greenlets)

    def serve_forever(self) -> None:
        """Listen, start the front process that answers on that socket (front.py), sample, and hand
        the front each exposition, until SIGTERM. Raises FrontFailed if the front cannot start or ends
        first."""
        listener = listen(self.config.listen_host, self.config.listen_port)  # a port in use fails here
        _favour_the_hub()
        front = Front.start(listener, self.config)
        port = listener.getsockname()[1]
        listener.close()  # the front holds it
        self._front_pid = front.pid
        self.start()
        log.info("listening", address=f"{self.config.listen_host}:{port}", front_pid=front.pid)
        follower = gevent.spawn(front.follow, self.snapshot)
        answerer = gevent.spawn(front.answer, self.snapshot)
        stopping = gevent.event.Event()
        gevent.signal_handler(signal.SIGTERM, stopping.set)  # exit cleanly when systemd stops us
        gevent.signal_handler(signal.SIGUSR1, log_greenlets)
        gevent.wait([stopping, answerer], count=1)
        gevent.killall([follower, answerer])
        self.stop()
        front.stop()
        if not stopping.is_set():
            raise FrontFailed(f"the front process (which answers HTTP) ended: {front.how_it_ended()}")

    def follow_changes(self) -> None:
        """Act on what the main connection reports, in a greenlet of its own: show a lost or new
        connection at once (the lanes of a lost one go with it); after a reconnect or a domain
        event, survey again."""
        self._greenlets.append(gevent.spawn(self._follow_changes))

    def _follow_changes(self) -> None:
        for change in self.connection.changes:
            if isinstance(change, DomainsChanged):
                self.inventory.mark_changed(set(change.names))
            else:
                if not self.connection.up:
                    self.dispatcher.close_idle()
                    self.guest_dispatcher.close_idle()
                self.publish()
            if self.connection.up:
                gevent.spawn(self.refresh_inventory)

    def refresh_inventory(self) -> None:
        """A survey outside the rounds (after an event, a reconnect, at start-up)."""
        self.basic.refresh()
        self.publish()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host` (a name, an IPv4 or an IPv6 address) and `port`."""
    family, address = parse_address((host, port))
    listener: socket.socket = StreamServer.get_listener(address, family=family)
    return listener


def log_greenlets() -> None:
    """On SIGUSR1: log how many greenlets are alive, so that an operator (and the chaos runs) can see
    that they stay bounded. gevent keeps no registry of them, so they are counted among the garbage
    collector's objects: a few milliseconds, paid only when asked. Those objects leave out what
    `_favour_the_hub` froze, which holds no greenlet: every one is spawned after it."""
    greenlets = sum(1 for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead)
    log.info("greenlets", greenlets=greenlets)

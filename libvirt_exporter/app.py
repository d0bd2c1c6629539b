"""Wires the parts together: one connection, one call runner, the samplers, the snapshot, HTTP."""

from __future__ import annotations

import gc
import logging
import signal

import gevent
from prometheus_client import CollectorRegistry, ProcessCollector

from libvirt_exporter.calls import CallRunner
from libvirt_exporter.collector import SnapshotCollector
from libvirt_exporter.collector.view import View
from libvirt_exporter.config import Config
from libvirt_exporter.connection import Connection, Opener
from libvirt_exporter.cycle import Rounds, Sampler, run_forever
from libvirt_exporter.exposition import Snapshot
from libvirt_exporter.http import make_server
from libvirt_exporter.inventory import Inventory
from libvirt_exporter.libvirt_client import open_read_only
from libvirt_exporter.samplers import block, bulk, job, storage_pool
from libvirt_exporter.store import Store
from libvirt_exporter.web_config import load_web_config

log = logging.getLogger(__name__)


class Exporter:
    """The running exporter. `start` spawns its greenlets; nothing here blocks the hub."""

    def __init__(self, config: Config, opener: Opener = open_read_only) -> None:
        self.config = config
        self.store = Store()
        self.runner = CallRunner(config.max_concurrent_calls, config.max_stuck_calls)
        self.connection = Connection(
            config.libvirt_uri,
            self.runner,
            config.connect_deadline,
            on_change=self._connection_changed,
            on_domain_events=self._domains_changed,
            opener=opener,
        )
        bulk_config = config.sampler(bulk.NAME)
        self.inventory = Inventory(
            self.connection, bulk_config.deadline, self.store.forget, config.include_inactive
        )
        parts = (self.connection, self.inventory, self.runner, self.store)
        self.bulk = bulk.BulkSampler(bulk_config, *parts)
        self.bulk.groups = bulk.stat_groups(config.collectors)
        self.block = block.BlockSampler(config.sampler(block.NAME), *parts)
        self.job = job.JobSampler(config.sampler(job.NAME), *parts)
        self.storage_pools = storage_pool.StoragePoolSampler(
            config.sampler(storage_pool.NAME), self.connection
        )
        optional: dict[str, Sampler] = {
            block.NAME: self.block,
            job.NAME: self.job,
            storage_pool.NAME: self.storage_pools,
        }
        self.samplers: tuple[Sampler, ...] = (
            self.bulk,
            *(sampler for name, sampler in optional.items() if config.enabled(name)),
        )
        self.view = View(
            self.connection,
            self.inventory,
            self.store,
            self.runner,
            self.samplers,
            config.collectors,
            self.storage_pools if config.enabled(storage_pool.NAME) else None,
        )
        process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=process)
        self.snapshot = Snapshot(SnapshotCollector(self.view).freeze, process)
        self._greenlets: list[gevent.Greenlet] = []

    def publish(self) -> None:
        """Render a new snapshot for the scrapes to come."""
        self.snapshot.publish()

    def start(self) -> None:
        """Connect and start sampling in the background."""
        self._greenlets.append(gevent.spawn(self.connection.run))
        self._greenlets.append(gevent.spawn(self._start_samplers))

    def _start_samplers(self) -> None:
        """Once the first connection attempt is over, so that start-up is not counted as failing."""
        self.connection.first_attempt_done.wait()
        self._refresh_inventory()  # so that the block sampler's first cycle knows the domains too
        rounds = Rounds(self.store, self.publish, min(s.config.interval for s in self.samplers))
        for sampler in self.samplers:
            self._greenlets.append(gevent.spawn(run_forever, sampler, rounds))

    def stop(self) -> None:
        gevent.killall(self._greenlets)

    def serve_forever(self) -> None:
        web_config = load_web_config(self.config.web_config_file) if self.config.web_config_file else None
        server = make_server(
            self.config.listen_host,
            self.config.listen_port,
            self.snapshot,
            self.config.telemetry_path,
            web_config,
        )
        server.start()  # bind first: a port in use fails before any sampling starts
        self.start()
        log.info(
            "listening",
            extra={"fields": {"address": f"{self.config.listen_host}:{server.server_port}"}},
        )
        gevent.signal_handler(signal.SIGTERM, server.stop)  # exit cleanly when systemd stops us
        gevent.signal_handler(signal.SIGUSR1, log_greenlets)
        server.serve_forever()
        self.stop()

    def _connection_changed(self) -> None:
        """Show the new state at once; after a reconnect, take the domains of the new connection.

        This may run in an event-loop callback, where nothing may wait: the render gets a greenlet."""
        gevent.spawn(self.publish)
        if self.connection.up:
            gevent.spawn(self._refresh_inventory)

    def _domains_changed(self, names: set[str]) -> None:
        """A lifecycle or device event: re-read those domains and the domain list now."""
        self.inventory.mark_changed(names)
        gevent.spawn(self._refresh_inventory)

    def _refresh_inventory(self) -> None:
        try:
            self.inventory.refresh()
        except Exception as error:
            log.debug("inventory refresh after an event failed", extra={"fields": {"err": str(error)}})
        self.publish()


def log_greenlets() -> None:
    """On SIGUSR1: log how many greenlets are alive, so that an operator (and the chaos runs) can see
    that they stay bounded. gevent keeps no registry of them, so they are counted among the garbage
    collector's objects: a few milliseconds, paid only when asked."""
    greenlets = sum(1 for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead)
    log.info("greenlets", extra={"fields": {"greenlets": greenlets}})

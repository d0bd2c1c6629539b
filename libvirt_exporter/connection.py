"""The main connection to libvirtd: opened read-only, probed for liveness, reopened with backoff."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import gevent
import gevent.event
import gevent.queue
import libvirt

from libvirt_exporter.calls import CallKey, CallRunner, Outcome, Status
from libvirt_exporter.libvirt_client import describe, open_read_only
from libvirt_exporter.logs import get_logger

log = get_logger(__name__)

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
PROBE_INTERVAL_SECONDS = 2.0
UNRESPONSIVE_AFTER_SECONDS = 6.0
"""How long a liveness probe may go unanswered before libvirtd counts as unreachable."""
CONNECT = CallKey("connect")
PROBE = CallKey("probe")
ALIVE = CallKey("alive")

Opener = Callable[[str], Any]


@dataclass(frozen=True)
class HostInfo:
    """What libvirtd says about itself, read once per connection."""

    hostname: str
    libvirt_version: str
    hypervisor: str
    hypervisor_version: str


@dataclass(eq=False)
class _Opened:
    """One open main connection, and what was read or registered on it when it was opened."""

    conn: Any
    host: HostInfo
    generation: int
    event_callbacks: tuple[int, ...]
    """Ids of its domain-event callbacks: each holds a reference that keeps the connection open."""
    probing: bool = False


def _version_text(number: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


class _CrossThreadSignal:
    """Wakes the gevent hub from libvirt's event-loop thread, where a gevent primitive may not be
    touched: items are queued under a lock and the hub is woken by an async watcher."""

    def __init__(self, handler: Callable[[list[Any]], None]) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._handler = handler
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._drain)

    def send(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
        self._watcher.send()

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if items:
            self._handler(items)


@dataclass(frozen=True)
class ConnectionChanged:
    """The main connection came up or went down."""


@dataclass(frozen=True)
class DomainsChanged:
    """libvirt reported lifecycle or device events for these domains."""

    names: frozenset[str]


Change = ConnectionChanged | DomainsChanged


class MainConnection:
    """The connection that says whether libvirtd answers: it receives libvirt's close callback and
    the domain events, and carries the liveness probe. The samplers' calls run on lanes of their
    own (lanes.py), opened under the generation of this connection.

    Liveness is probed by the exporter itself, not by libvirt's keepalive, which can crash the
    client when it closes a connection several calls wait on (docs/libvirt-behaviour.md). A probe
    unanswered for `unresponsive_after` seconds, a close callback (libvirtd exited), or a failed
    call on a connection that is no longer open, marks libvirtd unreachable; `run` then reopens with
    exponential backoff. Every change is put on `changes`, in order, for the exporter to act on.
    """

    def __init__(
        self,
        uri: str,
        runner: CallRunner,
        connect_deadline: float,
        opener: Opener = open_read_only,
        unresponsive_after: float = UNRESPONSIVE_AFTER_SECONDS,
    ) -> None:
        self.uri = uri
        self.opener = opener
        self.reconnects = 0
        self.changes: gevent.queue.Queue[Change] = gevent.queue.Queue()
        self.first_attempt_done = gevent.event.Event()
        self._unresponsive_after = unresponsive_after
        self._runner = runner
        self.deadline = connect_deadline
        """Of opening, checking and closing a connection."""
        self._current: _Opened | None = None
        self._generation = 0
        self._ever_connected = False
        self._checking_alive = False
        self._close_signal = _CrossThreadSignal(self._closed_by_libvirt)
        self._event_signal = _CrossThreadSignal(
            lambda names: self.changes.put(DomainsChanged(frozenset(names)))
        )

    @property
    def up(self) -> bool:
        return self._current is not None

    @property
    def generation(self) -> int | None:
        """Of the open connection; None while libvirtd is unreachable."""
        return self._current.generation if self._current else None

    @property
    def host(self) -> HostInfo | None:
        return self._current.host if self._current else None

    def run(self) -> None:
        """Open the connection and probe it while it is up; reopen it when it is not: forever."""
        backoff = MIN_BACKOFF_SECONDS
        while True:
            if self.up:
                backoff = MIN_BACKOFF_SECONDS
                self._probe()
                gevent.sleep(PROBE_INTERVAL_SECONDS)
            elif not self.connect_once():
                gevent.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def connect_once(self) -> bool:
        """One attempt to open the connection; True when it is up."""
        opened = self._open_new()
        self.first_attempt_done.set()
        if opened is None:
            return False
        self._current = opened
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        log.info("connected to libvirt", uri=self.uri)
        self.changes.put(ConnectionChanged())
        return True

    def mark_down(self, reason: str) -> None:
        """libvirtd is unreachable: calls stop, and `run` opens a new connection."""
        if self._current is None:
            return
        log.warning("libvirt connection lost", uri=self.uri, reason=reason)
        lost, self._current = self._current, None
        self._close_unless_probing(lost)
        self.changes.put(ConnectionChanged())

    def check_alive(self) -> None:
        """After a call failed: it may have failed because the connection closed, before libvirt
        ran the close callback (it waits for the threads that use the connection). Ask the main
        connection itself, once at a time."""
        if self._current is None or self._checking_alive:
            return
        self._checking_alive = True
        gevent.spawn(self._mark_down_unless_open, self._current)

    def _mark_down_unless_open(self, opened: _Opened) -> None:
        try:
            outcome = self._runner.run(ALIVE, lambda: opened.conn.isAlive, self.deadline)
            if outcome.status is Status.OK and not outcome.value and opened is self._current:
                self.mark_down("closed")
        finally:
            self._checking_alive = False

    def _probe(self) -> None:
        """Takes no slot: libvirtd's freeze must be noticed even while every slot is taken."""
        opened = self._current
        assert opened is not None
        opened.probing = True
        outcome = self._runner.run(
            PROBE,
            lambda: opened.conn.getLibVersion,
            self._unresponsive_after,
            on_late=lambda _: self._probe_ended(opened),
            reserved=True,
        )
        if outcome.status is Status.TIMEOUT:
            if opened is self._current:
                self.mark_down("unresponsive")
        else:
            self._probe_ended(opened)

    def _probe_ended(self, opened: _Opened) -> None:
        opened.probing = False
        if opened is not self._current:
            self._close_unless_probing(opened)

    def _open_new(self) -> _Opened | None:
        """Open the main connection in a pool thread: opening hangs on a frozen libvirtd like any
        call. One that opens only after its deadline is closed again."""
        self._generation += 1
        generation = self._generation
        outcome = self._runner.run(
            CONNECT,
            lambda: partial(self._open, generation),
            self.deadline,
            on_late=self._close_late_opened,
        )
        if outcome.status is not Status.OK or outcome.value is None:
            reason = describe(outcome.error) if outcome.error else outcome.status.value
            log.warning("cannot connect to libvirt", uri=self.uri, err=reason)
            return None
        opened: _Opened = outcome.value
        return opened

    def _close_late_opened(self, outcome: Outcome[Any]) -> None:
        if outcome.status is Status.OK and outcome.value is not None:
            self._close_unless_probing(outcome.value)

    def _close_unless_probing(self, opened: _Opened) -> None:
        """Closing a connection under a call that waits on it is unsafe: the probe's ends first."""
        if not opened.probing:
            self._runner.run_detached(partial(_close_main, opened), self.deadline)

    def _open(self, generation: int) -> _Opened:
        """Runs in a pool thread."""
        conn = self.opener(self.uri)
        conn.registerCloseCallback(self._close_callback, generation)
        event_callbacks = self._register_domain_events(conn)
        host = HostInfo(
            hostname=conn.getHostname(),
            libvirt_version=_version_text(conn.getLibVersion()),
            hypervisor=conn.getType(),
            hypervisor_version=_version_text(conn.getVersion()),
        )
        return _Opened(conn, host, generation, event_callbacks)

    def _register_domain_events(self, conn: Any) -> tuple[int, ...]:
        """Register for the domain events; returns the callback ids (none when unsupported)."""
        callback_ids: list[int] = []
        try:
            for event_id in (
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE,  # I/O throttles, vCPU pinning changed live
                libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,  # <metadata>, title, description
                libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,  # the guest agent connected or left
            ):
                callback_ids.append(
                    conn.domainEventRegisterAny(None, event_id, self._domain_event_callback, None)
                )
        except libvirt.libvirtError as error:
            log.warning(
                "no domain events: the domain list is refreshed every bulk cycle only",
                err=describe(error),
            )
        return tuple(callback_ids)

    def _close_callback(self, _conn: Any, reason: int, generation: int) -> None:
        """Called by libvirt in its event-loop thread."""
        self._close_signal.send((generation, reason))

    def _domain_event_callback(self, _conn: Any, dom: Any, *_details: Any) -> None:
        """Called by libvirt in its event-loop thread for lifecycle, device, tunable, metadata and
        guest-agent events: the domain's XML is read again at the next survey."""
        self._event_signal.send(dom.name())

    def _closed_by_libvirt(self, closes: list[tuple[int, int]]) -> None:
        reasons = {1: "eof", 2: "keepalive", 3: "client"}
        for generation, reason in closes:
            if self._current is not None and generation == self._current.generation:
                self.mark_down(reasons.get(reason, "error"))


def _close_main(opened: _Opened) -> None:
    """Runs in a pool thread. Unhook the callbacks first, so that none runs on a closed handle and
    none keeps the connection open: each holds a reference to it, and libvirt closes its socket
    only when the last reference goes (a libvirtd restart otherwise leaks a socket or an eventfd).
    On a connection libvirtd closed, each is dropped all the same, then telling libvirtd fails."""
    for callback_id in opened.event_callbacks:
        with contextlib.suppress(libvirt.libvirtError):
            opened.conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        opened.conn.unregisterCloseCallback()
    opened.conn.close()

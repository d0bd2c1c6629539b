"""The one connection to libvirtd: opened read-only, watched by keepalive, reopened with backoff."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import gevent.event
import libvirt

from libvirt_exporter.calls import CallKey, CallRunner, LateHandler, Outcome, Status
from libvirt_exporter.libvirt_client import describe, open_read_only

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
CONNECT = CallKey("connection")

Opener = Callable[[str], Any]
DomainEventListener = Callable[[set[str]], None]


@dataclass(frozen=True)
class HostInfo:
    """What libvirtd says about itself, read once per connection."""

    hostname: str
    libvirt_version: str
    hypervisor: str
    hypervisor_version: str


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


class Connection:
    """Keeps a libvirt connection open for the samplers and says whether it is up.

    The close callback that libvirt fires from its event-loop thread (keepalive timeout, EOF,
    error) marks the connection down at once; `run` then reopens it with exponential backoff.

    A connection that holds a stuck call is retired: measured on libvirt 9.0, while one call on a
    connection waits on a frozen QEMU, other calls on that connection now and then stall for a
    whole keepalive interval, and every stuck call holds one of the 5 requests libvirtd serves a
    client at once. So new calls go to a fresh connection, and a retired one is closed once its
    stuck calls have returned.
    """

    def __init__(
        self,
        uri: str,
        runner: CallRunner,
        connect_deadline: float,
        on_change: Callable[[], None],
        on_domain_events: DomainEventListener,
        opener: Opener = open_read_only,
    ) -> None:
        self.uri = uri
        self.reconnects = 0
        self.host: HostInfo | None = None
        self._runner = runner
        self._deadline = connect_deadline
        self._opener = opener
        self._on_change = on_change
        self._on_domain_events = on_domain_events
        self._conn: Any = None
        self._stuck_calls: dict[Any, int] = {}
        self._rotating = False
        self._generation = 0
        self._ever_connected = False
        self._closed = gevent.event.Event()
        self.first_attempt_done = gevent.event.Event()
        self._close_signal = _CrossThreadSignal(self._closed_by_libvirt)
        self._event_signal = _CrossThreadSignal(lambda names: on_domain_events(set(names)))

    @property
    def up(self) -> bool:
        return self._conn is not None

    def current(self) -> Any:
        """The open virConnect, or None while libvirtd is unreachable."""
        return self._conn

    def call(
        self,
        key: CallKey,
        conn: Any,
        fn: Callable[[], T],
        deadline: float,
        on_late: LateHandler | None = None,
    ) -> Outcome[T]:
        """Run `fn`, a call made on `conn`, under `deadline`; retire `conn` while the call is stuck."""

        def returned_late(outcome: Outcome[Any]) -> None:
            self._stuck_call_returned(conn)
            self._check_after(conn, outcome)
            if on_late is not None:
                on_late(outcome)

        outcome = self._runner.run(key, fn, deadline, on_late=returned_late)
        if outcome.status is Status.TIMEOUT:
            self._stuck_calls[conn] = self._stuck_calls.get(conn, 0) + 1
            if conn is self._conn and not self._rotating:
                gevent.spawn(self._rotate)
        self._check_after(conn, outcome)
        return outcome

    def _check_after(self, conn: Any, outcome: Outcome[Any]) -> None:
        """After a failed call, ask whether the connection is still open.

        libvirt runs the close callback only once every thread waiting on the connection has let
        go of it (measured: with calls waiting on a frozen libvirtd, not until it was thawed),
        while the calls already fail with "client socket is closed" after the keepalive timeout.
        """
        if outcome.status is Status.ERROR and conn is self._conn:
            gevent.spawn(self._mark_down_unless_alive, conn)

    def _mark_down_unless_alive(self, conn: Any) -> None:
        outcome = self._runner.run(CallKey("connection", "alive"), conn.isAlive, self._deadline)
        if outcome.status is Status.OK and not outcome.value and conn is self._conn:
            self.mark_down("closed")

    def run(self) -> None:
        """Open the connection, wait for it to close, and open it again: forever."""
        backoff = MIN_BACKOFF_SECONDS
        while True:
            if self.up or self.connect_once():
                backoff = MIN_BACKOFF_SECONDS
                self._closed.wait()
                continue
            gevent.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _stuck_call_returned(self, conn: Any) -> None:
        self._stuck_calls[conn] -= 1
        if self._stuck_calls[conn] == 0:
            del self._stuck_calls[conn]
            if conn is not self._conn:
                self._close(conn)

    def _rotate(self) -> None:
        """Open a fresh connection for new calls while the current one holds a stuck call."""
        self._rotating = True
        generation = self._generation + 1
        outcome = self._runner.run(
            CallKey("connection", "rotate"), lambda: self._open(generation), self._deadline
        )
        self._rotating = False
        if outcome.status is not Status.OK or outcome.value is None:
            return  # keep the current connection; the next stuck call tries again
        if self._conn is None:  # libvirtd went away meanwhile: `run` reconnects
            self._close(outcome.value[0])
            return
        retired = self._conn
        self._conn, self.host = outcome.value
        self._generation = generation
        log.info("moved to a fresh libvirt connection: a call is stuck on the previous one")
        if retired not in self._stuck_calls:
            self._close(retired)
        self._on_change()

    def _close(self, conn: Any) -> None:
        key = CallKey("connection", f"close-{id(conn)}")
        gevent.spawn(self._runner.run, key, conn.close, self._deadline)

    def connect_once(self) -> bool:
        """One attempt to open the connection; True when it is up."""
        generation = self._generation + 1
        outcome = self._runner.run(CONNECT, lambda: self._open(generation), self._deadline)
        self.first_attempt_done.set()
        if outcome.status is not Status.OK or outcome.value is None:
            reason = describe(outcome.error) if outcome.error else outcome.status.value
            log.warning("cannot connect to libvirt", extra={"fields": {"uri": self.uri, "err": reason}})
            return False
        self._conn, self.host = outcome.value
        self._generation = generation
        self._closed.clear()
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        log.info("connected to libvirt", extra={"fields": {"uri": self.uri}})
        self._on_change()
        return True

    def mark_down(self, reason: str) -> None:
        """Forget the connection: its calls fail, and `run` opens a new one."""
        if self._conn is None:
            return
        log.warning("libvirt connection lost", extra={"fields": {"uri": self.uri, "reason": reason}})
        old, self._conn = self._conn, None
        self._closed.set()
        self._on_change()
        if old not in self._stuck_calls:
            self._close(old)

    def _open(self, generation: int) -> tuple[Any, HostInfo]:
        """Runs in a pool thread: opening can hang on a frozen libvirtd like any other call."""
        conn = self._opener(self.uri)
        conn.registerCloseCallback(self._close_callback, generation)
        self._register_domain_events(conn)
        host = HostInfo(
            hostname=conn.getHostname(),
            libvirt_version=_version_text(conn.getLibVersion()),
            hypervisor=conn.getType(),
            hypervisor_version=_version_text(conn.getVersion()),
        )
        return conn, host

    def _register_domain_events(self, conn: Any) -> None:
        try:
            for event_id in (
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
            ):
                conn.domainEventRegisterAny(None, event_id, self._domain_event_callback, None)
        except libvirt.libvirtError as error:
            log.warning(
                "no domain events: the domain list is refreshed every bulk cycle only",
                extra={"fields": {"err": describe(error)}},
            )

    def _close_callback(self, _conn: Any, reason: int, generation: int) -> None:
        """Called by libvirt in its event-loop thread."""
        self._close_signal.send((generation, reason))

    def _domain_event_callback(self, _conn: Any, dom: Any, *_details: Any) -> None:
        """Called by libvirt in its event-loop thread for lifecycle and device events."""
        self._event_signal.send(dom.name())

    def _closed_by_libvirt(self, closes: list[tuple[int, int]]) -> None:
        reasons = {1: "eof", 2: "keepalive", 3: "client"}
        for generation, reason in closes:
            if generation == self._generation:
                self.mark_down(reasons.get(reason, "error"))

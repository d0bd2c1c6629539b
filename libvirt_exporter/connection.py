"""The connection to libvirtd: opened read-only, probed for liveness, reopened with backoff."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import gevent
import gevent.event
import libvirt

from libvirt_exporter.calls import CallKey, CallRunner, LateHandler, Outcome, Status
from libvirt_exporter.cycle import CycleFailed
from libvirt_exporter.libvirt_client import describe, open_read_only

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
PROBE_INTERVAL_SECONDS = 2.0
UNRESPONSIVE_AFTER_SECONDS = 6.0
"""How long a liveness probe may go unanswered before libvirtd counts as unreachable."""
CONNECT = CallKey("connection")
PROBE = CallKey("connection", "probe")
FRESH = CallKey("connection", "fresh")

Opener = Callable[[str], Any]
DomainEventListener = Callable[[set[str]], None]


@dataclass(frozen=True)
class HostInfo:
    """What libvirtd says about itself, read once per connection."""

    hostname: str
    libvirt_version: str
    hypervisor: str
    hypervisor_version: str


@dataclass(eq=False)
class _Opened:
    """One open virConnect, and how many of the exporter's calls are using it."""

    conn: Any
    host: HostInfo
    generation: int
    event_callbacks: tuple[int, ...]
    """Ids of its domain-event callbacks: each holds a reference that keeps the connection open."""
    calls: int = 0
    stuck: int = 0


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
    """Keeps a libvirt connection open for the samplers and says whether libvirtd answers.

    Liveness is probed by the exporter itself, not by libvirt's keepalive: measured on libvirt
    9.0, a keepalive timeout that closes a connection on which several calls wait crashes the
    client (SIGSEGV in its I/O loop). A probe unanswered for `unresponsive_after` seconds, a close
    callback (libvirtd exited), or a failed call on a connection that is no longer open, marks
    libvirtd unreachable; `run` then reopens with exponential backoff.

    A connection that holds a stuck call is retired as well: measured on libvirt 9.0, while one
    call waits on a frozen QEMU, other calls on the same connection now and then stall until the
    next keepalive message (5 to 10 s), and every stuck call holds one of the 5 requests that
    libvirtd serves a client at once. New calls go to a fresh connection; a retired one is closed once
    none of the exporter's calls uses it any more (closing it under a waiting call is unsafe).
    A call is given its connection only when it is dispatched (see `call`), so that the calls of a
    cycle still waiting for a slot go to the fresh connection too, not to the retired one, where
    they would queue behind the stuck calls (measured in the chaos runs: healthy VMs went stale
    when several VMs froze at once).
    """

    def __init__(
        self,
        uri: str,
        runner: CallRunner,
        connect_deadline: float,
        on_change: Callable[[], None],
        on_domain_events: DomainEventListener,
        opener: Opener = open_read_only,
        unresponsive_after: float = UNRESPONSIVE_AFTER_SECONDS,
    ) -> None:
        self.uri = uri
        self.reconnects = 0
        self._unresponsive_after = unresponsive_after
        self._runner = runner
        self._deadline = connect_deadline
        self._opener = opener
        self._on_change = on_change
        self._current: _Opened | None = None
        self._opened: dict[Any, _Opened] = {}
        self._generation = 0
        self._ever_connected = False
        self._retiring: gevent.Greenlet | None = None
        self.first_attempt_done = gevent.event.Event()
        self._close_signal = _CrossThreadSignal(self._closed_by_libvirt)
        self._event_signal = _CrossThreadSignal(lambda names: on_domain_events(set(names)))

    @property
    def up(self) -> bool:
        return self._current is not None

    def require_up(self) -> None:
        """A sampling cycle while libvirtd is away fails as a whole, rather than call by call."""
        if self._current is None:
            raise CycleFailed("not connected to libvirt")

    @property
    def host(self) -> HostInfo | None:
        return self._current.host if self._current else None

    def current(self) -> Any:
        """The virConnect for new calls, or None while libvirtd is unreachable."""
        return self._current.conn if self._current else None

    def call(
        self,
        key: CallKey,
        read: Callable[[Any], T],
        deadline: float,
        on_late: LateHandler | None = None,
        on: Any = None,
        needs_slot: bool = True,
    ) -> Outcome[T]:
        """Run `read(conn)` in a pool thread under `deadline`, and keep the books of `conn`.

        `conn` is `on` when given (a call on handles that belong to one connection), else the
        connection that is current when the call is dispatched; while a stuck connection is being
        retired, dispatching waits for the fresh one. Not connected then: an ERROR outcome.
        """
        bound: list[_Opened] = []

        def bind() -> Callable[[], T]:
            if on is None and self._retiring is not None:
                self._retiring.join()  # bounded: opening the fresh connection has a deadline
            opened = self._opened.get(on) if on is not None else self._current
            if opened is None and on is None:
                raise ConnectionError("not connected to libvirt")
            if opened is not None:
                opened.calls += 1
                bound.append(opened)
            return partial(read, opened.conn if opened is not None else on)

        def returned_late(outcome: Outcome[Any]) -> None:
            if bound:
                bound[0].stuck -= 1
                self._call_ended(bound[0], outcome)
            if on_late is not None:
                on_late(outcome)

        outcome = self._runner.run_bound(key, bind, deadline, on_late=returned_late, needs_slot=needs_slot)
        if not bound:
            return outcome
        opened = bound[0]
        if outcome.status is Status.TIMEOUT:
            opened.stuck += 1
            if opened is self._current and self._retiring is None:
                self._retiring = gevent.spawn(self._retire_stuck, opened)
        else:
            self._call_ended(opened, outcome)
        return outcome

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
        opened = self._open_new(CONNECT)
        self.first_attempt_done.set()
        if opened is None:
            return False
        self._current = opened
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        log.info("connected to libvirt", extra={"fields": {"uri": self.uri}})
        self._on_change()
        return True

    def mark_down(self, reason: str) -> None:
        """libvirtd is unreachable: calls stop, and `run` opens a new connection."""
        if self._current is None:
            return
        log.warning("libvirt connection lost", extra={"fields": {"uri": self.uri, "reason": reason}})
        lost, self._current = self._current, None
        self._close_if_unused(lost)
        self._on_change()

    def _probe(self) -> None:
        opened = self._current
        assert opened is not None
        # No slot: calls waiting for a fresh connection hold the slots, and libvirtd's freeze
        # must be noticed all the same.
        outcome = self.call(PROBE, _lib_version, self._unresponsive_after, on=opened.conn, needs_slot=False)
        if outcome.status is Status.TIMEOUT and opened is self._current:
            self.mark_down("unresponsive")

    def _call_ended(self, opened: _Opened, outcome: Outcome[Any]) -> None:
        opened.calls -= 1
        if outcome.status is Status.ERROR and opened is self._current:
            gevent.spawn(self._mark_down_unless_open, opened)
        self._close_if_unused(opened)

    def _mark_down_unless_open(self, opened: _Opened) -> None:
        """A failed call may mean a closed connection whose close callback libvirt has not run
        yet (it waits for the threads that use the connection): ask the connection itself."""
        outcome = self._runner.run(CallKey("connection", "alive"), opened.conn.isAlive, self._deadline)
        if outcome.status is Status.OK and not outcome.value and opened is self._current:
            self.mark_down("closed")

    def _retire_stuck(self, stuck: _Opened) -> None:
        """Runs as `self._retiring`, once however many calls get stuck at the same moment."""
        try:
            self._move_to_fresh(stuck)
        finally:
            self._retiring = None

    def _move_to_fresh(self, stuck: _Opened) -> None:
        """Move new calls to a fresh connection while `stuck` holds a stuck call. Opening it takes
        no slot: it must not queue behind the calls that wait for it."""
        fresh = self._open_new(FRESH, needs_slot=False)
        if fresh is None:
            return  # keep the current connection; the next stuck call tries again
        if self._current is not stuck:  # it was lost meanwhile, and `run` takes care of that
            self._close_if_unused(fresh)
            return
        self._current = fresh
        log.info("moved to a fresh libvirt connection: a call is stuck on the previous one")
        self._close_if_unused(stuck)
        self._on_change()

    def _open_new(self, key: CallKey, needs_slot: bool = True) -> _Opened | None:
        """Open a connection in a pool thread: opening hangs on a frozen libvirtd like any call.
        One that opens only after its deadline is closed again."""
        self._generation += 1
        generation = self._generation
        outcome = self._runner.run_bound(
            key,
            lambda: lambda: self._open(generation),
            self._deadline,
            on_late=self._close_late_opened,
            needs_slot=needs_slot,
        )
        if outcome.status is not Status.OK or outcome.value is None:
            reason = describe(outcome.error) if outcome.error else outcome.status.value
            log.warning("cannot connect to libvirt", extra={"fields": {"uri": self.uri, "err": reason}})
            return None
        opened: _Opened = outcome.value
        self._opened[opened.conn] = opened
        return opened

    def _close_late_opened(self, outcome: Outcome[Any]) -> None:
        if outcome.status is Status.OK and outcome.value is not None:
            self._opened[outcome.value.conn] = outcome.value
            self._close_if_unused(outcome.value)

    def _close_if_unused(self, opened: _Opened) -> None:
        if opened is self._current or opened.calls > 0 or opened.conn not in self._opened:
            return
        del self._opened[opened.conn]
        key = CallKey("connection", f"close-{opened.generation}")
        gevent.spawn(self._runner.run, key, lambda: _close(opened), self._deadline)

    def _open(self, generation: int) -> _Opened:
        """Runs in a pool thread."""
        conn = self._opener(self.uri)
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
            ):
                callback_ids.append(
                    conn.domainEventRegisterAny(None, event_id, self._domain_event_callback, None)
                )
        except libvirt.libvirtError as error:
            log.warning(
                "no domain events: the domain list is refreshed every bulk cycle only",
                extra={"fields": {"err": describe(error)}},
            )
        return tuple(callback_ids)

    def _close_callback(self, _conn: Any, reason: int, generation: int) -> None:
        """Called by libvirt in its event-loop thread."""
        self._close_signal.send((generation, reason))

    def _domain_event_callback(self, _conn: Any, dom: Any, *_details: Any) -> None:
        """Called by libvirt in its event-loop thread for lifecycle and device events."""
        self._event_signal.send(dom.name())

    def _closed_by_libvirt(self, closes: list[tuple[int, int]]) -> None:
        reasons = {1: "eof", 2: "keepalive", 3: "client"}
        for generation, reason in closes:
            if self._current is not None and generation == self._current.generation:
                self.mark_down(reasons.get(reason, "error"))


def _lib_version(conn: Any) -> int:
    version: int = conn.getLibVersion()
    return version


def _close(opened: _Opened) -> None:
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

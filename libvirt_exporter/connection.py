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
from libvirt_exporter.lanes import Lane
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


class Connection:
    """Keeps libvirt connections open for the samplers and says whether libvirtd answers.

    The *main* connection receives libvirt's close callback and the domain events, and carries the
    liveness probe; the samplers' calls each run on a lane of their own (see lanes.py), opened under
    the main connection and closed when it is lost.

    Liveness is probed by the exporter itself, not by libvirt's keepalive: measured on libvirt
    9.0, a keepalive timeout that closes a connection on which several calls wait crashes the
    client (SIGSEGV in its I/O loop). A probe unanswered for `unresponsive_after` seconds, a close
    callback (libvirtd exited), or a failed call on a connection that is no longer open, marks
    libvirtd unreachable; `run` then reopens with exponential backoff.
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
        self._generation = 0
        self._ever_connected = False
        self._idle_lanes: list[Lane] = []
        self._closes = 0
        self._checking_alive = False
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

    def call(
        self,
        key: CallKey,
        read: Callable[[Lane], T],
        deadline: float,
        on_late: LateHandler | None = None,
        one_per_domain: bool = False,
    ) -> Outcome[T]:
        """Run `read(lane)` in a pool thread under `deadline`, on a lane no other call uses
        (`one_per_domain` as for CallRunner.run_bound).

        The lane is taken when the call is dispatched, from the idle ones or opened by the call's
        thread (under the call's deadline: opening hangs on a frozen libvirtd like any call). Not
        connected then: an ERROR outcome.
        """
        held: list[Lane] = []

        def bind() -> Callable[[], T]:
            if self._current is None:
                raise ConnectionError("not connected to libvirt")
            return partial(self._run_on_lane, self._idle_lane(), self._current.generation, held, read)

        def returned_late(outcome: Outcome[Any]) -> None:
            self._call_ended(held, outcome)
            if on_late is not None:
                on_late(outcome)

        outcome = self._runner.run_bound(key, bind, deadline, returned_late, one_per_domain=one_per_domain)
        if outcome.status is not Status.TIMEOUT:
            self._call_ended(held, outcome)
        return outcome

    def keep_domains(self, uuids: set[bytes]) -> None:
        """After a survey: idle lanes forget the handles of domains not in it."""
        for lane in self._idle_lanes:
            lane.keep_only(uuids)

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
        log.info("connected to libvirt", extra={"fields": {"uri": self.uri}})
        self._on_change()
        return True

    def mark_down(self, reason: str) -> None:
        """libvirtd is unreachable: calls stop, and `run` opens a new connection."""
        if self._current is None:
            return
        log.warning("libvirt connection lost", extra={"fields": {"uri": self.uri, "reason": reason}})
        lost, self._current = self._current, None
        self._close_main_unless_probing(lost)
        for lane in self._idle_lanes:
            self._close(lane.conn.close)
        self._idle_lanes.clear()
        self._on_change()

    def _probe(self) -> None:
        """Takes no slot: libvirtd's freeze must be noticed even while every slot is taken."""
        opened = self._current
        assert opened is not None
        opened.probing = True
        outcome = self._runner.run(
            PROBE,
            opened.conn.getLibVersion,
            self._unresponsive_after,
            on_late=lambda _: self._probe_ended(opened),
            needs_slot=False,
        )
        if outcome.status is Status.TIMEOUT:
            if opened is self._current:
                self.mark_down("unresponsive")
        else:
            self._probe_ended(opened)

    def _probe_ended(self, opened: _Opened) -> None:
        opened.probing = False
        if opened is not self._current:
            self._close_main_unless_probing(opened)

    def _idle_lane(self) -> Lane | None:
        """An idle lane of the current connection, or None: the call's thread opens one."""
        return self._idle_lanes.pop() if self._idle_lanes else None

    def _run_on_lane(
        self, lane: Lane | None, generation: int, held: list[Lane], read: Callable[[Lane], T]
    ) -> T:
        """Runs in a pool thread."""
        if lane is None:
            lane = Lane(self._opener(self.uri), generation)
        held.append(lane)
        try:
            return read(lane)
        except Exception:
            lane.note_failure()
            raise

    def _call_ended(self, held: list[Lane], outcome: Outcome[Any]) -> None:
        """Give the lane back, unless its connection failed or is of a lost main connection, or
        enough lanes are idle already (calls stuck meanwhile opened more). A failed call may
        mean that libvirtd is gone: the main connection is asked."""
        lane = held[0] if held else None
        current = self._current
        if lane is not None:
            reusable = not lane.broken and current is not None and lane.generation == current.generation
            if reusable and len(self._idle_lanes) < self._runner.max_concurrent:
                self._idle_lanes.append(lane)
            else:
                self._close(lane.conn.close)
        if outcome.status is Status.ERROR and current is not None and not self._checking_alive:
            self._checking_alive = True
            gevent.spawn(self._mark_down_unless_open, current)

    def _mark_down_unless_open(self, opened: _Opened) -> None:
        """A failed call may mean a closed connection whose close callback libvirt has not run
        yet (it waits for the threads that use the connection): ask the connection itself."""
        try:
            outcome = self._runner.run(CallKey("connection", "alive"), opened.conn.isAlive, self._deadline)
            if outcome.status is Status.OK and not outcome.value and opened is self._current:
                self.mark_down("closed")
        finally:
            self._checking_alive = False

    def _open_new(self) -> _Opened | None:
        """Open the main connection in a pool thread: opening hangs on a frozen libvirtd like any
        call. One that opens only after its deadline is closed again."""
        self._generation += 1
        generation = self._generation
        outcome = self._runner.run(
            CONNECT, partial(self._open, generation), self._deadline, on_late=self._close_late_opened
        )
        if outcome.status is not Status.OK or outcome.value is None:
            reason = describe(outcome.error) if outcome.error else outcome.status.value
            log.warning("cannot connect to libvirt", extra={"fields": {"uri": self.uri, "err": reason}})
            return None
        opened: _Opened = outcome.value
        return opened

    def _close_late_opened(self, outcome: Outcome[Any]) -> None:
        if outcome.status is Status.OK and outcome.value is not None:
            self._close_main_unless_probing(outcome.value)

    def _close_main_unless_probing(self, opened: _Opened) -> None:
        """Closing a connection under a call that waits on it is unsafe: the probe's ends first."""
        if not opened.probing:
            self._close(partial(_close_main, opened))

    def _close(self, close: Callable[[], Any]) -> None:
        """Close a connection in a pool thread: closing waits on libvirtd too."""
        self._closes += 1
        key = CallKey("connection", f"close-{self._closes}")
        gevent.spawn(self._runner.run, key, close, self._deadline)

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

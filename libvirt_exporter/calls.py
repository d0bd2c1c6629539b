"""Run libvirt calls in real OS threads under a hard deadline, and never two at once for one domain.

libvirt-python releases the GIL but never yields to gevent's hub, and a call into a frozen QEMU
monitor blocks for as long as QEMU is frozen (docs/libvirt-behaviour.md). So every libvirt call
runs in a thread of a dedicated pool, and the greenlet that asked for it waits at most `deadline`
seconds. A call that runs past its deadline cannot be cancelled: it stays *stuck* in its thread
until libvirt returns, and until then its key gets no new call (the caller counts a skip). Stuck
threads therefore never outnumber the stuck keys, and no frozen VM drains the pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

import gevent
import gevent.event
from gevent.event import AsyncResult
from gevent.lock import BoundedSemaphore
from gevent.threadpool import ThreadPool

from libvirt_exporter.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    """The subject of a call about the whole host (the survey, the host-wide stats call)."""


@dataclass(frozen=True)
class Domain:
    """The subject of a call about one domain.

    Calls on one domain never run at once, whoever sends them: on a hung QEMU the second would
    wait 30 s for the domain's job in one of libvirtd's 20 worker threads and hold one of ours."""

    name: str

    def __hash__(self) -> int:
        """The name's hash, which Python keeps with the string: every render looks domains up in
        the store thousands of times, and the generated hash builds and hashes a tuple each time."""
        return hash(self.name)

    def __str__(self) -> str:
        return f"domain {self.name}"


@dataclass(frozen=True)
class Pool:
    """The subject of a call about one storage pool."""

    name: str

    def __str__(self) -> str:
        return f"pool {self.name}"


@dataclass(frozen=True)
class Storage:
    """The subject of a probe of one storage: the mount point disk images live on."""

    name: str

    def __str__(self) -> str:
        return f"storage {self.name}"


Subject = Host | Domain | Pool | Storage
HOST = Host()


@dataclass(frozen=True)
class CallKey:
    """One kind of call on one subject: while such a call is in flight, it gets no second one."""

    sender: str
    """Who sends it: a sampler's name."""
    subject: Subject = HOST
    holds_domain: bool = True
    """A call on a domain holds it: the domain's next call, whoever sends it, waits for this one
    and is skipped while it is stuck. A guest-agent call holds only the domain's agent job in
    libvirt, not its job or QEMU's monitor, so it waits for the domain's other call like any call
    (libvirt's job is needed at its end), but holds up no other call: an agent frozen inside the
    guest stops no sampler but the guest's own."""


@dataclass(eq=False)
class Call:
    """A call sent to a thread, as long as it has not returned."""

    key: CallKey | None
    started_at: float
    """Unix time at dispatch: the time the values it returns stand for."""
    started_monotonic: float
    holds_thread: bool = False
    """It took one of the threads that `max_stuck` bounds, and keeps it until it returns."""
    timed_out: bool = False
    ended: gevent.event.Event = field(default_factory=gevent.event.Event)

    def running_for(self, now_monotonic: float) -> float:
        return now_monotonic - self.started_monotonic


class Status(Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass
class Outcome(Generic[T]):
    """What became of one request for a call."""

    status: Status
    call: Call | None = None
    value: T | None = None
    error: BaseException | None = None


LateHandler = Callable[[Outcome[Any]], None]
Bind = Callable[[], Callable[[], T]]
"""Makes a call's function once the call may be dispatched (see `CallRunner.run`)."""


@dataclass
class _Captured:
    """A thread's return value or exception, handed over without gevent printing a traceback."""

    value: Any = None
    error: BaseException | None = None


def _capture(fn: Callable[[], Any]) -> _Captured:
    try:
        return _Captured(value=fn())
    except Exception as error:
        return _Captured(error=error)


class _NoSlot:
    """Stands for a slot where a call needs none."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *_: object) -> None:
        pass


_NO_SLOT = _NoSlot()
RESERVED_THREADS = 2
"""Threads kept for the reserved calls: the liveness probe and the survey, one of each at a time."""
_RECHECK_SECONDS = 0.05
"""How often a call that waits for a thread looks whether the calls that hold them got stuck."""


@dataclass
class CallRunner:
    """Dispatches calls to a bounded pool of OS threads and tracks the ones that have not returned.

    `max_concurrent` bounds the calls still within their deadline (and so the load put on
    libvirtd); `max_stuck` bounds the threads that calls hold at all, so that however many of them
    get stuck, no more than `max_stuck` are: each one stuck on a hung QEMU holds one of libvirtd's
    worker threads too. A call that would go past it is refused (skipped) instead of sent.
    """

    max_concurrent: int
    max_stuck: int
    _pool: ThreadPool = field(init=False)
    _slots: BoundedSemaphore = field(init=False)
    _threads: BoundedSemaphore = field(init=False)
    """Held by each call in a thread, until its thread returns: stuck calls keep theirs."""
    _in_flight: set[Call] = field(init=False, default_factory=set)
    _by_key: dict[CallKey, Call] = field(init=False, default_factory=dict)
    _by_domain: dict[Domain, Call] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._pool = ThreadPool(self.max_stuck + RESERVED_THREADS)
        self._slots = BoundedSemaphore(self.max_concurrent)
        self._threads = BoundedSemaphore(self.max_stuck)

    def in_flight(self) -> list[Call]:
        """Calls sent and not yet returned, stuck ones included."""
        return list(self._in_flight)

    def is_in_flight(self, key: CallKey) -> bool:
        return key in self._by_key

    def stuck_count(self) -> int:
        return sum(1 for call in self._in_flight if call.timed_out)

    def busy_count(self) -> int:
        return sum(1 for call in self._in_flight if not call.timed_out)

    def run(
        self,
        key: CallKey | None,
        bind: Bind[T],
        deadline: float,
        on_late: LateHandler | None = None,
        reserved: bool = False,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Outcome[T]:
        """Run the function `bind` makes in a thread, and wait for it at most `deadline` seconds
        once it has a thread. `bind` runs when the call is dispatched, after it waited for a slot,
        so that what the call works on (which libvirt connection) is chosen then; one that raises
        makes an ERROR outcome.

        A call with a key is skipped while the call before it with that key is in flight; one on a
        domain first waits (at most `deadline`) for the domain's running call, and is skipped when
        that one is stuck. A call that returns after its deadline is handed to `on_late`, so that
        its values can still be used where nothing fresher has arrived meanwhile.

        `reserved` calls take no slot and run on threads kept for them, outside the stuck-call cap:
        the liveness probe and the survey, which cannot hang on QEMU and must not queue behind the
        calls that can (one each: they have keys). `still_wanted` is asked once the call has a slot
        and a thread: a call whose reason went away while it waited (its domain's storage found
        dead meanwhile) is skipped rather than sent.

        Whatever ends the wait (a return, the deadline, the waiting greenlet killed), the slot is
        given back; the call stays in flight for as long as its thread runs, and no longer.
        """
        if key is not None and key in self._by_key:
            return Outcome(Status.SKIPPED, call=self._by_key[key])
        domain = key.subject if key is not None and isinstance(key.subject, Domain) else None
        if domain is not None and (busy := self._wait_for_domain(domain, deadline)) is not None:
            return Outcome(Status.SKIPPED, call=busy)
        if not reserved and self._all_threads_stuck(key):
            return Outcome(Status.SKIPPED)
        call = self._register(key, domain if key is not None and key.holds_domain else None)
        give_up_at = time.monotonic() + deadline
        handed_to_thread = False
        try:
            with _NO_SLOT if reserved else self._slots:  # waits while max_concurrent calls run
                if not reserved and not self._take_thread(key, give_up_at):
                    return Outcome(Status.SKIPPED)
                call.holds_thread = not reserved
                if still_wanted is not None and not still_wanted():
                    return Outcome(Status.SKIPPED)
                try:
                    fn = bind()
                except Exception as error:
                    return Outcome(Status.ERROR, call=call, error=error)
                call.started_at, call.started_monotonic = time.time(), time.monotonic()
                result: AsyncResult = self._pool.spawn(_capture, fn)
                handed_to_thread = True
                try:
                    captured: _Captured = result.get(timeout=deadline)
                except BaseException:  # the deadline, or the waiting greenlet killed
                    call.timed_out = True
                    result.rawlink(lambda done: self._finish_late(call, done, on_late))
                    raise
                handed_to_thread = False
                return _outcome(call, captured)
        except gevent.Timeout:
            return Outcome(Status.TIMEOUT, call=call)
        finally:
            if not handed_to_thread:
                self._forget(call)

    def run_detached(self, fn: Callable[[], Any], deadline: float) -> None:
        """Run `fn` in a thread under `deadline` without waiting for it: closing a connection waits
        on libvirtd like any call, and nobody needs its result."""
        gevent.spawn(self.run, None, lambda: fn, deadline)

    def _register(self, key: CallKey | None, domain: Domain | None) -> Call:
        call = Call(key, started_at=time.time(), started_monotonic=time.monotonic())
        self._in_flight.add(call)
        if key is not None:
            self._by_key[key] = call
        if domain is not None:
            self._by_domain[domain] = call
        return call

    def _wait_for_domain(self, domain: Domain, deadline: float) -> Call | None:
        """Wait for the domain's running call to end; the call that still runs after `deadline`,
        or that is stuck, is returned."""
        give_up_at = time.monotonic() + deadline
        while (running := self._by_domain.get(domain)) is not None:
            left = give_up_at - time.monotonic()
            if running.timed_out or left <= 0:
                return running
            running.ended.wait(left)
        return None

    def _forget(self, call: Call) -> None:
        """The call has returned, or was never sent."""
        self._in_flight.discard(call)
        if call.holds_thread:
            self._threads.release()
        if call.key is not None:
            if self._by_key.get(call.key) is call:
                del self._by_key[call.key]
            subject = call.key.subject
            if isinstance(subject, Domain) and self._by_domain.get(subject) is call:
                del self._by_domain[subject]
        call.ended.set()

    def _all_threads_stuck(self, key: CallKey | None) -> bool:
        if self.stuck_count() < self.max_stuck:
            return False
        log.warning("no thread left for a libvirt call", call=key)
        return True

    def _take_thread(self, key: CallKey | None, give_up_at: float) -> bool:
        """Wait for a thread, while some are held by calls still within their deadline: they may
        return. Once every thread is held by a stuck call, or at the call's own deadline, give up."""
        while not self._threads.acquire(timeout=_RECHECK_SECONDS):
            if self._all_threads_stuck(key) or time.monotonic() >= give_up_at:
                return False
        return True

    def _finish_late(self, call: Call, done: AsyncResult, on_late: LateHandler | None) -> None:
        self._forget(call)
        if on_late is not None:
            on_late(_outcome(call, done.value))


def _outcome(call: Call, captured: _Captured) -> Outcome[Any]:
    if captured.error is not None:
        return Outcome(Status.ERROR, call=call, error=captured.error)
    return Outcome(Status.OK, call=call, value=captured.value)

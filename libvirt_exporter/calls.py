"""Run libvirt calls in real OS threads under a hard deadline, and never two at once for one subject.

libvirt-python releases the GIL but never yields to gevent's hub, and a call into a frozen QEMU
monitor can block for as long as QEMU is frozen. So every libvirt call runs in a thread of a
dedicated pool, and the greenlet that asked for it waits at most `deadline` seconds. A call that
runs past its deadline cannot be cancelled: it stays *stuck* in its thread until libvirt returns,
and until then its key, and for the samplers' calls its domain, gets no new call (the caller counts
a skip). Stuck threads therefore never outnumber the stuck subjects, and the pool is never drained
by one frozen VM.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = ""
"""The subject of a call that is about the whole host rather than one domain."""


@dataclass(frozen=True)
class CallKey:
    """What a call is for: one sampler's call on one domain (or on the whole host)."""

    sampler: str
    subject: str = HOST


@dataclass
class Call:
    """A call sent to a thread, as long as it has not returned."""

    key: CallKey
    started_at: float
    """Unix time at dispatch: the time the values it returns stand for."""
    started_monotonic: float
    timed_out: bool = False
    blamed: tuple[str, ...] = ()
    """For a host-wide call past its deadline: the domains it is believed to be stuck on."""
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
"""Makes a call's function once the call may be dispatched (see `CallRunner.run_bound`)."""


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


@dataclass
class CallRunner:
    """Dispatches calls to a bounded pool of OS threads and tracks the ones that have not returned.

    `max_concurrent` bounds the calls that are still within their deadline (and so the load put on
    libvirtd); `max_stuck` bounds the threads that may be held by calls past their deadline. When
    that many are stuck, new calls are refused (skipped) instead of waiting for a thread.
    """

    max_concurrent: int
    max_stuck: int
    _pool: ThreadPool = field(init=False)
    _slots: BoundedSemaphore = field(init=False)
    _in_flight: dict[CallKey, Call] = field(init=False, default_factory=dict)
    _by_domain: dict[str, Call] = field(init=False, default_factory=dict)
    """The call of each domain that runs `one_per_domain`."""

    def __post_init__(self) -> None:
        # A thread for the one call that needs no slot too: the liveness probe.
        self._pool = ThreadPool(self.max_concurrent + self.max_stuck + 1)
        self._slots = BoundedSemaphore(self.max_concurrent)

    def in_flight(self) -> list[Call]:
        """Calls sent and not yet returned, stuck ones included."""
        return list(self._in_flight.values())

    def is_in_flight(self, key: CallKey) -> bool:
        return key in self._in_flight

    def stuck_count(self) -> int:
        return sum(1 for call in self._in_flight.values() if call.timed_out)

    def busy_count(self) -> int:
        return sum(1 for call in self._in_flight.values() if not call.timed_out)

    def run(
        self,
        key: CallKey,
        fn: Callable[[], T],
        deadline: float,
        on_late: LateHandler | None = None,
        needs_slot: bool = True,
    ) -> Outcome[T]:
        """Run `fn` in a thread and wait for it at most `deadline` seconds once it has a thread.

        A call that returns after its deadline is handed to `on_late`, so that its values can still
        be used where nothing fresher has arrived meanwhile. `needs_slot=False` is for the liveness
        probe, which must not queue behind the calls whose libvirtd it watches; the pool keeps a
        thread for it.
        """
        return self.run_bound(key, lambda: fn, deadline, on_late, needs_slot)

    def run_bound(
        self,
        key: CallKey,
        bind: Bind[T],
        deadline: float,
        on_late: LateHandler | None = None,
        needs_slot: bool = True,
        one_per_domain: bool = False,
    ) -> Outcome[T]:
        """As `run`, for a call whose function `bind` makes only when the call is dispatched, after
        it waited for a slot: what it works on (which libvirt connection) is chosen then, not when
        it was asked for. A `bind` that raises makes an ERROR outcome.

        `one_per_domain`: the call's subject is a domain, and no other such call on it runs at the
        same time, whichever sampler sends it. It waits (at most `deadline`) for the one before,
        and is skipped when that one is stuck: on a hung QEMU, a second call would wait 30 s for
        the domain's job in one of libvirtd's 20 workers (measured: 25 such calls made a healthy
        VM's blockInfo take 28 s), and hold one more of our threads.
        """
        if key in self._in_flight:
            return Outcome(Status.SKIPPED, call=self._in_flight[key])
        if one_per_domain and (busy := self._wait_for_domain(key.subject, deadline)) is not None:
            return Outcome(Status.SKIPPED, call=busy)
        if self._no_thread_left(key):
            return Outcome(Status.SKIPPED)
        call = Call(key, started_at=time.time(), started_monotonic=time.monotonic())
        self._in_flight[key] = call
        if one_per_domain:
            self._by_domain[key.subject] = call
        slot = self._slots if needs_slot else _NO_SLOT
        slot.acquire()  # waits while max_concurrent calls are within their deadline
        if self._no_thread_left(key):  # the calls that held the slots meanwhile got stuck
            self._forget(call)
            slot.release()
            return Outcome(Status.SKIPPED)
        try:
            fn = bind()
        except Exception as error:
            self._forget(call)
            slot.release()
            return Outcome(Status.ERROR, call=call, error=error)
        call.started_at, call.started_monotonic = time.time(), time.monotonic()
        result: AsyncResult = self._pool.spawn(_capture, fn)
        try:
            captured: _Captured = result.get(timeout=deadline)
        except gevent.Timeout:
            call.timed_out = True
            slot.release()
            result.rawlink(lambda done: self._finish_late(call, done, on_late))
            return Outcome(Status.TIMEOUT, call=call)
        self._forget(call)
        slot.release()
        return _outcome(call, captured)

    def _wait_for_domain(self, domain: str, deadline: float) -> Call | None:
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
        """The call has returned (or was never sent)."""
        del self._in_flight[call.key]
        if self._by_domain.get(call.key.subject) is call:
            del self._by_domain[call.key.subject]
        call.ended.set()

    def _no_thread_left(self, key: CallKey) -> bool:
        """Checked again once a slot is ours: dispatching past the cap would take the pool's last
        thread, and a later call would then wait for a thread forever."""
        if self.stuck_count() < self.max_stuck:
            return False
        log.warning("no thread left for a libvirt call", extra={"fields": {"call": key}})
        return True

    def _finish_late(self, call: Call, done: AsyncResult, on_late: LateHandler | None) -> None:
        self._forget(call)
        if on_late is not None:
            on_late(_outcome(call, done.value))


class _NoSlot:
    """Stands for a slot where a call needs none."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


_NO_SLOT = _NoSlot()


def _outcome(call: Call, captured: _Captured) -> Outcome[Any]:
    if captured.error is not None:
        return Outcome(Status.ERROR, call=call, error=captured.error)
    return Outcome(Status.OK, call=call, value=captured.value)

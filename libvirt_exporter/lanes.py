"""Lanes: libvirt connections that carry one call at a time, and the dispatcher that runs each
sampler call on one, under its deadline.

While one call on a connection waits on a frozen QEMU, other calls on that connection now and then
stall until the next keepalive, and libvirtd serves one client at most 5 requests at once, which
stuck calls hold (docs/libvirt-behaviour.md). So no sampler call shares a connection with another:
each takes an idle lane, or opens one, and gives it back when it returns. A lane whose call is
stuck stays with that call; a healthy call never waits behind it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from libvirt_exporter.calls import CallKey, CallRunner, LateHandler, Outcome, Status
from libvirt_exporter.connection import MainConnection, Opener

T = TypeVar("T")


@dataclass(eq=False)
class Lane:
    """One connection, and the domain handles looked up on it.

    Used by one pool thread at a time; the hub touches it only while no call holds it."""

    conn: Any
    generation: int
    """That of the main connection it was opened under: a lane outlives no reconnect."""
    _handles: dict[bytes, Any] = field(default_factory=dict)
    """By UUID: libvirtd finds a handle's domain by its UUID at each call."""
    broken: bool = False
    """Its last call failed and the connection is no longer open."""

    def domain(self, handle: Any) -> Any:
        """Runs in a pool thread: `handle`'s domain on this lane. A handle of another connection
        (the survey's) is looked up by UUID once, which libvirtd answers without the domain's job
        or QEMU, and kept for the next calls."""
        if handle.connect() is self.conn:
            return handle
        uuid = handle.UUID()  # read from the handle itself, without asking libvirtd
        found = self._handles.get(uuid)
        if found is None:
            found = self._handles[uuid] = self.conn.lookupByUUID(uuid)
        return found

    def keep_only(self, uuids: set[bytes]) -> None:
        """Forget the handles of domains that are gone."""
        for uuid in self._handles.keys() - uuids:
            del self._handles[uuid]

    def note_failure(self) -> None:
        """Runs in a pool thread after a call on this lane raised: is the connection still open?
        libvirt answers that without asking libvirtd."""
        alive = False
        with contextlib.suppress(Exception):
            alive = bool(self.conn.isAlive())
        self.broken = not alive


@dataclass
class _OnLane:
    """What a call's thread hands back: the lane it ran on, with the value or the error."""

    lane: Lane
    value: Any = None
    error: Exception | None = None


class Dispatcher:
    """Runs each sampler call in a pool thread, under its deadline, on a lane no other call uses.

    The lane is taken when the call is dispatched: an idle one of the current main connection, or
    one the call's thread opens (under the call's deadline: opening hangs on a frozen libvirtd like
    any call). Not connected then: an ERROR outcome. A failed call makes the main connection check
    whether it is still open.

    Its lanes are opened as the main connection is (read-only), unless `opener` and `uri` say
    otherwise: the guest sampler's dispatcher opens read-write ones, for its calls alone.
    """

    def __init__(
        self, runner: CallRunner, main: MainConnection, opener: Opener | None = None, uri: str = ""
    ) -> None:
        self._runner = runner
        self._main = main
        self._open = partial(opener or main.opener, uri or main.uri)
        self._idle: list[Lane] = []

    @property
    def up(self) -> bool:
        return self._main.up

    def is_in_flight(self, key: CallKey) -> bool:
        return self._runner.is_in_flight(key)

    def call(
        self,
        key: CallKey,
        read: Callable[[Lane], T],
        deadline: float,
        on_late: LateHandler | None = None,
        reserved: bool = False,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Outcome[T]:
        """Run `read(lane)` under `deadline`, as `CallRunner.run` runs a call."""

        def bind() -> Callable[[], _OnLane]:
            generation = self._main.generation
            if generation is None:
                raise ConnectionError("not connected to libvirt")
            return partial(self._run_on_lane, self._take_idle(generation), generation, read)

        def returned_late(outcome: Outcome[_OnLane]) -> None:
            settled = self._settle(outcome)
            if on_late is not None:
                on_late(settled)

        outcome = self._runner.run(key, bind, deadline, returned_late, reserved, still_wanted)
        if outcome.status is Status.TIMEOUT:
            return Outcome(Status.TIMEOUT, call=outcome.call)
        return self._settle(outcome)

    def keep_handles(self, uuids: set[bytes]) -> None:
        """After a survey: idle lanes forget the handles of domains not in it."""
        for lane in self._idle:
            lane.keep_only(uuids)

    def close_idle(self) -> None:
        """The main connection was lost: the lanes opened under it go too."""
        idle, self._idle = self._idle, []
        for lane in idle:
            self._close(lane)

    def _take_idle(self, generation: int) -> Lane | None:
        """An idle lane of the current connection, or None: the call's thread opens one."""
        while self._idle:
            lane = self._idle.pop()
            if lane.generation == generation:
                return lane
            self._close(lane)
        return None

    def _run_on_lane(self, lane: Lane | None, generation: int, read: Callable[[Lane], Any]) -> _OnLane:
        """Runs in a pool thread. Opening the lane may raise (an ERROR outcome, no lane to give
        back); what `read` raises is handed back with the lane."""
        if lane is None:
            lane = Lane(self._open(), generation)
        try:
            return _OnLane(lane, value=read(lane))
        except Exception as error:
            lane.note_failure()
            return _OnLane(lane, error=error)

    def _settle(self, outcome: Outcome[_OnLane]) -> Outcome[Any]:
        """Give the call's lane back and turn what its thread handed back into the outcome."""
        on_lane = outcome.value
        if on_lane is not None:
            self._give_back(on_lane.lane)
            if on_lane.error is None:
                return Outcome(Status.OK, call=outcome.call, value=on_lane.value)
            outcome = Outcome(Status.ERROR, call=outcome.call, error=on_lane.error)
        if outcome.status is Status.ERROR:
            self._main.check_alive()
        return outcome

    def _give_back(self, lane: Lane) -> None:
        """Keep the lane for the next call, unless its connection failed or belongs to a lost main
        connection, or enough lanes are idle already (calls stuck meanwhile opened more)."""
        reusable = not lane.broken and lane.generation == self._main.generation
        if reusable and len(self._idle) < self._runner.max_concurrent:
            self._idle.append(lane)
        else:
            self._close(lane)

    def _close(self, lane: Lane) -> None:
        self._runner.run_detached(lane.conn.close, self._main.deadline)

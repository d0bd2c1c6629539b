"""Lanes: libvirt connections that carry one call at a time.

Measured on libvirt 9.0: while one call on a connection waits on a frozen QEMU, other calls on
the same connection now and then stall until the next keepalive message (5 to 10 s), and libvirtd
serves one client at most 5 requests at once (`max_client_requests`), which stuck calls hold. So
no call of the samplers shares a connection with another: each takes an idle lane, or opens one,
and gives it back when it returns. A lane whose call is stuck stays with that call; a healthy call
never waits behind it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any


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

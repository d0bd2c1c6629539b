"""HTTP basic auth against bcrypt hashes, as the exporter-toolkit does it, at a bounded cost.

A bcrypt check costs tens of milliseconds of CPU by design, so whoever can reach the port can make
the exporter spend CPU on wrong passwords. The rules that keep this bounded:

- checks run in a pool of their own (`CHECK_THREADS` threads, bcrypt releases the GIL), never in
  the hub's pool, where snapshots are rendered and plain bodies unzipped;
- at most `MAX_WAITING_CHECKS` requests wait for a check; past that a request is answered at once
  as busy (503) rather than queued, so that a flood holds neither connections nor memory;
- a pair that passed is remembered, salted and hashed, so that a scraper costs one check, not one
  each scrape, and keeps being served while a flood of wrong passwords runs;
- every refused pair costs one check of the same cost, whatever part was wrong: an unknown user
  is checked against a dummy hash made at the configured users' cost, and a password longer than
  bcrypt's 72 bytes (which no bcrypt hash can match) against the dummy as well.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import secrets

import bcrypt
from gevent.lock import BoundedSemaphore
from gevent.threadpool import ThreadPool

MAX_REMEMBERED = 1024
CHECK_THREADS = 1
"""One core at most for bcrypt: the other serves the hub and the render on a two-core host."""
MAX_WAITING_CHECKS = 8
"""At cost 10 (about 0.1 s a check) a request waits 0.8 s for its check at worst."""
BCRYPT_MAX_PASSWORD = 72
"""bcrypt reads no more than 72 bytes of a password; bcrypt 5 refuses longer ones outright."""


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    BUSY = "busy"
    """Too many checks wait already: the request is neither allowed nor refused."""


def bcrypt_cost(hashed: bytes) -> int:
    """The cost factor of a `$2b$10$…` hash (web_config checks the format)."""
    return int(hashed[4:6])


class BasicAuth:
    """Checks `Authorization: Basic …` headers against user name to bcrypt hash."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._salt = secrets.token_bytes(16)
        self._passed: set[bytes] = set()
        self._pool: ThreadPool | None = None
        self._slots = BoundedSemaphore(CHECK_THREADS + MAX_WAITING_CHECKS)
        self._dummy_hash = b""
        if users:
            cost = max(bcrypt_cost(hashed) for hashed in users.values())
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
            self._pool = ThreadPool(CHECK_THREADS)

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, authorization: str) -> Verdict:
        credentials = _credentials(authorization)
        if credentials is None:
            return Verdict.REFUSED
        user, password = credentials
        remembered = hashlib.sha256(self._salt + user + b"\0" + password).digest()
        if remembered in self._passed:
            return Verdict.ALLOWED
        if not self._slots.acquire(blocking=False):
            return Verdict.BUSY
        try:
            allowed = self._bcrypt_check(user, password)
        finally:
            self._slots.release()
        if not allowed:
            return Verdict.REFUSED
        if len(self._passed) >= MAX_REMEMBERED:
            self._passed.clear()
        self._passed.add(remembered)
        return Verdict.ALLOWED

    def _bcrypt_check(self, user: bytes, password: bytes) -> bool:
        """One bcrypt check, of the same cost whether the user, the password or both are wrong."""
        hashed = self._users.get(user.decode("utf-8", "replace"))
        if hashed is None or len(password) > BCRYPT_MAX_PASSWORD:
            hashed, password = None, password[:BCRYPT_MAX_PASSWORD]
        assert self._pool is not None
        matches = self._pool.apply(bcrypt.checkpw, (password, hashed or self._dummy_hash))
        return bool(matches) and hashed is not None


def _credentials(authorization: str) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None

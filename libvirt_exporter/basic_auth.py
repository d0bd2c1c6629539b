"""HTTP basic auth against bcrypt hashes, as the exporter-toolkit does it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

import bcrypt
import gevent

MAX_REMEMBERED = 1024


class BasicAuth:
    """Checks `Authorization: Basic …` headers.

    A bcrypt check costs tens of milliseconds of CPU, so it runs in a thread of the hub's pool
    (bcrypt releases the GIL) and a pair that passed is remembered, salted and hashed, so that a
    scrape every 15 s costs one check, not one each time. An unknown user costs a check too, so
    that the answer's timing does not tell which part was wrong.
    """

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._salt = secrets.token_bytes(16)
        self._passed: set[bytes] = set()
        self._unknown_user_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt())

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def allows(self, authorization: str) -> bool:
        credentials = _credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        remembered = hashlib.sha256(self._salt + user + b"\0" + password).digest()
        if remembered in self._passed:
            return True
        hashed = self._users.get(user.decode("utf-8", "replace"), self._unknown_user_hash)
        matches = gevent.get_hub().threadpool.apply(bcrypt.checkpw, (password, hashed))
        if not matches or hashed is self._unknown_user_hash:
            return False
        if len(self._passed) >= MAX_REMEMBERED:
            self._passed.clear()
        self._passed.add(remembered)
        return True


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

"""A flood of wrong passwords, run as a process of its own so that it takes none of the exporter's
GIL: `python -m tests.unit.password_flood PORT RATE SECONDS`.

Open loop: a request goes out every 1/RATE s whatever the answers, each on a new connection, for a
known user and for unknown ones. Prints the count of each answer's status as JSON.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def _attempt(port: int, user: str) -> str:
    credentials = base64.b64encode(f"{user}:{secrets.token_hex(8)}".encode()).decode()
    request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            return sock.recv(64).split(b" ")[1].decode()
    except (OSError, IndexError) as error:
        return type(error).__name__


def main(port: int, rate: float, seconds: float) -> None:
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = []
        sent = 0
        while (now := time.monotonic() - started) < seconds:
            user = "prometheus" if sent % 2 else f"mallory{sent}"
            futures.append(pool.submit(_attempt, port, user))
            sent += 1
            time.sleep(max(0.0, sent / rate - now))  # the pace of the flood is the scenario itself
        statuses.update(future.result() for future in futures)
    print(json.dumps({"rate": sent / seconds, **statuses}))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))

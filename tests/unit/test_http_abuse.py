"""Abusive HTTP clients: none of them delays a concurrent scrape, and each gets a 4xx where it
gets an answer at all."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.http import make_server
from tests.unit.conftest import make_config
from tests.unit.fake_libvirt import FakeDomain, FakeHost

T = TypeVar("T")
SCRAPE_BOUND = 0.1  # seconds; a healthy scrape here takes about a millisecond


@pytest.fixture
def port() -> Iterator[int]:
    exporter = Exporter(make_config(), opener=FakeHost([FakeDomain("a", 1)]).open)
    server = make_server("127.0.0.1", 0, exporter.snapshot, "/metrics")
    server.start()
    yield server.server_port
    server.stop()


def _scrape(port: int) -> float:
    """Runs in a real OS thread: seconds a complete scrape took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"libvirt_up" in answer
    return time.monotonic() - started


def _answer_to(port: int, request: bytes) -> bytes:
    """Runs in a real OS thread: the status line the server answers `request` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(64).split(b"\r\n")[0]


def _connect(port: int, count: int) -> list[socket.socket]:
    """Runs in a real OS thread: `count` connections that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking client in a real OS thread while the hub serves."""
    result: T = gevent.get_hub().threadpool.spawn(fn, *args).get()
    return result


def test_slow_idle_and_malformed_clients_do_not_delay_a_scrape(port: int) -> None:
    idle = _in_thread(_connect, port, 200)  # from a thread: the hub must accept meanwhile
    slowloris = _in_thread(_connect, port, 1)[0]
    slowloris.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never more
    try:
        assert _in_thread(_answer_to, port, b"GARBAGE\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
        huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        assert _in_thread(_answer_to, port, huge) == b"HTTP/1.1 400 Bad Request"
        assert _in_thread(_answer_to, port, b"GET /nope HTTP/1.0\r\n\r\n") == b"HTTP/1.1 404 Not Found"
        slowest = max(_in_thread(_scrape, port) for _ in range(20))
        assert slowest < SCRAPE_BOUND, f"a scrape took {slowest:.3f} s beside abusive clients"
    finally:
        slowloris.close()
        for sock in idle:
            sock.close()

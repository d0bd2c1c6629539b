"""Abusive HTTP clients: none of them delays a concurrent scrape, and each gets a 4xx where it
gets an answer at all."""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.config import WebLimits
from libvirt_exporter.http import make_server
from tests.unit.conftest import make_config
from tests.unit.fake_libvirt import FakeDomain, FakeHost

T = TypeVar("T")
SCRAPE_BOUND = 0.5
"""Seconds. A scrape takes about a millisecond; one held up by an abusive client would wait for
its request deadline (HEAD_TIMEOUT). Half of it is a bound a loaded machine keeps."""


HEAD_TIMEOUT = 1.0  # seconds, instead of the default minute, so that tests see the deadline act


@pytest.fixture
def port() -> Iterator[int]:
    exporter = Exporter(make_config(), opener=FakeHost([FakeDomain("a", 1)]).open)
    server = make_server(
        ("127.0.0.1", 0), exporter.snapshot, "/metrics", limits=WebLimits(read_timeout=HEAD_TIMEOUT)
    )
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


def _everything_until_closed(port: int, partial: bytes) -> bytes:
    """Runs in a real OS thread: sends `partial`, then returns all the server sends until it hangs
    up. A server that never hangs up makes the read time out, and the test fail."""
    with socket.create_connection(("127.0.0.1", port), timeout=10 * HEAD_TIMEOUT) as sock:
        sock.sendall(partial)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _requests_on_one_connection(port: int, pause: float) -> list[tuple[int, int]]:
    """Runs in a real OS thread: three scrapes on one kept-alive connection, `pause` seconds apart;
    each scrape's status and the client port it went out from."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    answers = []
    for _ in range(3):
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        answers.append((response.status, conn.sock.getsockname()[1]))
        time.sleep(pause)  # the idle time between scrapes is the scenario itself
    conn.close()
    return answers


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
        long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
        assert _in_thread(_answer_to, port, long_line) == b"HTTP/1.1 414 Request URI Too Long"
        slowest = max(_in_thread(_scrape, port) for _ in range(20))
        assert slowest < SCRAPE_BOUND, f"a scrape took {slowest:.3f} s beside abusive clients"
    finally:
        slowloris.close()
        for sock in idle:
            sock.close()


@pytest.mark.parametrize(
    ("partial", "answer"),
    [
        (b"", b""),  # connects and never says a word
        (b"GET /metr", b""),  # stops inside the request line
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"HTTP/1.1 400 Bad Request"),  # inside headers
    ],
)
def test_a_client_that_never_finishes_its_request_is_let_go(port: int, partial: bytes, answer: bytes) -> None:
    got = _in_thread(_everything_until_closed, port, partial)
    assert got.split(b"\r\n")[0] == answer


def test_the_deadline_is_per_request_so_a_kept_alive_scraper_keeps_its_connection(port: int) -> None:
    answers = _in_thread(_requests_on_one_connection, port, 0.6 * HEAD_TIMEOUT)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert len({client_port for _, client_port in answers}) == 1, "the server closed a kept-alive connection"


def _headers_of(port: int, request: bytes) -> dict[str, str]:
    """Runs in a real OS thread: the headers of the answer to `request` (HTTP/1.0, so it ends)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    lines = answer.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines)


@pytest.mark.parametrize(
    ("header", "content_type", "encoding"),
    [
        ("Accept-Encoding: gzip;q=0", "text/plain; version=0.0.4; charset=utf-8", None),
        ("Accept-Encoding: gzip; q=0.5", "text/plain; version=0.0.4; charset=utf-8", "gzip"),
        (
            "Accept: application/openmetrics-text;version=1.0.0;q=0",
            "text/plain; version=0.0.4; charset=utf-8",
            None,
        ),
        (
            "Accept: application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            None,
        ),
    ],
)
def test_a_type_or_encoding_refused_with_q_0_is_not_sent(
    port: int, header: str, content_type: str, encoding: str | None
) -> None:
    headers = _in_thread(_headers_of, port, f"GET /metrics HTTP/1.0\r\n{header}\r\n\r\n".encode())
    assert headers["Content-Type"] == content_type
    assert headers.get("Content-Encoding") == encoding


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(101)) + b"\r\n",
        b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["garbage", "101-headers", "long-header", "negative-length"],
)
def test_a_malformed_request_is_a_400_and_one_debug_line(
    port: int, request_bytes: bytes, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The client is at fault, not the exporter: nothing at warn or error, and no traceback."""
    with caplog.at_level(logging.DEBUG):
        assert _in_thread(_answer_to, port, request_bytes) == b"HTTP/1.1 400 Bad Request"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("libvirt_exporter")] == [
        "bad request"
    ]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert "Traceback" not in capfd.readouterr().err

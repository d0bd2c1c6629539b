"""What one client can hold of the exporter, with real sockets: a request whose body never comes, a
client that never reads its answer, more connections than allowed, HEAD on a kept-alive connection.

Each test checks what an operator would: the answer the client gets, when its connection ends, and
the exporter's open file descriptors and memory (its RSS) meanwhile and afterwards.
"""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.config import WebLimits
from libvirt_exporter.http import make_server
from libvirt_exporter.http_server import LimitedServer
from libvirt_exporter.served import GZIP_WBITS, Exposition
from tests.unit.conftest import make_config, wait_for
from tests.unit.fake_libvirt import FakeDomain, FakeHost

T = TypeVar("T")
WRITE_TIMEOUT = 1.0
"""Seconds, instead of the default minute, so that the tests see the timeout act."""
MARGIN = 3.0
"""Seconds a loaded two-core machine may add to a timeout before the test calls it missed."""
BODY = 6 << 20
"""Bytes of the plain exposition the memory test serves, the size the issue measured."""
CLIENTS = 16


def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking client in a real OS thread while the hub serves."""
    result: T = gevent.get_hub().threadpool.spawn(fn, *args).get()
    return result


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def exporter() -> Exporter:
    return Exporter(make_config(), opener=FakeHost([FakeDomain("a", 1)]).open)


@pytest.fixture
def serve() -> Iterator[Callable[..., LimitedServer]]:
    servers: list[LimitedServer] = []

    def start(snapshot: object, limits: WebLimits) -> LimitedServer:
        server = make_server(("127.0.0.1", 0), snapshot, "/metrics", None, limits)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server  # type: ignore[return-value]

    yield start
    for server in servers:
        server.stop()


def _everything_until_closed(port: int, request: bytes) -> tuple[bytes, float]:
    """Runs in a real OS thread: sends `request` and nothing more, then reads until the server hangs
    up; what it sent and after how many seconds. A server that never hangs up fails the read."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome",
    ],
    ids=["content-length", "chunked", "post"],
)
def test_a_body_that_never_comes_is_not_waited_for(
    exporter: Exporter, serve: Callable[..., LimitedServer], request_head: bytes
) -> None:
    """No route takes a body: the request is answered and its connection closed at once."""
    server = serve(exporter.snapshot, WebLimits(read_timeout=30, write_timeout=30))
    answer, seconds = _in_thread(_everything_until_closed, server.server_port, request_head)
    head = answer.split(b"\r\n\r\n")[0]
    assert head.split(b"\r\n")[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed")
    assert b"Connection: close" in head
    assert seconds < MARGIN, f"the connection was held {seconds:.1f} s for a body that never came"


class _Refreshing:
    """A snapshot that is new at every request, as on a busy host whose samplers publish one after
    every cycle: each answer in flight belongs to a snapshot of its own."""

    def __init__(self) -> None:
        compressor = zlib.compressobj(1, zlib.DEFLATED, GZIP_WBITS)
        lines = []
        size = 0
        while size < BODY:
            line = (
                f'libvirt_domain_block_read_bytes_total{{device="vd{size % 7}",domain="vm-{size}"}} {size}\n'
            )
            lines.append(line.encode())
            size += len(line)
        self.zipped = compressor.compress(b"".join(lines)) + compressor.flush()
        self.size = size

    @property
    def current(self) -> Exposition:
        return Exposition(self.zipped, self.zipped, self.size, self.size)


def _scrape_whole(port: int) -> int:
    """Runs in a real OS thread: a plain scrape read to its end; its length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    length = len(conn.getresponse().read())
    conn.close()
    return length


def _never_read(port: int, count: int) -> list[socket.socket]:
    """Runs in a real OS thread: `count` clients that ask for the plain body and never read it."""
    clients = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(sock)
    return clients


def _drain(sock: socket.socket) -> None:
    """Runs in a real OS thread: reads what the kernel still holds until the server's close."""
    while sock.recv(1 << 20):
        pass


def test_clients_that_never_read_are_dropped_in_time_and_hold_no_body_meanwhile(
    serve: Callable[..., LimitedServer],
) -> None:
    snapshot = _Refreshing()
    server = serve(snapshot, WebLimits(read_timeout=30, write_timeout=WRITE_TIMEOUT))
    port = server.server_port
    assert _in_thread(_scrape_whole, port) == snapshot.size  # a reader gets it all
    fds, rss = _open_fds(), _rss()

    clients = _in_thread(_never_read, port, CLIENTS)
    started = time.monotonic()
    try:
        wait_for(lambda: server.open_connections == CLIENTS and not server.waiting)
        held = _rss() - rss
        # Holding each answer's body, as before, took CLIENTS x 6 MB; streaming holds a chunk each.
        assert held < 4 * BODY, f"{CLIENTS} stalled answers hold {held >> 20} MiB"

        wait_for(lambda: _open_fds() == fds + CLIENTS, timeout=WRITE_TIMEOUT + MARGIN)  # ours closed
        assert time.monotonic() - started >= WRITE_TIMEOUT * 0.9, "dropped before the write timeout"
        assert server.open_connections == 0
        for sock in clients:
            _in_thread(_drain, sock)  # ends: the server hung up
        assert _rss() - rss < 2 * BODY
    finally:
        for sock in clients:
            sock.close()


def _silent(port: int, count: int) -> list[socket.socket]:
    """Runs in a real OS thread: `count` connections that send nothing, one after the other."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def _timed_scrape(port: int) -> float:
    started = time.monotonic()
    assert _scrape_whole(port) > 0
    return time.monotonic() - started


def test_past_max_connections_the_longest_waiting_is_dropped_and_scrapes_get_in(
    exporter: Exporter, serve: Callable[..., LimitedServer]
) -> None:
    """Connections past the cap wait in the listen queue, and each that gets in drops the one that
    has waited longest for a request: the exporter's descriptors stay bounded and a real scrape is
    answered at once rather than after the read timeout."""
    server = serve(exporter.snapshot, WebLimits(read_timeout=60, max_connections=8))
    port = server.server_port
    fds = _open_fds()
    silent = _in_thread(_silent, port, 40)
    try:
        # The 32 past the cap get in one at a time, each once the one it dropped has closed: many
        # turns of the hub, which a loaded 2-core machine gave in more than 5 s.
        wait_for(lambda: server.open_connections <= 8 and _open_fds() <= fds + 40 + 8, timeout=30)
        slowest = max(_in_thread(_timed_scrape, port) for _ in range(5))
        assert slowest < 1.0, f"a scrape took {slowest:.2f} s beside 40 silent connections"
        assert server.open_connections <= 8
    finally:
        for sock in silent:
            sock.close()


def _head_then_get(port: int) -> tuple[http.client.HTTPResponse, bytes, http.client.HTTPResponse, bytes]:
    """Runs in a real OS thread: HEAD then GET on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("HEAD", "/metrics")
    head = conn.getresponse()
    head_body = head.read()
    conn.request("GET", "/metrics")
    get = conn.getresponse()
    get_body = get.read()
    conn.close()
    return head, head_body, get, get_body


def test_head_gets_the_headers_of_get_and_no_body(
    exporter: Exporter, serve: Callable[..., LimitedServer]
) -> None:
    """A body after HEAD's headers would be read as the start of the next answer."""
    server = serve(exporter.snapshot, WebLimits())
    head, head_body, get, get_body = _in_thread(_head_then_get, server.server_port)
    assert head.status == 200 and head_body == b""
    assert get.status == 200 and b"# TYPE libvirt_up gauge" in get_body
    assert head.getheader("Content-Length") == str(len(get_body))
    assert head.getheader("Content-Type") == get.getheader("Content-Type")


def _hold(port: int, request: bytes, count: int) -> list[socket.socket]:
    """Runs in a real OS thread: `count` connections that send `request` and then nothing."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        held.append(sock)
    return held


def test_an_exporter_with_64_descriptors_serves_scrapes_beside_140_held_connections() -> None:
    """The issue's case: under `ulimit -n 64`, 70 requests whose body never comes made every real
    scrape fail with EMFILE. Now bodies are not waited for and silent connections past the cap make
    room, so the exporter never runs out of descriptors."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        [sys.executable, "-m", "libvirt_exporter", f"--web.listen-address=127.0.0.1:{port}",
         "--libvirt.uri=test:///default", "--web.max-connections=32"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        assert exporter.stderr is not None
        while "msg=listening" not in exporter.stderr.readline():
            assert exporter.poll() is None, "the exporter exited"
        unfinished = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
        held += _in_thread(_hold, port, unfinished, 70)
        held += _in_thread(_hold, port, b"", 70)
        slowest = max(_in_thread(_timed_scrape, port) for _ in range(5))
        assert slowest < 2.0, f"a scrape took {slowest:.2f} s"
        assert exporter.poll() is None
    finally:
        for sock in held:
            sock.close()
        exporter.terminate()
        _, errors = exporter.communicate(timeout=20)
    assert "Too many open files" not in errors

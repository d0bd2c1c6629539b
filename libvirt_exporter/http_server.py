"""gevent's WSGI server under limits: whatever a client sends or fails to send, it holds at most one
of `max_connections` connections, for at most `read_timeout` per request head and `write_timeout`
per answer, and no other client waits for it.

The rules, each a gap of gevent's own server closed here:

- a request's line and headers (a TLS handshake and keep-alive idle time included) must arrive
  within the read timeout, or the connection is closed, with a 400 if headers had begun;
- an answer must be taken by the client within the write timeout of the request's head, or the
  connection is closed: a client that never reads would otherwise hold it for ever;
- a request body is never read (no route takes one): a request that announces one is answered and
  its connection closed, where gevent would wait for the body, for ever if it never comes;
- at `max_connections`, new connections wait in the kernel's listen queue, and for each one that
  waits there the connection that has waited longest for its next request (idle, or slow to send
  it) is closed to make room; when every connection is busy answering, new ones wait for an answer
  to end. So open descriptors stay bounded while a real scrape still gets in;
- a malformed request is logged at debug, in one line: clients, not the exporter, are at fault.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
from typing import Any

import gevent
from gevent.pywsgi import Input, WSGIHandler, WSGIServer

from libvirt_exporter.config import WebLimits
from libvirt_exporter.logs import get_logger

log = get_logger(__name__)

_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Dropped(OSError, ValueError):
    """Raised in a connection's greenlet to let it go. An OSError so that gevent closes a connection
    quietly while it waits for a request line, and a ValueError so that it answers 400 once headers
    have begun, as for any bad request. Its errno is among the handler's `ignored_socket_errors`, so
    that one that lands as the answer begins closes the connection quietly too."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ETIMEDOUT, reason)


class _AnswerTimeout(OSError):
    """Raised in a connection's greenlet whose answer is not taken in time. Its errno is among the
    handler's `ignored_socket_errors`, so gevent closes the connection as for a peer that left."""

    def __init__(self, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"answer not taken within {seconds:g} s")


class _Handler(WSGIHandler):  # type: ignore[misc]
    """gevent's handler, under the server's limits, and without Nagle's algorithm (see `handle`)."""

    server: LimitedServer
    _has_body = False
    ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, errno.ETIMEDOUT)

    def handle(self) -> Any:
        """Serve the connection in this greenlet (which `drop` interrupts), without Nagle's algorithm:
        gevent sends an answer's head and body in two writes, and on a kept-alive connection
        (Prometheus keeps its connections) the body would wait for the client's delayed ACK of the
        head, 40 ms on Linux, in every scrape but the first."""
        self.greenlet = gevent.getcurrent()
        self._head_deadline: gevent.Timeout | None = None
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return super().handle()
        finally:
            self._stop_waiting()

    def handle_one_request(self) -> Any:
        """The read timeout runs from when the handler waits for a request until its head is read."""
        seconds = self.server.limits.read_timeout
        self._head_deadline = gevent.Timeout.start_new(
            seconds, _Dropped(f"no complete request within {seconds:g} s")
        )
        self.server.waits_for_request(self)
        try:
            return super().handle_one_request()
        finally:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self.server.waiting.pop(self, None)

    def drop(self) -> None:
        """Close this connection, which waits for a request, to make room for a new one."""
        self._stop_waiting()
        gevent.kill(self.greenlet, _Dropped("closed to make room for a new connection"))

    def get_environ(self) -> dict[str, Any]:
        """A request that announces a body gets an empty input and its connection is closed after
        the answer: no route reads a body, and gevent would wait for it before the next request."""
        environ: dict[str, Any] = super().get_environ()
        self._has_body = (
            bool(self.content_length) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        )
        if self._has_body:
            self.close_connection = True
            self.wsgi_input = environ["wsgi.input"] = Input(self.rfile, 0)
        return environ

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if self._has_body:
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def handle_one_response(self) -> Any:
        """The write timeout runs from the complete head to the last byte of the answer."""
        self._stop_waiting()
        seconds = self.server.limits.write_timeout
        with gevent.Timeout(seconds, _AnswerTimeout(seconds)):
            return super().handle_one_response()

    def _handle_client_error(self, error: BaseException) -> tuple[str, bytes]:
        log.debug("bad request", client=_client(self.client_address), err=str(error) or type(error).__name__)
        return ("400", _BAD_REQUEST)


def _client(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


class LimitedServer(WSGIServer):  # type: ignore[misc]
    """gevent's WSGI server with `limits`, logging no access lines (scrapes would flood the log).

    Connections are counted as they are accepted, not when their greenlet starts: gevent accepts up
    to 100 in a row before any of them runs. At `max_connections` the server stops accepting when a
    connection waits in the kernel's listen queue (where it holds no descriptor of ours), drops the
    connection that has waited longest for its request, and accepts again as soon as a connection
    has closed. A connection that arrives between the check and the accept is one over the cap, for
    as long as the next arrival takes to drop one.

    The TLS handshake is left to the handler's first read so that it falls under the read timeout
    too; done on accept, a client that never finishes it would hold its connection for ever.
    """

    def __init__(
        self,
        listener: socket.socket | tuple[str, int],
        app: Any,
        limits: WebLimits,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl_context": ssl_context, "do_handshake_on_connect": False}
        super().__init__(listener, app, log=None, error_log=log.logger, handler_class=_Handler, **tls)
        self.limits = limits
        self.open_connections = 0
        self.waiting: dict[_Handler, None] = {}
        """Connections waiting for a request head, the longest waiting first."""
        self._paused = False

    def full(self) -> bool:
        """Called by gevent before each accept. At the cap, with a connection in the listen queue,
        it drops the longest waiting and stops accepting until `do_close` resumes; with none queued
        it lets gevent try (it finds nothing), so that the listener stays watched for the next."""
        if self.open_connections < self.limits.max_connections or not _has_pending_connection(self.socket):
            return False
        if self.waiting:
            self._make_room()
        self._paused = True
        return True

    def waits_for_request(self, handler: _Handler) -> None:
        """A connection now waits for a request, so it may be dropped to make room: if accepting
        stopped for want of one to drop, try again."""
        self.waiting[handler] = None
        self._resume()

    def do_handle(self, *args: Any) -> None:
        self.open_connections += 1
        super().do_handle(*args)

    def do_close(self, *args: Any) -> None:
        """Called once for each accepted connection, when it is over."""
        super().do_close(*args)
        self.open_connections -= 1
        self._resume()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._start_accepting_if_started()  # gevent asks `full` before each accept

    def _make_room(self) -> None:
        oldest = next(iter(self.waiting))
        log.debug("connection dropped to make room", client=_client(oldest.client_address))
        oldest.drop()


def _has_pending_connection(listener: socket.socket) -> bool:
    """Whether a connection waits in the listen queue: the listening socket polls readable."""
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    return bool(poller.poll(0))

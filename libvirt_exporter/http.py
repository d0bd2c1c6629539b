"""The HTTP side: a WSGI app that answers from the snapshot, served by gevent's WSGI server."""

from __future__ import annotations

import html
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from libvirt_exporter import __version__
from libvirt_exporter.basic_auth import BasicAuth
from libvirt_exporter.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Snapshot,
    accepts_gzip,
    wants_openmetrics,
)
from libvirt_exporter.web_config import WebConfig

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

REQUEST_HEAD_TIMEOUT = 60.0
"""Seconds a connection may take to deliver its next request line and headers (a TLS handshake
included), idle keep-alive time included. Longer than any sensible scrape interval, so Prometheus
keeps its connection; short enough that clients which never finish a request cannot pile up open
file descriptors."""

_LANDING = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>libvirt exporter</title></head>
<body>
<h1>libvirt exporter</h1>
<p>Version {version}. Values come from a snapshot refreshed in the background: a scrape never
waits for libvirt or QEMU.</p>
<p><a href="{path}">Metrics</a></p>
</body>
</html>
"""


def _respond(
    start_response: StartResponse,
    status: str,
    content_type: str,
    body: bytes,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra_headers]
    start_response(status, headers)
    return [body]


def make_app(
    snapshot: Snapshot, telemetry_path: str, web_config: WebConfig | None = None
) -> Callable[[dict[str, Any], StartResponse], list[bytes]]:
    web_config = web_config or WebConfig()
    routes = _make_routes(snapshot, telemetry_path)
    auth = BasicAuth(web_config.users)

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        def start_with_headers(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            return start_response(status, [*headers, *web_config.headers], *rest)

        if auth.enabled and not auth.allows(environ.get("HTTP_AUTHORIZATION", "")):
            return _respond(
                start_with_headers,
                "401 Unauthorized",
                "text/plain; charset=utf-8",
                b"Unauthorized\n",
                [("WWW-Authenticate", 'Basic realm="libvirt-exporter"')],
            )
        return routes(environ, start_with_headers)

    return app


def _make_routes(
    snapshot: Snapshot, telemetry_path: str
) -> Callable[[dict[str, Any], StartResponse], list[bytes]]:
    landing = _LANDING.format(version=html.escape(__version__), path=html.escape(telemetry_path)).encode()

    def routes(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path not in (telemetry_path, "/"):
            return _respond(start_response, "404 Not Found", "text/plain; charset=utf-8", b"not found\n")
        if method not in ("GET", "HEAD"):
            return _respond(
                start_response,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                [("Allow", "GET, HEAD")],
            )
        if path == "/":
            return _respond(start_response, "200 OK", "text/html; charset=utf-8", landing)
        openmetrics = wants_openmetrics(environ.get("HTTP_ACCEPT", ""))
        gzipped = accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))
        body = snapshot.current.body(openmetrics, gzipped)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        encoding = [("Content-Encoding", "gzip")] if gzipped else []
        return _respond(
            start_response,
            "200 OK",
            content_type,
            body,
            [*encoding, ("Vary", "Accept, Accept-Encoding")],
        )

    return routes


class _RequestHeadTimeout(OSError, ValueError):
    """An OSError so that gevent closes the connection quietly while it waits for a request line,
    and a ValueError so that it answers 400 once headers have begun, as for any bad request."""


class _Handler(WSGIHandler):  # type: ignore[misc]
    """gevent's handler, with a deadline on each request's head (see REQUEST_HEAD_TIMEOUT) and
    without Nagle's algorithm (see `handle`).

    The deadline starts when the handler begins to wait for a request and ends when the request's
    head has been parsed and the app is about to answer; writing the answer is not limited.
    """

    head_timeout = REQUEST_HEAD_TIMEOUT

    def handle_one_request(self) -> Any:
        self._head_deadline = gevent.Timeout.start_new(
            self.head_timeout, _RequestHeadTimeout(f"no complete request within {self.head_timeout:g} s")
        )
        try:
            return super().handle_one_request()
        finally:
            self._head_deadline.cancel()

    def handle_one_response(self) -> Any:
        self._head_deadline.cancel()
        return super().handle_one_response()

    def handle(self) -> Any:
        """Without Nagle's algorithm: gevent sends an answer's head and body in two writes, and on a
        kept-alive connection (Prometheus keeps its connections) the body would wait for the client's
        delayed ACK of the head, 40 ms on Linux, in every scrape but the first."""
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super().handle()


def make_server(
    host: str,
    port: int,
    snapshot: Snapshot,
    telemetry_path: str,
    web_config: WebConfig | None = None,
    head_timeout: float = REQUEST_HEAD_TIMEOUT,
) -> WSGIServer:
    """A server that logs no access lines (scrapes would flood the log) and reports its errors.

    The TLS handshake is left to the handler's first read so that it falls under the request-head
    deadline too; done on accept, a client that never finishes it would hold its connection forever.
    """
    app = make_app(snapshot, telemetry_path, web_config)
    handler = type("Handler", (_Handler,), {"head_timeout": head_timeout})
    tls: dict[str, Any] = {}
    if web_config and web_config.ssl_context:
        tls = {"ssl_context": web_config.ssl_context, "do_handshake_on_connect": False}
    return WSGIServer((host, port), app, log=None, error_log=log, handler_class=handler, **tls)

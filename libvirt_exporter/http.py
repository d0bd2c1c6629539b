"""The HTTP side: a WSGI app that answers from the snapshot, served by gevent's WSGI server.

What a client can hold of the exporter is bounded (docs/security.md): the server (http_server.py)
limits connections and how long each may take, and the app never reads a request body, never
holds a whole plain body per client and never lets authentication starve rendering.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer

from libvirt_exporter.basic_auth import BasicAuth, Verdict
from libvirt_exporter.config import WebLimits
from libvirt_exporter.http_server import LimitedServer
from libvirt_exporter.served import (
    GZIP_WBITS,
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Exposition,
    Served,
    accepts_gzip,
    wants_openmetrics,
)
from libvirt_exporter.web_config import WebConfig

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

PLAIN_CHUNK = 64 * 1024
"""Bytes of an unzipped body produced at a time: what a plain answer holds in memory per client."""
ZIPPED_SLICE = 4 * 1024
"""Bytes of gzip fed to the inflater at a time, so that no step copies more than this."""

_PLAIN = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    """A response: its body is an iterable produced only when sent, so that HEAD costs nothing."""

    status: str
    content_type: str
    body: Iterable[bytes]
    length: int
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def whole(cls, status: str, content_type: str, body: bytes, *headers: tuple[str, str]) -> Answer:
        return cls(status, content_type, (body,), len(body), headers)


_UNAUTHORIZED = Answer.whole(
    "401 Unauthorized", _PLAIN, b"Unauthorized\n", ("WWW-Authenticate", 'Basic realm="libvirt-exporter"')
)
_BUSY = Answer.whole(
    "503 Service Unavailable", _PLAIN, b"Too many password checks at once; retry\n", ("Retry-After", "1")
)
_NOT_FOUND = Answer.whole("404 Not Found", _PLAIN, b"not found\n")
_NOT_ALLOWED = Answer.whole("405 Method Not Allowed", _PLAIN, b"method not allowed\n", ("Allow", "GET, HEAD"))


def make_app(snapshot: Served, telemetry_path: str, web_config: WebConfig | None = None) -> App:
    web_config = web_config or WebConfig()
    route = _router(snapshot, telemetry_path)
    auth = BasicAuth(web_config.users)

    def answer(environ: dict[str, Any]) -> Answer:
        if auth.enabled:
            verdict = auth.check(environ.get("HTTP_AUTHORIZATION", ""))
            if verdict is not Verdict.ALLOWED:
                return _BUSY if verdict is Verdict.BUSY else _UNAUTHORIZED
        return route(environ)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """HEAD gets the headers GET would get and no body: a body would be read by the client as
        the start of the next answer on a kept-alive connection."""
        response = answer(environ)
        start_response(
            response.status,
            [
                ("Content-Type", response.content_type),
                ("Content-Length", str(response.length)),
                *response.headers,
                *web_config.headers,
            ],
        )
        return () if environ.get("REQUEST_METHOD") == "HEAD" else response.body

    return app


def _router(snapshot: Served, telemetry_path: str) -> Callable[[dict[str, Any]], Answer]:
    def route(environ: dict[str, Any]) -> Answer:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path not in (telemetry_path, "/"):
            return _NOT_FOUND
        if method not in ("GET", "HEAD"):
            return _NOT_ALLOWED
        if path == "/":
            return _status_page(snapshot.current, environ)
        return _metrics(snapshot.current, environ)

    return route


def _status_page(exposition: Exposition, environ: dict[str, Any]) -> Answer:
    """The status page of the snapshot (status_page.py): it never calls libvirt either."""
    zipped, size = exposition.status_page.gzipped()
    return _body(_HTML, zipped, size, environ, ("Vary", "Accept-Encoding"), ("Cache-Control", "no-cache"))


def _metrics(exposition: Exposition, environ: dict[str, Any]) -> Answer:
    openmetrics = wants_openmetrics(environ.get("HTTP_ACCEPT", ""))
    content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    zipped = exposition.openmetrics_gzipped if openmetrics else exposition.text_gzipped
    size = exposition.openmetrics_size if openmetrics else exposition.text_size
    return _body(content_type, zipped, size, environ, ("Vary", "Accept, Accept-Encoding"))


def _body(
    content_type: str, zipped: bytes, size: int, environ: dict[str, Any], *headers: tuple[str, str]
) -> Answer:
    """A body kept gzipped: as it is to a client that accepts gzip, else unzipped as it is read."""
    if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
        return Answer.whole("200 OK", content_type, zipped, ("Content-Encoding", "gzip"), *headers)
    return Answer("200 OK", content_type, _inflated(zipped), size, headers)


def _inflated(zipped: bytes) -> Iterator[bytes]:
    """A plain body, unzipped as the client takes it, `PLAIN_CHUNK` bytes at a time.

    A client that reads slowly holds a chunk, not a whole plain body (16 MB at 2,000 domains): with
    the body kept whole, each slow reader kept the snapshot of its own moment alive. The hub gets a
    turn between chunks, so that a fast reader of a large body delays no other client.
    """
    inflater = zlib.decompressobj(GZIP_WBITS)
    view = memoryview(zipped)
    for start in range(0, len(view), ZIPPED_SLICE):
        pending: bytes | memoryview = view[start : start + ZIPPED_SLICE]
        while pending:
            chunk = inflater.decompress(pending, PLAIN_CHUNK)
            if chunk:
                yield chunk
                gevent.sleep(0)
            pending = inflater.unconsumed_tail
    yield inflater.flush()


def make_server(
    listener: socket.socket | tuple[str, int],
    snapshot: Served,
    telemetry_path: str,
    web_config: WebConfig | None = None,
    limits: WebLimits | None = None,
) -> WSGIServer:
    """The server of the app on `listener` (a bound socket, or an address to bind), with TLS when
    the web config has it, under `limits` (the flags')."""
    app = make_app(snapshot, telemetry_path, web_config)
    ssl_context = web_config.ssl_context if web_config else None
    return LimitedServer(listener, app, limits or WebLimits(), ssl_context)

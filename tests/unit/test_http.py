"""The HTTP side: a scrape picks pre-rendered bytes and never waits for a hung libvirt call."""

from __future__ import annotations

import gzip
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import gevent.event
import pytest

from libvirt_exporter.app import Exporter, log_greenlets
from libvirt_exporter.http import make_server
from tests.unit.conftest import Series, make_config, parse, value, wait_for
from tests.unit.fake_libvirt import FakeHost


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def _fetch(url: str, headers: dict[str, str], method: str) -> Response:
    """Runs in a real OS thread, as a Prometheus server would, outside the exporter's hub."""
    request = urllib.request.Request(url, headers=headers, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            return Response(response.status, dict(response.headers), body, time.monotonic() - started)
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read(), time.monotonic() - started)


@dataclass
class Running:
    exporter: Exporter
    base: str

    def get(self, path: str = "/metrics", method: str = "GET", **headers: str) -> Response:
        return gevent.get_hub().threadpool.spawn(_fetch, self.base + path, headers, method).get()

    def series(self) -> Series:
        return parse(self.get().body)


@pytest.fixture
def running(fake_host: FakeHost) -> Iterator[Running]:
    exporter = Exporter(make_config(deadline=0.2, interval=0.3), opener=fake_host.open)
    server = make_server(("127.0.0.1", 0), exporter.snapshot, "/metrics")
    server.start()
    exporter.start()
    yield Running(exporter, f"http://127.0.0.1:{server.server_port}")
    fake_host.thaw_all()
    exporter.stop()
    server.stop()


def test_scrapes_answer_at_once_while_a_domain_hangs(running: Running, fake_host: FakeHost) -> None:
    wait_for(lambda: value(running.series(), "libvirt_domain_sample_stale", domain="b", sampler="block") == 0)
    fake_host.freeze("b")
    wait_for(
        lambda: (
            (
                value(running.series(), "libvirt_domain_sample_timeouts_total", domain="b", sampler="block")
                or 0
            )
            >= 1
        )
    )

    responses = [running.get() for _ in range(30)]
    slowest = max(r.seconds for r in responses)
    # A scrape that waited on the hung call would not return until the thaw; one second is far
    # beyond what serving the snapshot takes, even on a loaded machine.
    assert slowest < 1.0, f"a scrape took {slowest:.3f} s while a domain was hung"
    last = parse(responses[-1].body)
    for healthy in "ac":
        assert value(last, "libvirt_domain_sample_stale", domain=healthy, sampler="block") == 0
        assert value(last, "libvirt_domain_sample_stale", domain=healthy, sampler="bulk") == 0
    assert value(last, "libvirt_domain_call_in_flight_seconds", domain="b", sampler="block") > 0  # type: ignore[operator]

    fake_host.thaw("b")
    wait_for(lambda: value(running.series(), "libvirt_domain_sample_stale", domain="b", sampler="block") == 0)


def test_content_negotiation_and_gzip(running: Running) -> None:
    plain = running.get()
    assert plain.status == 200
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE libvirt_up gauge" in plain.body

    openmetrics = running.get(Accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.body.endswith(b"# EOF\n")

    zipped = running.get(**{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"libvirt_up" in gzip.decompress(zipped.body)


def test_landing_page_unknown_paths_and_methods(running: Running) -> None:
    landing = running.get("/")
    assert landing.status == 200 and b'href="/metrics"' in landing.body
    assert running.get("/nope").status == 404
    assert running.get("/metrics", method="POST").status == 405
    assert running.get().status == 200  # and the next scrape is unaffected


def test_answers_go_out_without_waiting_for_the_clients_ack(fake_host: FakeHost) -> None:
    """gevent writes an answer's head and body in two sends; with Nagle's algorithm on, every scrape
    on a kept-alive connection but the first would wait for the client's delayed ACK (40 ms)."""
    exporter = Exporter(make_config(), opener=fake_host.open)
    server = make_server(("127.0.0.1", 0), exporter.snapshot, "/metrics")
    nodelay: list[int] = []

    class Spy(server.handler_class):  # type: ignore[name-defined,misc]
        def handle_one_response(self) -> None:
            nodelay.append(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            super().handle_one_response()

    server.handler_class = Spy
    server.start()
    try:
        running = Running(exporter, f"http://127.0.0.1:{server.server_port}")
        assert running.get().status == 200
        assert nodelay and all(nodelay)
    finally:
        server.stop()


def test_sigusr1_logs_how_many_greenlets_exist(caplog: pytest.LogCaptureFixture) -> None:
    """What an operator, and the chaos runs, read to see that greenlets stay bounded."""

    def counted() -> int:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            log_greenlets()
        (record,) = [r for r in caplog.records if r.getMessage() == "greenlets"]
        return int(record.fields["greenlets"])  # type: ignore[attr-defined]

    before = counted()
    release = gevent.event.Event()
    waiting = [gevent.spawn(release.wait) for _ in range(10)]
    assert counted() == before + 10
    release.set()
    gevent.joinall(waiting)
    assert counted() == before, "greenlets that have ended are not counted"

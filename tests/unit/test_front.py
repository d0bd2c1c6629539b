"""The front process, which answers HTTP for the exporter: real processes, on libvirt's test driver
(no daemon), so that what an operator sees of the pair is what is checked."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.socket
import pytest
from prometheus_client import CollectorRegistry

from libvirt_exporter import front, front_link
from libvirt_exporter.cli import parse_config
from libvirt_exporter.exposition import Snapshot, TakenState
from libvirt_exporter.front import HandedOver
from libvirt_exporter.front_link import Front, FrontFailed, answer_pages
from libvirt_exporter.handover import Channel
from libvirt_exporter.http import make_server
from tests.exposition import parse, value
from tests.unit.conftest import wait_for
from tests.unit.test_cli import exporter_command

START_TIMEOUT = 30.0
END_TIMEOUT = 20.0
"""Seconds either process has to end once the other has: the front closes its connections within
one, the exporter stops its greenlets at once. Far above both, for a loaded machine."""


@dataclass
class Running:
    exporter: subprocess.Popen[str]
    front_pid: int
    port: int

    def get(self, path: str, timeout: float = 10) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as answer:
            body: bytes = answer.read()
            return body


@pytest.fixture
def running() -> Iterator[Running]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        exporter_command(port, "--sampler.bulk.interval=1s", "--sampler.bulk.deadline=500ms"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert exporter.stderr is not None
    line = ""
    while "msg=listening" not in line:
        assert exporter.poll() is None, "the exporter exited"
        line = exporter.stderr.readline()
    match = re.search(r"front_pid=(\d+)", line)
    assert match, line
    started = Running(exporter, int(match.group(1)), port)
    wait_for(lambda: value(parse(started.get("/metrics")), "libvirt_up") == 1, timeout=START_TIMEOUT)
    yield started
    for pid in (exporter.pid, int(match.group(1))):
        if not ended(pid):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    exporter.wait(timeout=END_TIMEOUT)


def ended(pid: int) -> bool:
    """Whether the process is gone, or a zombie waiting for its parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_front_answers_metrics_and_the_status_page_and_has_not_loaded_libvirt(running: Running) -> None:
    """What parses requests from the network cannot reach libvirt: it has not even loaded it."""
    assert b"test" in running.get("/")  # the test driver's one domain, on the exporter's page
    assert "libvirt.so" in mapped_files(running.exporter.pid)
    assert "libvirt.so" not in mapped_files(running.front_pid)


def test_each_new_snapshot_reaches_the_front(running: Running) -> None:
    def sampled_at() -> float:
        series = parse(running.get("/metrics"))
        return value(series, "libvirt_sampler_last_success_timestamp_seconds", sampler="bulk") or 0

    first = sampled_at()
    wait_for(lambda: sampled_at() > first, timeout=START_TIMEOUT)


def test_scrapes_are_answered_while_the_exporters_process_is_stopped(running: Running) -> None:
    """The front holds the last snapshot: a stopped (or busy) exporter does not hold scrapes up."""
    os.kill(running.exporter.pid, signal.SIGSTOP)
    try:
        assert value(parse(running.get("/metrics", timeout=5)), "libvirt_up") == 1
    finally:
        os.kill(running.exporter.pid, signal.SIGCONT)


def test_the_front_ends_with_the_exporter_however_it_ends(running: Running) -> None:
    os.kill(running.exporter.pid, signal.SIGKILL)
    wait_for(lambda: ended(running.front_pid), timeout=END_TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


def test_the_exporter_ends_with_one_line_when_the_front_ends(running: Running) -> None:
    """A front that crashed leaves nothing answering: the exporter exits for systemd to restart."""
    os.kill(running.front_pid, signal.SIGKILL)
    assert running.exporter.wait(timeout=END_TIMEOUT) == 1
    assert running.exporter.stderr is not None
    last = running.exporter.stderr.read().splitlines()[-1]
    assert last == "libvirt-exporter: error: the front process (which answers HTTP) ended: killed by signal 9"


def test_sigterm_stops_both_cleanly(running: Running) -> None:
    """systemd stops the exporter with SIGTERM (the front ignores it, and ends with the exporter)."""
    os.kill(running.exporter.pid, signal.SIGTERM)
    assert running.exporter.wait(timeout=END_TIMEOUT) == 0
    wait_for(lambda: ended(running.front_pid), timeout=END_TIMEOUT)


def test_a_status_page_that_fails_to_render_is_a_500_and_metrics_are_still_served() -> None:
    """In one process, over a real socket pair: the exporter's side answers the page requests of
    the front's, whose app serves them."""

    def failing_page() -> bytes:
        raise RuntimeError("a bug in the status page")

    snapshot = Snapshot(lambda: TakenState(lambda: (), failing_page), CollectorRegistry())
    ours, theirs = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    exporter_side, front_side = Channel(ours), Channel(theirs)
    served = HandedOver(front_side, snapshot.current)
    greenlets = [
        gevent.spawn(answer_pages, exporter_side, snapshot),
        gevent.spawn(front._follow, front_side.messages(), served),
    ]
    server = make_server(("127.0.0.1", 0), served, "/metrics")
    server.start()
    try:
        threads = gevent.get_hub().threadpool  # the client's blocking calls, off the hub
        page = threads.spawn(http_status, server.server_port, "/").get(timeout=20)
        metrics = threads.spawn(http_status, server.server_port, "/metrics").get(timeout=20)
    finally:
        server.stop()
        gevent.killall(greenlets)
    assert (page, metrics) == (500, 200)


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_front_that_cannot_start_says_so_not_that_the_port_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port is bound by then: the line must not read "cannot listen", as for a port in use."""
    monkeypatch.setattr(front_link, "_THIS_INTERPRETER", "/nonexistent/python3")
    config, _ = parse_config(["--libvirt.uri=test:///default"])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(FrontFailed, match=r"front process .* could not start: .*No such file"):
            Front.start(listener, config)

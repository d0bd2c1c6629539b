"""Basic auth under attack, with real sockets: a flood of wrong passwords leaves real scrapes fast
and the snapshot fresh, a 401 takes as long whichever part of the credentials is wrong, and a
password longer than bcrypt takes is a plain 401."""

from __future__ import annotations

import base64
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bcrypt
import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.http import make_server
from libvirt_exporter.web_config import load_web_config
from tests.exposition import plain_text
from tests.unit.conftest import make_config, parse, value, wait_for
from tests.unit.fake_libvirt import FakeDomain, FakeHost

T = TypeVar("T")
USER, PASSWORD = "prometheus", "s3cret"
COST = 10
"""The cost the issue measured with; about 0.1 s a check here."""
INTERVAL = 1.0
QUIET_SECONDS = 6.0
FLOOD_SECONDS = 15.0
FLOOD_RATE = 25.0
"""Wrong passwords a second; the issue asks for at least 20."""


def _in_thread(fn: Callable[..., T], *args: object) -> T:
    result: T = gevent.get_hub().threadpool.spawn(fn, *args).get()
    return result


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Protected:
    exporter: Exporter
    port: int


@pytest.fixture(scope="module")
def web_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(COST)).decode()
    path.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    return path


@pytest.fixture
def protected(web_config: Path) -> Iterator[Protected]:
    exporter = Exporter(
        make_config(deadline=0.2, interval=INTERVAL), opener=FakeHost([FakeDomain("a", 1)]).open
    )
    server = make_server(("127.0.0.1", 0), exporter.snapshot, "/metrics", load_web_config(str(web_config)))
    server.start()
    exporter.start()
    yield Protected(exporter, server.server_port)
    exporter.stop()
    server.stop()


def _status(port: int, authorization: str) -> tuple[int, bytes, float]:
    """Runs in a real OS thread: one request on a new connection; status, body, seconds."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": authorization})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, time.monotonic() - started


@dataclass
class Scrapes:
    seconds: list[float] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)
    """How old the bulk sampler's last success was in each answer: the snapshot's freshness."""

    def p99(self) -> float:
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[98]


def _scrape_for(port: int, seconds: float) -> Scrapes:
    """Runs in a real OS thread: Prometheus' way, on one kept-alive connection, ten a second."""
    scrapes = Scrapes()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        conn.request("GET", "/metrics", headers={"Authorization": basic(USER, PASSWORD)})
        response = conn.getresponse()
        body = response.read()
        scrapes.seconds.append(time.monotonic() - started)
        assert response.status == 200
        success = value(parse(body), "libvirt_sampler_last_success_timestamp_seconds", sampler="bulk")
        scrapes.ages.append(time.time() - float(success or 0))
        time.sleep(0.1)  # the scrape rate is the scenario itself
    conn.close()
    return scrapes


def _flood(port: int) -> dict[str, float]:
    """Runs in a real OS thread: the flood, in a process of its own."""
    flood = subprocess.run(
        [sys.executable, "-m", "tests.unit.password_flood", str(port), str(FLOOD_RATE), str(FLOOD_SECONDS)],
        capture_output=True,
        text=True,
        timeout=FLOOD_SECONDS + 30,
        check=True,
    )
    result: dict[str, float] = json.loads(flood.stdout)
    return result


def test_a_flood_of_wrong_passwords_leaves_scrapes_fast_and_the_snapshot_fresh(protected: Protected) -> None:
    port = protected.port
    wait_for(lambda: _in_thread(_status, port, basic(USER, PASSWORD))[0] == 200)
    wait_for(
        lambda: (
            value(
                parse(plain_text(protected.exporter.snapshot.current)),
                "libvirt_sampler_last_success_timestamp_seconds",
                sampler="bulk",
            )
            is not None
        )
    )
    quiet = _in_thread(_scrape_for, port, QUIET_SECONDS)

    pool = gevent.get_hub().threadpool
    flood = pool.spawn(_flood, port)
    loud = _in_thread(_scrape_for, port, FLOOD_SECONDS - 2)
    statuses = flood.get()

    print(
        f"scrape p99 quiet {quiet.p99() * 1e3:.1f} ms, under {statuses['rate']:.0f} wrong passwords/s "
        f"{loud.p99() * 1e3:.1f} ms; oldest snapshot quiet {max(quiet.ages):.2f} s, "
        f"under flood {max(loud.ages):.2f} s; flood answers {statuses}"
    )
    assert statuses["rate"] >= 20
    assert statuses.get("401", 0) > 0, "no wrong password was checked"
    assert set(statuses) <= {"rate", "401", "503"}, f"flood requests failed otherwise: {statuses}"
    assert loud.p99() <= quiet.p99() + 0.1
    assert max(loud.ages) <= max(*quiet.ages, INTERVAL) + 1.0, "the snapshot went stale"


def _median_interval(values: list[float]) -> tuple[float, float]:
    """A 95 % confidence interval of the median of `values`, from their order statistics."""
    ordered, half_width = sorted(values), 0.98 * len(values) ** 0.5
    low = max(0, int(len(values) / 2 - half_width))
    high = min(len(values) - 1, int(len(values) / 2 + half_width))
    return ordered[low], ordered[high]


def test_a_401_takes_as_long_for_an_unknown_user_as_for_a_wrong_password(protected: Protected) -> None:
    """Rounds of one of each, back to back and in turns first, so that a slow moment of the machine
    hits both alike; the median of the rounds' ratios is what a prober comparing them would see.
    Rounds go on until that median is known to within 5 % (a dozen on a quiet machine, more when
    other work shares the CPU), 60 at most."""
    ratios: list[float] = []
    known: list[float] = []
    while len(ratios) < 12 or (len(ratios) < 60 and _spread(ratios) > 0.1):
        round_ = len(ratios)
        users = [USER, f"nobody{round_}"]
        seconds = {}
        for user in users if round_ % 2 else reversed(users):
            status, _, seconds[user] = _in_thread(_status, protected.port, basic(user, f"guess{round_}"))
            assert status == 401
        known.append(seconds[USER])
        ratios.append(seconds[f"nobody{round_}"] / seconds[USER])
    ratio = statistics.median(ratios)
    print(
        f"401: wrong password {statistics.median(known) * 1e3:.1f} ms, unknown user x {ratio:.3f} "
        f"(95 % interval {_spread(ratios):.3f} wide, {len(ratios)} rounds)"
    )
    assert 0.9 <= ratio <= 1.1


def _spread(ratios: list[float]) -> float:
    low, high = _median_interval(ratios)
    return high - low


@pytest.mark.parametrize("user", [USER, "nobody"])
def test_a_password_longer_than_bcrypt_takes_is_a_plain_401(
    protected: Protected, user: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    status, body, _ = _in_thread(_status, protected.port, basic(user, "p" * 100))
    assert (status, body) == (401, b"Unauthorized\n")
    # The right password with more after it: bcrypt would read its first 72 bytes only.
    status, _, _ = _in_thread(_status, protected.port, basic(USER, PASSWORD + "x" * 100))
    assert status == 401
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= 30]

"""What the harness sees of the exporter: its scrapes, timed, and its own resources, from /proc.

Three kinds of client scrape it at once: the `scraper` asks once a second with a 10 s timeout, as
Prometheus would; the `watcher` asks four times a second and keeps the latest series, so that a
fault's detection time is known to a quarter of a second; the hammer (hammer.py, a process of its
own so that its load does not slow the harness' clocks) sends concurrent scrapes without pause.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.exposition import Series, parse

SCRAPE_TIMEOUT_S = 10.0
SCRAPE_BOUND_S = 1.0
"""The issue's promise: every scrape answered, and within a second."""


@dataclass
class ScrapeStats:
    """Every scrape one client made: how many, how many failed or were slow, the slowest."""

    client: str
    count: int = 0
    failed: int = 0
    slow: int = 0
    max_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    """The first few failures, for the report."""

    def add(self, seconds: float, error: str | None) -> None:
        self.count += 1
        self.max_seconds = max(self.max_seconds, seconds)
        if error is not None:
            self.failed += 1
            if len(self.failures) < 5:
                self.failures.append(error)
        elif seconds > SCRAPE_BOUND_S:
            self.slow += 1


def timed_get(url: str) -> tuple[bytes | None, float, str | None]:
    """GET `url` once: the body (None on a failure), the seconds it took, the failure."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            body: bytes = response.read()
    except Exception as error:
        return None, time.monotonic() - started, f"{type(error).__name__}: {error}"
    return body, time.monotonic() - started, None


class PeriodicScraper(threading.Thread):
    """Scrapes every `period` seconds until stopped; hands each parsed body to `on_series`."""

    def __init__(self, client: str, url: str, period: float, on_series: Callable[[Series], None]) -> None:
        super().__init__(name=client, daemon=True)
        self.stats = ScrapeStats(client)
        self._url = url
        self._period = period
        self._on_series = on_series
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            body, seconds, error = timed_get(self._url)
            self.stats.add(seconds, error)
            if body is not None:
                self._on_series(parse(body))
            self._stopping.wait(max(0.0, started + self._period - time.monotonic()))

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class Expectation:
    """Something a fault should make the metrics show: when the first scrape showed it."""

    def __init__(self, condition: Callable[[Series], bool]) -> None:
        self.condition = condition
        self.met_at: float | None = None
        """Monotonic time of the first scrape that met the condition."""
        self._met = threading.Event()

    def check(self, series: Series, at: float) -> None:
        if self.met_at is None and self.condition(series):
            self.met_at = at
            self._met.set()

    def wait(self, timeout: float) -> float | None:
        """The monotonic time it was met, waiting at most `timeout` seconds; None if not met."""
        self._met.wait(timeout)
        return self.met_at


class Watcher:
    """Checks every scrape of the `watcher` client against what listeners and faults expect."""

    def __init__(self, url: str, period: float = 0.25) -> None:
        self._lock = threading.Lock()
        self._series: Series = {}
        self._listeners: list[Callable[[Series, float], None]] = []
        self._expected: set[Expectation] = set()
        self.scraper = PeriodicScraper("watcher", url, period, self._update)

    def _update(self, series: Series) -> None:
        now = time.monotonic()
        with self._lock:
            self._series = series
            listeners = [*self._listeners, *(e.check for e in self._expected)]
        for listener in listeners:
            listener(series, now)

    def on_series(self, listener: Callable[[Series, float], None]) -> None:
        """Call `listener(series, monotonic time)` with every scrape from now on (in its thread)."""
        with self._lock:
            self._listeners.append(listener)

    def off_series(self, listener: Callable[[Series, float], None]) -> None:
        """Stop calling `listener`."""
        with self._lock:
            self._listeners.remove(listener)

    def latest(self) -> Series:
        with self._lock:
            return self._series

    def expect(self, condition: Callable[[Series], bool]) -> Expectation:
        """Check `condition` against every scrape from now on, until `done` is called with it."""
        expectation = Expectation(condition)
        with self._lock:
            self._expected.add(expectation)
        return expectation

    def done(self, expectation: Expectation) -> None:
        with self._lock:
            self._expected.discard(expectation)


GREENLETS_LINE = re.compile(rb"\bmsg=greenlets greenlets=(\d+)")
"""What the exporter logs on SIGUSR1."""
GREENLETS_ANSWER_S = 1.0


@dataclass(frozen=True)
class ResourceSample:
    """The exporter process' own resources at one moment."""

    at: float
    """Seconds since the run started."""
    threads: int
    fds: int
    rss_bytes: int
    greenlets: int | None
    """Alive greenlets, as the exporter logged them on SIGUSR1; None if it did not within 1 s."""


def sample_resources(pid: int, at: float, greenlets: int | None) -> ResourceSample:
    """Threads, open file descriptors and resident memory of `pid`, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return ResourceSample(
        at=at,
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_bytes=int(fields["VmRSS"].split()[0]) * 1024,
        greenlets=greenlets,
    )


class ResourceSampler(threading.Thread):
    """Samples the exporter's resources every `period` seconds until stopped. Greenlets are counted
    by the exporter itself on SIGUSR1 (gevent keeps no registry of them; see app.log_greenlets): each
    sample sends the signal and reads the count the exporter logs."""

    def __init__(self, pid: int, log_path: Path, started: float, period: float) -> None:
        super().__init__(name="resources", daemon=True)
        self.samples: list[ResourceSample] = []
        self._pid = pid
        self._log_path = log_path
        self._log_offset = 0
        self._lock = threading.Lock()
        self._origin = started
        self._period = period
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.sample()
            self._stopping.wait(self._period)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        with contextlib.suppress(OSError, KeyError):  # the exporter is gone (a zombie has no VmRSS)
            self.sample()

    def sample(self) -> ResourceSample:
        """Take a sample now (from any thread), keep it, and return it."""
        with self._lock:
            taken = self._sample()
            self.samples.append(taken)
            return taken

    def _sample(self) -> ResourceSample:
        self._logged_greenlets()  # skip what was logged before this signal
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGUSR1)
        answered_by = time.monotonic() + GREENLETS_ANSWER_S
        while (greenlets := self._logged_greenlets()) is None and time.monotonic() < answered_by:
            time.sleep(0.02)
        return sample_resources(self._pid, time.monotonic() - self._origin, greenlets)

    def _logged_greenlets(self) -> int | None:
        """The last count in the lines the exporter logged since the last read."""
        with self._log_path.open("rb") as log:
            log.seek(self._log_offset)
            new = log.read()
        complete = new[: new.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        counts = GREENLETS_LINE.findall(complete)
        return int(counts[-1]) if counts else None

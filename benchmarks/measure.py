"""What the benchmarks measure from outside an exporter: scrape latency over real HTTP, and the
CPU time, peak RSS and threads of a process from /proc.

The scraper runs in the benchmark's own process, never in the exporter's, so that the client's
work is not counted against the exporter.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""The Accept header of Prometheus 2.x: OpenMetrics first."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Scraper:
    """Scrapes as Prometheus does: one kept-alive connection, OpenMetrics preferred, gzip."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self._port = port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.last_body = b""
        """The answer to the last scrape that succeeded, as sent (gzipped)."""

    def get(self, headers: dict[str, str]) -> bytes:
        """GET /metrics; the body as sent (still compressed when gzipped). Raises on an error."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=self._timeout)
        try:
            self._conn.request("GET", "/metrics", headers=headers)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.close()  # a timed-out connection cannot carry the next request
            raise
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return body

    def scrape(self) -> float | None:
        """One scrape like Prometheus': its latency in seconds, None when it failed or timed out."""
        started = time.perf_counter()
        try:
            body = self.get({"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        except (OSError, RuntimeError, http.client.HTTPException):
            return None
        latency = time.perf_counter() - started
        self.last_body = body
        return latency

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, round(share * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_seconds_with_children(pid: int) -> float:
    """`cpu_seconds` of a process and its live children: our exporter and its front process, which
    answers HTTP. What either costs the host is the exporter's."""
    return sum(cpu_seconds(each) for each in _with_children(pid))


def status_value_with_children(pid: int, key: str) -> int:
    """`status_value` summed over a process and its live children (see above)."""
    return sum(status_value(each, key) for each in _with_children(pid))


def _with_children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [pid, *(int(child) for task in tasks for child in (task / "children").read_text().split())]


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time the machine's CPUs have spent busy since boot (user, nice, system, irq, softirq) and
    the time the hypervisor gave to others (steal), from /proc/stat: with what this process and its
    children used, what other processes used during a run can be told."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def tcp_congestion_control() -> str:
    """The congestion control new TCP connections get, the exporter's answers included: under BBR
    an answer of a few hundred kilobytes over loopback stalls 16 to 20 ms now and then, whatever
    the server (docs/benchmarks.md, "The slow scrapes that are not the exporter's")."""
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def own_cpu_seconds() -> float:
    """User plus system CPU time of this process and of the children it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def status_value(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status, such as `VmHWM` (kB, peak RSS) or `Threads`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise KeyError(key)


def series_count(exposition: bytes) -> int:
    """Samples in a text exposition: every line that is not a comment."""
    return sum(1 for line in exposition.splitlines() if line and not line.startswith(b"#"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, so that the output can go into the docs as it is."""
    lines = [f"| {' | '.join(headers)} |", f"|{'|'.join('---:' for _ in headers)}|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)

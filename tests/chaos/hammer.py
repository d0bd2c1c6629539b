"""The hammer: concurrent scrapes of one URL for a bounded time, run as a process of its own.

`python -m tests.chaos.hammer URL SECONDS WORKERS OUT.json` runs WORKERS threads that each scrape
URL back to back (10 s timeout) for SECONDS, then writes their ScrapeStats to OUT.json. Only
loopback URLs are accepted: this is load for the exporter under test on this machine only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from tests.chaos.observe import ScrapeStats, timed_get

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def hammer(url: str, seconds: float, workers: int) -> ScrapeStats:
    """Scrape `url` from `workers` threads at once, back to back, for `seconds`."""
    stats = ScrapeStats("hammer")
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < until:
            _, took, error = timed_get(url)
            with lock:
                stats.add(took, error)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats


def main(argv: list[str]) -> None:
    url, seconds, workers, out = argv
    if urllib.parse.urlsplit(url).hostname not in LOOPBACK:
        sys.exit(f"hammer: {url} is not a loopback address")
    stats = hammer(url, float(seconds), int(workers))
    Path(out).write_text(json.dumps(dataclasses.asdict(stats)))


if __name__ == "__main__":
    main(sys.argv[1:])

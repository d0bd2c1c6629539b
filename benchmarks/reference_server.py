"""The machine's own share of a scrape's latency: `python -m benchmarks.reference_server --body FILE`.

The exporter's HTTP server (`LimitedServer`, gevent's WSGI server under the exporter's limits), in
a process that does nothing else, answering every request with the body in FILE as the exporter
answers a Prometheus scrape (OpenMetrics, gzipped). The benchmarks scrape it half-way between two
scrapes of the exporter, with the exporter's own last answer as its body: whatever it takes is what the
machine (its load, its scheduler, its hypervisor) gives an HTTP answer at that moment, with no
sampler and no render holding this process's GIL. The difference between the two is the
exporter's.

It prints the port it listens on (chosen by the kernel) once it accepts connections.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from libvirt_exporter.config import WebLimits
from libvirt_exporter.http_server import LimitedServer
from libvirt_exporter.served import OPENMETRICS_CONTENT_TYPE


def static_app(body: bytes) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    headers = [
        ("Content-Type", OPENMETRICS_CONTENT_TYPE),
        ("Content-Encoding", "gzip"),
        ("Content-Length", str(len(body))),
    ]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return [body]

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", type=Path, required=True, help="the gzipped answer to send")
    args = parser.parse_args(argv)
    server = LimitedServer(("127.0.0.1", 0), static_app(args.body.read_bytes()), WebLimits(), None)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

"""The snapshot that scrapes are answered from: rendered once per refresh, in both formats, gzipped.

A scrape only picks bytes. Rendering (the per-domain Python work) happens after each sampling
cycle, so a scrape costs the same whatever the number of domains, and nothing a scrape does can
wait on libvirt. The families are collected in the hub, where no greenlet changes the state under
them; formatting and compressing them, the costly part, runs in a thread so that scrapes are
answered meanwhile.

The formatting is done here rather than by prometheus_client, which is several times slower (at 500
domains, 0.8 s per render for both formats): a sample's line is the same in both formats, so it is
formatted once, and each line is kept for the next render while its value stays the same.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import gevent
from gevent.event import Event
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from libvirt_exporter.collector.families import Families, Kind, Spec

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept_header: str) -> bool:
    """Prometheus asks for OpenMetrics first when it can take it; anything else gets plain text."""
    return any(
        part.split(";")[0].strip() == "application/openmetrics-text" for part in accept_header.split(",")
    )


def accepts_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


GZIP_LEVEL = 1
"""Exposition text repeats itself: level 1 is twice as fast as 6 and its output 15 % larger."""


@dataclass
class Exposition:
    """One rendered snapshot, in both formats, gzipped: what Prometheus asks for.

    A plain body is unzipped when first asked for (in a thread: at thousands of domains that takes
    tens of milliseconds), so that a snapshot does not hold every format twice: at 2,000 domains
    each plain format is 16 MB, gzipped 0.7 MB.
    """

    text_gzipped: bytes
    openmetrics_gzipped: bytes
    _plain: dict[bool, bytes] = field(default_factory=dict)

    @property
    def text(self) -> bytes:
        return self.body(openmetrics=False, gzipped=False)

    @property
    def openmetrics(self) -> bytes:
        return self.body(openmetrics=True, gzipped=False)

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        zipped = self.openmetrics_gzipped if openmetrics else self.text_gzipped
        if gzipped:
            return zipped
        if openmetrics not in self._plain:
            self._plain[openmetrics] = gevent.get_hub().threadpool.apply(gzip.decompress, (zipped,))
        return self._plain[openmetrics]


class _Gzip:
    """A gzip stream written part by part, so that the plain exposition is never whole in memory."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(self._compressor.compress(data))

    def close(self) -> bytes:
        self._chunks.append(self._compressor.flush())
        return b"".join(self._chunks)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


Line = tuple[float, str]
"""A sample's line as last rendered, and its value."""


class Renderer:
    """Formats families in the Prometheus text format and in OpenMetrics, as prometheus_client does.

    From one render to the next most label sets (domain, device, vCPU) stay, and many values too
    (sizes, states, info series): a sample's line is kept for the next render, which formats only
    what changed. What a render does not see again is dropped, so domains that are gone cost nothing.
    """

    def __init__(self) -> None:
        self._lines: dict[str, dict[Sequence[str], Line]] = {}

    def render(self, groups: Iterable[Families], process: CollectorRegistry) -> Exposition:
        previous, self._lines = self._lines, {}
        text, openmetrics = _Gzip(), _Gzip()
        for families in groups:
            for spec, samples in families.rows():
                lines = self._format(spec, samples, previous.get(spec.name, {})).encode()
                text.write(_header(spec, spec.exposed_name, _escape_help(spec.help)))
                text.write(lines)
                openmetrics.write(_header(spec, spec.name, _escape(spec.help)))
                openmetrics.write(lines)
        text.write(generate_latest(process))
        openmetrics.write(generate_openmetrics(process))  # type: ignore[no-untyped-call]
        return Exposition(text.close(), openmetrics.close())

    def _format(
        self, spec: Spec, samples: list[tuple[Sequence[str], float]], previous: dict[Sequence[str], Line]
    ) -> str:
        """A family's sample lines, in one string (the same in both formats)."""
        name = spec.exposed_name
        order = sorted(range(len(spec.labels)), key=spec.labels.__getitem__)  # prometheus_client sorts them
        kept = self._lines[spec.name] = {}
        lines = []
        for label_values, value in samples:
            line = previous.get(label_values)
            if line is None or line[0] != value:
                if line is None:
                    labels = ",".join(f'{spec.labels[i]}="{_escape(label_values[i])}"' for i in order)
                    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
                else:  # the value is the line's last word: label values may hold spaces, it may not
                    prefix = line[1][: line[1].rindex(" ") + 1]
                line = (value, f"{prefix}{floatToGoString(value)}\n")  # type: ignore[no-untyped-call]
            kept[label_values] = line
            lines.append(line[1])
        return "".join(lines)


def _escape_help(help: str) -> str:
    """The text format leaves double quotes in HELP as they are; OpenMetrics escapes them."""
    return help.replace("\\", r"\\").replace("\n", r"\n")


def _header(spec: Spec, name: str, help: str) -> bytes:
    kind = "counter" if spec.kind is Kind.COUNTER else "gauge"
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n".encode()


class Snapshot:
    """The latest exposition; `publish` renders a new one from what `collect` gathers, with the
    process families of `process` (prometheus_client's ProcessCollector) at the end."""

    def __init__(self, collect: Callable[[], list[Families]], process: CollectorRegistry) -> None:
        self._collect = collect
        self._process = process
        self._renderer = Renderer()
        self._rendering: Event | None = None
        self._again = False
        self.current = self._renderer.render(collect(), process)

    def publish(self) -> None:
        """Render the state as it is now; return once the snapshot served includes it.

        A publish asked for while a render runs joins it: that render runs once more when it is
        over, for all that asked meanwhile (after each cycle, several samplers ask at once).
        """
        self._again = True
        if self._rendering is not None:
            self._rendering.wait()
            return
        self._rendering = Event()
        try:
            while self._again:
                self._again = False
                groups = self._collect()
                pool = gevent.get_hub().threadpool
                self.current = pool.spawn(self._renderer.render, groups, self._process).get()
        finally:
            self._rendering.set()
            self._rendering = None

"""The snapshot that scrapes are answered from: rendered once per refresh, in both formats, gzipped.

A scrape only picks bytes. Rendering (the per-domain Python work) happens after each sampling
cycle, so a scrape costs the same whatever the number of domains, and nothing a scrape does can
wait on libvirt. The families are collected in the hub, where no greenlet changes the state under
them; formatting and compressing them, the costly part, runs in a thread so that scrapes are
answered meanwhile.

The formatting is done here rather than by prometheus_client, which is several times slower (at 500
domains, 0.8 s per render for both formats): a sample's line is the same in both formats, so it is
formatted once, and the label part of each line is kept from one render to the next.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Exposition:
    """One rendered snapshot, in both formats, plain and gzipped."""

    text: bytes
    openmetrics: bytes
    text_gzipped: bytes
    openmetrics_gzipped: bytes

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        if openmetrics:
            return self.openmetrics_gzipped if gzipped else self.openmetrics
        return self.text_gzipped if gzipped else self.text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


Line = tuple[float, str, str]
"""A sample's line as last rendered: its value, the line, and the line up to the value."""


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
        text: list[str] = []
        openmetrics: list[str] = []
        for families in groups:
            for spec, samples in families.rows():
                lines = self._format(spec, samples, previous.get(spec.name, {}))
                text += [_header(spec, spec.exposed_name, _escape_help(spec.help)), lines]
                openmetrics += [_header(spec, spec.name, _escape(spec.help)), lines]
        text_bytes = "".join(text).encode() + generate_latest(process)
        openmetrics_bytes = "".join(openmetrics).encode() + generate_openmetrics(process)  # type: ignore[no-untyped-call]
        return Exposition(
            text_bytes,
            openmetrics_bytes,
            gzip.compress(text_bytes, GZIP_LEVEL),
            gzip.compress(openmetrics_bytes, GZIP_LEVEL),
        )

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
            if line is None:
                labels = ",".join(f'{spec.labels[i]}="{_escape(label_values[i])}"' for i in order)
                line = (value, "", f"{name}{{{labels}}} " if labels else f"{name} ")
            if line[0] != value or not line[1]:
                line = (value, f"{line[2]}{floatToGoString(value)}\n", line[2])  # type: ignore[no-untyped-call]
            kept[label_values] = line
            lines.append(line[1])
        return "".join(lines)


def _escape_help(help: str) -> str:
    """The text format leaves double quotes in HELP as they are; OpenMetrics escapes them."""
    return help.replace("\\", r"\\").replace("\n", r"\n")


def _header(spec: Spec, name: str, help: str) -> str:
    kind = "counter" if spec.kind is Kind.COUNTER else "gauge"
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n"


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

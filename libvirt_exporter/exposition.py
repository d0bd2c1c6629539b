"""The snapshot that scrapes are answered from: rendered once per refresh, in both formats, gzipped,
and handed to the front process (front_link.py), which answers them.

A scrape only picks bytes. Rendering (the per-domain Python work) happens after each sampling
cycle, so a scrape costs the same whatever the number of domains, and nothing a scrape does can
wait on libvirt. The state is taken in the hub, where no greenlet changes it meanwhile, as copies of
references (collector/view.py); collecting, formatting and compressing the families, the costly
part, runs in a thread so that the hub times the calls' deadlines meanwhile.

The formatting is done here rather than by prometheus_client, which costs several times the CPU
(docs/benchmarks.md): a sample's line is the same in both formats, so it is formatted once, and each
label set is kept for the next render.
"""

from __future__ import annotations

import gc
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import gevent
from gevent.event import Event
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from libvirt_exporter.collector.families import Families, Kind, Spec
from libvirt_exporter.served import GZIP_WBITS, Exposition

GZIP_LEVEL = 1
"""Exposition text repeats itself: the fastest level compresses it well enough (docs/benchmarks.md)."""


class LazyPage:
    """A page of a taken state, rendered the first time it is asked for and then kept gzipped.

    The status page costs nothing while nobody looks at it: rendered after every cycle, it cost
    several times what collecting the families does at 2,000 domains. Once rendered, the state it
    was rendered from can go.
    """

    def __init__(self, render: Callable[[], bytes]) -> None:
        self._render: Callable[[], bytes] | None = render
        self._lock = threading.Lock()
        self._gzipped = b""
        self._size = 0

    def gzipped(self) -> tuple[bytes, int]:
        """The first call renders the page in a thread: rendering holds the GIL for as long as it
        runs (a few tens of milliseconds at 2,000 domains), and the hub must not wait that long."""
        if self._render is None:
            return self._gzipped, self._size
        result: tuple[bytes, int] = gevent.get_hub().threadpool.spawn(self._rendered).get()
        return result

    def _rendered(self) -> tuple[bytes, int]:
        with self._lock:
            if self._render is not None:
                page = _Gzip()
                page.write(self._render())
                self._gzipped, self._size, self._render = page.close(), page.size, None
            return self._gzipped, self._size


class _Gzip:
    """A gzip stream written part by part, so that the plain exposition is never whole in memory."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._chunks: list[bytes] = []
        self.size = 0
        """Bytes written: the size of the plain body."""

    def write(self, data: bytes) -> None:
        self._chunks.append(self._compressor.compress(data))
        self.size += len(data)

    def close(self) -> bytes:
        self._chunks.append(self._compressor.flush())
        return b"".join(self._chunks)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_LabelSet = tuple[Sequence[str], str]
"""Label values, and their label set as written: `{name="value",...}`."""


class Renderer:
    """Formats families in the Prometheus text format and in OpenMetrics, as prometheus_client does.

    From one render to the next the label sets (domain, device, vCPU) stay, and the families of one
    group share them (every per-disk family has the same `{device=..,domain=..}`): each label set is
    formatted once and kept for the next render, for all the families with those label names. Only
    that is kept, not whole lines, of which there are several times more than label sets
    (docs/benchmarks.md). What a render does not see again is dropped.

    A label set is kept with the label values it was first formatted for, and those values, not
    each render's equal copy, are what the next render's table holds: a copy kept would outlive the
    render, and the garbage collector's first pass after each render would scan thousands of them.
    """

    def __init__(self) -> None:
        self._label_sets: dict[tuple[str, ...], dict[Sequence[str], _LabelSet]] = {}

    def render(self, groups: Iterable[Families], process: CollectorRegistry) -> Exposition:
        previous, self._label_sets = self._label_sets, {}
        text, openmetrics = _Gzip(), _Gzip()
        for families in groups:
            for spec, samples in families.rows():
                lines = self._format(spec, samples, previous.get(spec.labels, {})).encode()
                text.write(_header(spec, spec.exposed_name, _escape_help(spec.help)))
                text.write(lines)
                openmetrics.write(_header(spec, spec.name, _escape(spec.help)))
                openmetrics.write(lines)
        text.write(generate_latest(process))
        openmetrics.write(generate_openmetrics(process))  # type: ignore[no-untyped-call]
        return Exposition(text.close(), openmetrics.close(), text.size, openmetrics.size)

    def _format(
        self, spec: Spec, samples: list[tuple[Sequence[str], float]], previous: dict[Sequence[str], _LabelSet]
    ) -> str:
        """A family's sample lines, in one string (the same in both formats)."""
        name = spec.exposed_name
        kept = self._label_sets.setdefault(spec.labels, {})
        lines = []
        for label_values, value in samples:
            label_set = kept.get(label_values)
            if label_set is None:
                label_set = previous.get(label_values)
                if label_set is None:
                    label_set = (label_values, _label_set(spec.labels, label_values))
                kept[label_set[0]] = label_set
            # Between -1e6 and 1e6 a float's repr has its point within the first 7 characters (or
            # none), which is what Go writes: the common case, written without a call.
            text = repr(value) if -1e6 < value < 1e6 else _go_float(value)
            lines.append(f"{name}{label_set[1]} {text}\n")
        return "".join(lines)


def _label_set(names: Sequence[str], values: Sequence[str]) -> str:
    """`{name="value",...}` sorted by name, as prometheus_client writes it; empty without labels."""
    if not names:
        return ""
    order = sorted(range(len(names)), key=names.__getitem__)
    return "{" + ",".join(f'{names[i]}="{_escape(values[i])}"' for i in order) + "}"


def _go_float(value: float) -> str:
    """What floatToGoString writes, at about half its cost: large values (byte counters,
    timestamps) are common. A finite float is its repr, but for a positive one whose point comes
    after the first 7 characters, which Go writes with an exponent (1.7e+09): the mantissa is the
    repr's digits, less trailing zeros. Infinities and NaN, rare, are left to floatToGoString.
    `value` is a float (Spec's scale is one)."""
    text = repr(value)
    point = text.find(".")
    if point > 6 and value > 0:
        mantissa = f"{text[0]}.{text[1:point]}{text[point + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{point - 1:02d}"
    if text[-1] in "fn":  # inf, -inf, nan
        go: str = floatToGoString(value)  # type: ignore[no-untyped-call]
        return go
    return text


def _escape_help(help: str) -> str:
    """The text format leaves double quotes in HELP as they are; OpenMetrics escapes them."""
    return help.replace("\\", r"\\").replace("\n", r"\n")


def _header(spec: Spec, name: str, help: str) -> bytes:
    kind = "counter" if spec.kind is Kind.COUNTER else "gauge"
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n".encode()


@dataclass(frozen=True)
class TakenState:
    """A state taken earlier, and what renders it in any thread: its families and its status page."""

    families: Callable[[], Iterable[Families]]
    status_page: Callable[[], bytes]


class Snapshot:
    """The latest exposition; `publish` renders a new one, with the process families of `process`
    (prometheus_client's ProcessCollector) at the end, and the status page of the same state, to
    be rendered when asked for. `freeze` takes the state in the hub and returns what renders it."""

    def __init__(self, freeze: Callable[[], TakenState], process: CollectorRegistry) -> None:
        self._freeze = freeze
        self._process = process
        self._renderer = Renderer()
        self._rendering: Event | None = None
        self._again = False
        self._published = Event()
        self.current = self._render(freeze())

    def newer_than(self, exposition: Exposition | None) -> Exposition:
        """The current exposition once it is not `exposition`: waits (in a greenlet) for a publish.
        Publishes that come meanwhile are skipped to the last one."""
        while self.current is exposition:
            self._published.wait()
        return self.current

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
                taken = self._freeze()
                self.current = gevent.get_hub().threadpool.spawn(self._render, taken).get()
                published, self._published = self._published, Event()
                published.set()
        finally:
            self._rendering.set()
            self._rendering = None

    def _render(self, taken: TakenState) -> Exposition:
        with _no_collection():
            exposition = self._renderer.render(taken.families(), self._process)
            return replace(exposition, status_page=LazyPage(taken.status_page))


@contextmanager
def _no_collection() -> Iterator[None]:
    """While a render runs in its thread, the cyclic garbage collector does not run.

    A render's rows (two objects per sample) live until it ends: collections triggered by them would
    scan them again and again and move them to older generations, which brings on full collections
    that hold the GIL, and so the hub. The rows hold no reference cycle; they are freed as the
    render ends (what this saves: docs/benchmarks.md).
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

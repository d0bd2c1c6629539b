"""Metric definitions as data, and the builder that turns raw libvirt numbers into families."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

NANOSECONDS = 1e-9
KIBIBYTES = 1024.0


class Kind(Enum):
    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True)
class Spec:
    """One metric family, documented from these same fields (docs/metrics.md).

    A counter's name is given without `_total`: the client library adds it.
    """

    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...]
    scale: float = 1.0
    source: str = ""
    """Where the value comes from: a stats field (`cpu.time`) or a libvirt call."""
    collector: str = ""
    """The `--collector.<name>` switch that gates the family; empty for families always on."""

    def __post_init__(self) -> None:
        # A float scale makes every value Families stores a float, which the formatter writes as
        # it is (an int 1 in a table of rows would leave libvirt's ints as they are).
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind is Kind.COUNTER else self.name


def gauge(
    name: str,
    help: str,
    labels: tuple[str, ...] = (),
    scale: float = 1.0,
    *,
    source: str = "",
    collector: str = "",
) -> Spec:
    return Spec(name, help, Kind.GAUGE, labels, scale, source, collector)


def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Spec:
    """A counter the exporter keeps itself (libvirt's counters are read through `fields`)."""
    return Spec(name, help, Kind.COUNTER, labels)


Row = tuple[str, Kind, str, str, float]
"""A family read from one field of a stats mapping: (field, kind, family name, help, scale)."""


def fields(collector: str, labels: tuple[str, ...], rows: Iterable[Row]) -> tuple[tuple[str, Spec], ...]:
    """(field, spec) pairs for a table of rows; the values come from the last sample."""
    return tuple(
        (key, Spec(name, f"{help} (last sample).", kind, labels, scale, source=key, collector=collector))
        for key, kind, name, help, scale in rows
    )


class Families:
    """Collects samples by spec, and holds only the families that got at least one.

    Samples are kept as plain rows: the snapshot is formatted from them directly (exposition.py),
    which costs a fraction of what prometheus_client's objects cost (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Spec, list[tuple[Sequence[str], float]]]] = {}

    def add(self, spec: Spec, label_values: Sequence[str], value: float) -> None:
        family = self._rows.get(spec.name)
        if family is None:
            family = self._rows[spec.name] = (spec, [])
        family[1].append((label_values, value * spec.scale))

    def rows(self) -> Iterator[tuple[Spec, list[tuple[Sequence[str], float]]]]:
        """Each family's spec and its samples: (label values in the spec's order, value)."""
        return iter(self._rows.values())

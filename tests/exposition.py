"""Reading an exposition as a user would: every sample by name and label set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: bytes | str) -> Series:
    """Every sample of a text exposition, by name and label set."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def domains_in(series: Series) -> set[str]:
    return {dict(labels)["domain"] for _, labels in series if "domain" in dict(labels)}

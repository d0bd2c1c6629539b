"""Reading an exposition as a user would: every sample by name and label set."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from libvirt_exporter.collector.families import Families, Kind
from libvirt_exporter.served import Exposition

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


def value_including(series: Series, name: str, **labels: str) -> float | None:
    """The value of the one series of `name` whose labels include these (an `_info` family's
    series, say, named by a few of its labels); None if there is none."""
    wanted = labels.items()
    found = [v for (n, have), v in series.items() if n == name and wanted <= dict(have).items()]
    assert len(found) <= 1, f"{len(found)} series of {name} match {labels}"
    return found[0] if found else None


def assert_promtool_accepts(body: str | bytes) -> None:
    """`promtool check metrics` lints the Prometheus text format (it reads OpenMetrics' HELP of a
    counter as missing)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    data = body.encode() if isinstance(body, str) else body
    check = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def domains_in(series: Series) -> set[str]:
    return {dict(labels)["domain"] for _, labels in series if "domain" in dict(labels)}


def plain_text(exposition: Exposition) -> bytes:
    """The plain text format of a rendered snapshot."""
    return gzip.decompress(exposition.text_gzipped)


def plain_openmetrics(exposition: Exposition) -> bytes:
    return gzip.decompress(exposition.openmetrics_gzipped)


def as_prometheus_client_metrics(families: Families) -> Iterator[Metric]:
    """The same families as prometheus_client's objects, for a registry of its own."""
    for spec, samples in families.rows():
        family_type = GaugeMetricFamily if spec.kind is Kind.GAUGE else CounterMetricFamily
        family = family_type(spec.name, spec.help, labels=list(spec.labels))
        for label_values, value in samples:
            family.add_metric(list(label_values), value)
        yield family

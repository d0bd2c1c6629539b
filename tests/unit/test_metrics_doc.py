"""docs/metrics.md is generated from the metric definitions; these tests keep it and the code in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_exporter.collector import SPECS
from tools import metrics_doc, migration

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_committed_doc_matches_the_code() -> None:
    committed = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert committed == metrics_doc.render(), "docs/metrics.md is out of date: run `make docs`"


def test_migration_tables_name_only_families_we_export() -> None:
    exposed = {spec.exposed_name for spec in SPECS}
    renames = migration.DEBIAN + migration.INOVEX
    unknown = [rename for rename in renames if rename.ours is not None and rename.ours not in exposed]
    assert unknown == [], "migration.py maps to families that SPECS does not define"


def test_every_family_has_a_row() -> None:
    rendered = metrics_doc.render()
    missing = [spec.exposed_name for spec in SPECS if f"\n| `{spec.exposed_name}` |" not in rendered]
    assert missing == [], "families missing from the rendered docs"


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("libvirt_domain_cpu_time_seconds_total", "seconds"),
        ("libvirt_sampler_duration_seconds", "seconds"),
        ("libvirt_domain_sample_timestamp_seconds", "unix time"),
        ("libvirt_domain_block_read_bytes_total", "bytes"),
        ("libvirt_domain_memory_rss_bytes", "bytes"),
        ("libvirt_domain_dirty_rate_bytes_per_second", "bytes/s"),
        ("libvirt_domain_info", "info (1)"),
        ("libvirt_domain_vcpus_current", "—"),
    ],
)
def test_unit_follows_from_the_name(name: str, unit: str) -> None:
    assert metrics_doc.unit_of(name) == unit

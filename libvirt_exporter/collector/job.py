"""Progress of running background jobs (migrations, backups, dumps) from the `job` sampler."""

from __future__ import annotations

from libvirt_exporter.collector.families import Families, Kind, fields, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.samplers import SamplerName

G = Kind.GAUGE
MILLISECONDS = 1e-3
OPERATIONS = ("unknown", "start", "save", "restore", "migration_in", "migration_out", "snapshot",
              "snapshot_revert", "dump", "backup", "snapshot_delete")  # fmt: skip
JOB_TYPES = ("none", "bounded", "unbounded", "completed", "failed", "cancelled")

INFO = gauge(
    "libvirt_domain_job_info",
    "The background job that runs on the domain, with value 1 (last sample).",
    ("domain", "type", "operation"),
    source="virDomainGetJobStats type, operation",
    collector="job",
)
# fmt: off
FIELDS = fields("job", ("domain",), [
    ("time_elapsed", G, "libvirt_domain_job_elapsed_seconds", "Time the job has run", MILLISECONDS),
    ("time_remaining", G, "libvirt_domain_job_remaining_seconds", "Time the job expects to need still",
     MILLISECONDS),
    ("data_total", G, "libvirt_domain_job_data_total_bytes", "Bytes the job has to transfer", 1),
    ("data_processed", G, "libvirt_domain_job_data_processed_bytes", "Bytes the job has transferred", 1),
    ("data_remaining", G, "libvirt_domain_job_data_remaining_bytes", "Bytes still to transfer", 1),
    ("memory_total", G, "libvirt_domain_job_memory_total_bytes", "Guest memory the job has to transfer", 1),
    ("memory_processed", G, "libvirt_domain_job_memory_processed_bytes", "Guest memory transferred", 1),
    ("memory_remaining", G, "libvirt_domain_job_memory_remaining_bytes", "Guest memory still to transfer", 1),
    ("memory_bps", G, "libvirt_domain_job_memory_bytes_per_second", "Rate of the memory transfer", 1),
    ("memory_dirty_rate", G, "libvirt_domain_job_memory_dirty_pages_per_second",
     "Guest pages dirtied per second during the job", 1),
    ("memory_iteration", G, "libvirt_domain_job_memory_iteration", "Iteration of the memory transfer", 1),
    ("disk_total", G, "libvirt_domain_job_disk_total_bytes", "Disk data the job has to transfer", 1),
    ("disk_processed", G, "libvirt_domain_job_disk_processed_bytes", "Disk data transferred", 1),
    ("disk_remaining", G, "libvirt_domain_job_disk_remaining_bytes", "Disk data still to transfer", 1),
    ("downtime", G, "libvirt_domain_job_downtime_seconds", "Expected or measured downtime", MILLISECONDS),
])
# fmt: on
SPECS = (INFO, *(spec for _, spec in FIELDS))


def _word(names: tuple[str, ...], number: object) -> str:
    index = number if isinstance(number, int) else -1
    return names[index] if 0 <= index < len(names) else str(number)


def collect(state: State) -> Families:
    families = Families()
    for entry in state.domains:
        sample = state.store.sample(SamplerName.JOB, entry.subject)
        if not entry.job_running or sample is None:
            continue
        stats = sample.values
        families.add(
            INFO,
            (entry.name, _word(JOB_TYPES, stats.get("type")), _word(OPERATIONS, stats.get("operation"))),
            1,
        )
        for field, spec in FIELDS:
            if (value := stats.get(field)) is not None:
                families.add(spec, (entry.name,), value)
    return families

"""Per-disk families from the `block` sampler, and each disk's identity from the domain XML."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from libvirt_exporter.collector.families import NANOSECONDS, Families, Spec, counter, gauge
from libvirt_exporter.collector.view import View
from libvirt_exporter.samplers.block import NAME as BLOCK
from libvirt_exporter.samplers.block import sampled_disks

DD = ("domain", "device")

INFO = gauge(
    "libvirt_domain_block_info",
    "A disk of the domain, from its XML, with value 1.",
    ("domain", "device", "path", "bus", "driver_type"),
)

FIELDS: tuple[tuple[str, Spec], ...] = (
    (
        "rd_operations",
        counter("libvirt_domain_block_read_requests", "Read requests (last sample).", DD),
    ),
    ("rd_bytes", counter("libvirt_domain_block_read_bytes", "Bytes read (last sample).", DD)),
    (
        "rd_total_times",
        counter(
            "libvirt_domain_block_read_time_seconds",
            "Time spent reading (last sample).",
            DD,
            NANOSECONDS,
        ),
    ),
    (
        "wr_operations",
        counter("libvirt_domain_block_write_requests", "Write requests (last sample).", DD),
    ),
    ("wr_bytes", counter("libvirt_domain_block_write_bytes", "Bytes written (last sample).", DD)),
    (
        "wr_total_times",
        counter(
            "libvirt_domain_block_write_time_seconds",
            "Time spent writing (last sample).",
            DD,
            NANOSECONDS,
        ),
    ),
    (
        "flush_operations",
        counter("libvirt_domain_block_flush_requests", "Flush requests (last sample).", DD),
    ),
    (
        "flush_total_times",
        counter(
            "libvirt_domain_block_flush_time_seconds",
            "Time spent flushing (last sample).",
            DD,
            NANOSECONDS,
        ),
    ),
    (
        "errs",
        counter(
            "libvirt_domain_block_errors",
            "I/O errors, where the hypervisor reports them (last sample).",
            DD,
        ),
    ),
    (
        "capacity",
        gauge(
            "libvirt_domain_block_capacity_bytes",
            "Size of the disk as the guest sees it (last sample).",
            DD,
        ),
    ),
    (
        "allocation",
        gauge(
            "libvirt_domain_block_allocation_bytes",
            "Bytes of the disk's image in use on the host (last sample).",
            DD,
        ),
    ),
    (
        "physical",
        gauge(
            "libvirt_domain_block_physical_bytes",
            "Size of the disk's image on the host (last sample).",
            DD,
        ),
    ),
)

SPECS = (INFO, *(spec for _, spec in FIELDS))


def collect(view: View) -> Iterator[Metric]:
    families = Families()
    for entry in view.inventory.domains():
        for disk in sampled_disks(entry):
            families.add(INFO, (entry.name, disk.target, disk.path, disk.bus, disk.driver_type), 1)
        sample = view.store.sample(BLOCK, entry.name)
        if sample is None:
            continue
        for device, stats in sample.values.items():
            for field, spec in FIELDS:
                value = stats.get(field)
                if value is not None and value >= 0:  # libvirt reports -1 for "not supported"
                    families.add(spec, (entry.name, device), value)
    yield from families

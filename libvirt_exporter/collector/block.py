"""Per-disk families: I/O counters from the `block` sampler, sizes from the `block_info` sampler (a
slower cadence), and each disk's identity from the domain XML."""

from __future__ import annotations

from libvirt_exporter.calls import Domain
from libvirt_exporter.collector.families import NANOSECONDS, Families, Kind, fields, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.stat_keys import devices

DD = ("domain", "device")

INFO = gauge(
    "libvirt_domain_block_info",
    "A disk of the domain, from its XML, with value 1.",
    ("domain", "device", "path", "bus", "driver_type"),
    source="domain XML",
    collector="block",
)

G, C = Kind.GAUGE, Kind.COUNTER
# fmt: off
COUNTERS = fields("block", DD, [  # block.N.<field>, from the block stats group
    ("rd.reqs", C, "libvirt_domain_block_read_requests", "Read requests", 1),
    ("rd.bytes", C, "libvirt_domain_block_read_bytes", "Bytes read", 1),
    ("rd.times", C, "libvirt_domain_block_read_time_seconds", "Time spent reading", NANOSECONDS),
    ("wr.reqs", C, "libvirt_domain_block_write_requests", "Write requests", 1),
    ("wr.bytes", C, "libvirt_domain_block_write_bytes", "Bytes written", 1),
    ("wr.times", C, "libvirt_domain_block_write_time_seconds", "Time spent writing", NANOSECONDS),
    ("fl.reqs", C, "libvirt_domain_block_flush_requests", "Flush requests", 1),
    ("fl.times", C, "libvirt_domain_block_flush_time_seconds", "Time spent flushing", NANOSECONDS),
    ("errors", C, "libvirt_domain_block_errors", "I/O errors, where the hypervisor reports them", 1),
])
# fmt: on
SIZES_CADENCE = (
    "(read every --sampler.block_info.interval, 5 minutes by default: "
    'libvirt_domain_sample_timestamp_seconds{sampler="block_info"} says when)'
)
SIZES = {
    field: gauge(name, f"{help} {SIZES_CADENCE}.", DD, source="virDomainGetBlockInfo", collector="block")
    for field, name, help in (
        ("capacity", "libvirt_domain_block_capacity_bytes", "Size of the disk as the guest sees it"),
        ("allocation", "libvirt_domain_block_allocation_bytes", "Host bytes the image of the disk uses"),
        ("physical", "libvirt_domain_block_physical_bytes", "Size of the disk's image on the host"),
    )
}
"""From the block_info sampler, by the disk's target name."""

SPECS = (INFO, *(spec for _, spec in COUNTERS), *SIZES.values())


def collect(state: State) -> Families:
    families = Families()
    for entry in state.domains:
        for disk in entry.disks_with_media:
            families.add(INFO, (entry.name, disk.target, disk.path, disk.bus, disk.driver_type), 1)
        _add_counters(families, state, entry.name, entry.subject)
        _add_sizes(families, state, entry)
    return families


def _add_counters(families: Families, state: State, name: str, subject: Domain) -> None:
    sample = state.store.sample(SamplerName.BLOCK, subject)
    if sample is None:
        return
    for device, stats in devices(sample.values).get("block", ()):
        for field, spec in COUNTERS:
            value = stats.get(field)
            if value is not None and value >= 0:  # libvirt reports -1 for "not supported"
                families.add(spec, (name, device), value)


def _add_sizes(families: Families, state: State, entry: DomainEntry) -> None:
    """The sizes of the disks the domain has now: a disk removed since they were read has none."""
    sample = state.store.sample(SamplerName.BLOCK_INFO, entry.subject)
    if sample is None:
        return
    for disk in entry.disks_with_media:
        for field, spec in SIZES.items():
            value = sample.values.get(f"{disk.target}.{field}")
            if value is not None:
                families.add(spec, (entry.name, disk.target), value)

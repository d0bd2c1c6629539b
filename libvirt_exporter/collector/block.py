"""Per-disk families from the `block` sampler, and each disk's identity from the domain XML."""

from __future__ import annotations

from libvirt_exporter.collector.families import NANOSECONDS, Families, Kind, fields, gauge
from libvirt_exporter.collector.view import State
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
FIELDS = fields("block", ("domain", "device"), [  # block.N.<field>
    ("rd.reqs", C, "libvirt_domain_block_read_requests", "Read requests", 1),
    ("rd.bytes", C, "libvirt_domain_block_read_bytes", "Bytes read", 1),
    ("rd.times", C, "libvirt_domain_block_read_time_seconds", "Time spent reading", NANOSECONDS),
    ("wr.reqs", C, "libvirt_domain_block_write_requests", "Write requests", 1),
    ("wr.bytes", C, "libvirt_domain_block_write_bytes", "Bytes written", 1),
    ("wr.times", C, "libvirt_domain_block_write_time_seconds", "Time spent writing", NANOSECONDS),
    ("fl.reqs", C, "libvirt_domain_block_flush_requests", "Flush requests", 1),
    ("fl.times", C, "libvirt_domain_block_flush_time_seconds", "Time spent flushing", NANOSECONDS),
    ("errors", C, "libvirt_domain_block_errors", "I/O errors, where the hypervisor reports them", 1),
    ("capacity", G, "libvirt_domain_block_capacity_bytes", "Size of the disk as the guest sees it", 1),
    ("allocation", G, "libvirt_domain_block_allocation_bytes", "Host bytes the image of the disk uses", 1),
    ("physical", G, "libvirt_domain_block_physical_bytes", "Size of the disk's image on the host", 1),
])
# fmt: on

SPECS = (INFO, *(spec for _, spec in FIELDS))


def collect(state: State) -> Families:
    families = Families()
    for entry in state.domains:
        for disk in entry.disks_with_media:
            families.add(INFO, (entry.name, disk.target, disk.path, disk.bus, disk.driver_type), 1)
        sample = state.store.sample(SamplerName.BLOCK, entry.subject)
        if sample is None:
            continue
        for device, stats in devices(sample.values).get("block", ()):
            for field, spec in FIELDS:
                value = stats.get(field)
                if value is not None and value >= 0:  # libvirt reports -1 for "not supported"
                    families.add(spec, (entry.name, device), value)
    return families

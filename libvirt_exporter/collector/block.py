"""Per-disk families: I/O counters from the `block` sampler, sizes from the `block_info` sampler (a
slower cadence), and each disk's identity from the domain XML."""

from __future__ import annotations

from libvirt_exporter.calls import Domain
from libvirt_exporter.collector.families import NANOSECONDS, Families, Kind, Spec, fields, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.domain_xml import Disk
from libvirt_exporter.inventory import DomainEntry
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.stat_keys import devices

DD = ("domain", "device")

INFO = gauge(
    "libvirt_domain_block_info",
    "A disk of the domain, from its XML, with value 1: type says where its medium is (file, block, "
    "network, volume); a network disk's path is its image's or LUN's name and protocol says which "
    "(rbd, iscsi, gluster, nbd, ...).",
    ("domain", "device", "path", "bus", "driver_type", "type", "protocol"),
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

_DIRECTIONS = {"total": "reads and writes together", "read": "reads", "write": "writes"}
_UNITS = {"bytes": "bytes", "iops": "requests"}


def _limit(field: str, name: str, help: str) -> tuple[str, Spec]:
    source = f"domain XML `<iotune><{field}>`"
    return field, gauge(name, f"{help}, from the domain XML.", DD, source=source, collector="block")


def _limits() -> tuple[tuple[str, Spec], ...]:
    """The throttles of a disk's <iotune>, per direction and unit: the limit, the burst limit and
    how long a burst may last; then the size of an I/O counted as one request."""
    limits = []
    for direction, of in _DIRECTIONS.items():
        for what, unit in _UNITS.items():
            field = f"{direction}_{what}_sec"
            name = f"libvirt_domain_block_limit_{direction}_{unit}_per_second"
            burst = f"libvirt_domain_block_limit_burst_{direction}_{unit}"
            limits.append(_limit(field, name, f"The disk's throttle on {of}, in {unit} per second"))
            help = f"The disk's throttle on {of} during a burst, in {unit} per second"
            limits.append(_limit(f"{field}_max", f"{burst}_per_second", help))
            help = f"How long a burst of {of} may run at the burst throttle on {unit}"
            limits.append(_limit(f"{field}_max_length", f"{burst}_duration_seconds", help))
    help = "The size of an I/O that the disk's request throttles count as one request"
    limits.append(_limit("size_iops_sec", "libvirt_domain_block_limit_request_size_bytes", help))
    return tuple(limits)


LIMITS = _limits()
"""Read from the XML the survey already has, with no call of their own; a throttle not set (or
set to 0, none) has no series."""

SPECS = (INFO, *(spec for _, spec in COUNTERS), *SIZES.values(), *(spec for _, spec in LIMITS))


def _add_limits(families: Families, domain: str, disk: Disk) -> None:
    limits = dict(disk.iotune)
    for field, spec in LIMITS:
        if field in limits:
            families.add(spec, (domain, disk.target), limits[field])


def collect(state: State) -> Families:
    families = Families()
    for entry in state.domains:
        for disk in entry.disks_with_media:
            labels = (
                entry.name,
                disk.target,
                disk.path,
                disk.bus,
                disk.driver_type,
                disk.type,
                disk.protocol,
            )
            families.add(INFO, labels, 1)
            _add_limits(families, entry.name, disk)
        _add_counters(families, state, entry.name, entry.subject)
        _add_sizes(families, state, entry)
    return families


def _add_counters(families: Families, state: State, name: str, subject: Domain) -> None:
    sample = state.store.sample(SamplerName.BLOCK, subject)
    if sample is None:
        return
    for device, stats in devices(sample.values).get("block", ()):
        labels = (name, device)  # one tuple for all the disk's families
        for field, spec in COUNTERS:
            value = stats.get(field)
            if value is not None and value >= 0:  # libvirt reports -1 for "not supported"
                families.add(spec, labels, value)


def _add_sizes(families: Families, state: State, entry: DomainEntry) -> None:
    """The sizes of the disks the domain has now: a disk removed since they were read has none."""
    sample = state.store.sample(SamplerName.BLOCK_INFO, entry.subject)
    if sample is None:
        return
    for disk in entry.disks_with_media:
        labels = (entry.name, disk.target)
        for field, spec in SIZES.items():
            value = sample.values.get(f"{disk.target}.{field}")
            if value is not None:
                families.add(spec, labels, value)

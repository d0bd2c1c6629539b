"""What the guest agent reports from inside each VM, from the `guest` sampler (off by default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libvirt_exporter.collector.families import Families, Kind, fields, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.stat_keys import Device, devices

SOURCE = "virDomainGetGuestInfo"
FS_LABELS = ("domain", "mountpoint", "fstype", "device")
PSEUDO_FILE_SYSTEMS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts", "devtmpfs",
    "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "proc", "procfs", "pstore",
    "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "erofs", "sysfs", "tracefs", "tmpfs", "ramfs",
})  # fmt: skip
"""Left out: node_exporter's default exclusions, and memory-backed ones. The agent reports only
mounts of a device already; an image mounted read-only (a CD, a snap) is always full, which would
only make the file-system alert fire."""

# fmt: off
FILESYSTEM_FIELDS = fields("guest", FS_LABELS, [  # fs.N.<field>
    ("total-bytes", Kind.GAUGE, "libvirt_domain_guest_filesystem_size_bytes",
     "Size of the guest's file system that its users may fill, as the guest agent reports it: "
     "used plus available bytes (df's Used + Available; blocks reserved for root left out)", 1),
    ("used-bytes", Kind.GAUGE, "libvirt_domain_guest_filesystem_used_bytes",
     "Bytes used on the guest's file system, as the guest agent reports it", 1),
])
# fmt: on
OS_INFO = gauge(
    "libvirt_domain_guest_os_info",
    "The guest's OS and kernel, as its guest agent reports them, with value 1 (last sample).",
    (
        "domain",
        "id",
        "name",
        "pretty_name",
        "version",
        "version_id",
        "machine",
        "kernel_release",
        "kernel_version",
    ),
    source=f"{SOURCE} os.*",
    collector="guest",
)  # fmt: skip
HOSTNAME_INFO = gauge(
    "libvirt_domain_guest_hostname_info",
    "The guest's host name, as its guest agent reports it, with value 1 (last sample).",
    ("domain", "hostname"),
    source=f"{SOURCE} hostname",
    collector="guest",
)
USERS = gauge(
    "libvirt_domain_guest_users",
    "Users logged in to the guest, as its guest agent reports them (last sample).",
    ("domain",),
    source=f"{SOURCE} user.count",
    collector="guest",
)
TIMEZONE_INFO = gauge(
    "libvirt_domain_guest_timezone_info",
    "The guest's time zone, as its guest agent reports it, with value 1 (last sample).",
    ("domain", "timezone"),
    source=f"{SOURCE} timezone.name",
    collector="guest",
)
TIMEZONE_OFFSET = gauge(
    "libvirt_domain_guest_timezone_offset_seconds",
    "Offset of the guest's time zone from UTC, as its guest agent reports it (last sample).",
    ("domain",),
    source=f"{SOURCE} timezone.offset",
    collector="guest",
)
ADDRESS_INFO = gauge(
    "libvirt_domain_guest_interface_address_info",
    "An address of an interface inside the guest, as its guest agent reports it (what "
    "virDomainInterfaceAddresses with the agent as source gives), with value 1 (last sample).",
    ("domain", "interface", "hwaddr", "type", "address", "prefix"),
    source=f"{SOURCE} if.*",
    collector="guest",
)
SPECS = (*(spec for _, spec in FILESYSTEM_FIELDS), OS_INFO, HOSTNAME_INFO, USERS, TIMEZONE_INFO,
         TIMEZONE_OFFSET, ADDRESS_INFO)  # fmt: skip

_OS_FIELDS = ("id", "name", "pretty-name", "version", "version-id", "machine", "kernel-release",
              "kernel-version")  # fmt: skip


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _add_file_systems(families: Families, domain: str, file_systems: list[Device]) -> None:
    for device, fs in file_systems:
        if fs.get("fstype") in PSEUDO_FILE_SYSTEMS:
            continue
        labels = (domain, _text(fs.get("mountpoint")), _text(fs.get("fstype")), device)
        for field, spec in FILESYSTEM_FIELDS:
            if (value := fs.get(field)) is not None:
                families.add(spec, labels, value)


def _add_addresses(families: Families, domain: str, interfaces: list[Device]) -> None:
    for name, interface in interfaces:
        hwaddr = _text(interface.get("hwaddr"))
        for number in range(int(interface.get("addr.count", 0))):
            address = (_text(interface.get(f"addr.{number}.{field}")) for field in ("type", "addr", "prefix"))
            families.add(ADDRESS_INFO, (domain, name, hwaddr, *address), 1)


def _add_identity(families: Families, domain: str, info: Mapping[str, Any]) -> None:
    if any(f"os.{field}" in info for field in _OS_FIELDS):
        families.add(OS_INFO, (domain, *(_text(info.get(f"os.{field}")) for field in _OS_FIELDS)), 1)
    if "hostname" in info:
        families.add(HOSTNAME_INFO, (domain, _text(info["hostname"])), 1)
    if "user.count" in info:
        families.add(USERS, (domain,), info["user.count"])
    if "timezone.name" in info:
        families.add(TIMEZONE_INFO, (domain, _text(info["timezone.name"])), 1)
    if "timezone.offset" in info:
        families.add(TIMEZONE_OFFSET, (domain,), info["timezone.offset"])


def collect(state: State) -> Families:
    families = Families()
    for entry in state.domains:
        sample = state.store.sample(SamplerName.GUEST, entry.subject)
        if sample is None:
            continue
        by_group = devices(sample.values)
        _add_file_systems(families, entry.name, by_group.get("fs", []))
        _add_addresses(families, entry.name, by_group.get("if", []))
        _add_identity(families, entry.name, sample.values)
    return families

"""What the exporter needs from a domain's XML: identity, disks, network interfaces, guest agent.

The XML is read once when a domain appears or changes (lifecycle and device events), never on
every cycle. It is parsed with defusedxml: a domain's metadata can be written by tenants, and
an exporter must not be the place where an entity-expansion bomb goes off.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET


@dataclass(frozen=True)
class Disk:
    target: str
    path: str
    bus: str
    driver_type: str
    iotune: tuple[tuple[str, int], ...] = ()
    """The numeric settings of its <iotune> (the throttles, their bursts, how long a burst may last,
    the size of an I/O counted as one request), as (element, value) pairs; libvirt writes only
    those that are set."""
    type: str = ""
    """Where its medium is: `file`, `block`, `network` (Ceph RBD, iSCSI, Gluster, NBD: `path` is
    then the image's or LUN's name, with no host), `volume` (a pool's: `path` is pool/volume)."""
    protocol: str = ""
    """A network disk's protocol (`rbd`, `iscsi`, `gluster`, `nbd`, ...); empty for the others."""


@dataclass(frozen=True)
class Interface:
    target: str
    mac: str
    source: str
    model: str
    type: str = ""
    """`bridge`, `network`, `direct` (macvtap), `ethernet`, `hostdev` (an SR-IOV VF passed through:
    no host-side device, its source a PCI address), `vhostuser`, `user`, ..."""
    alias: str = ""
    """libvirt's name for the device (`net0`, `hostdev0`): the only one an interface with no
    host-side device has."""

    @property
    def device(self) -> str:
        """Its host-side device, else libvirt's alias: a hostdev NIC has no target device."""
        return self.target or self.alias


@dataclass(frozen=True)
class OpenStackInstance:
    """What OpenStack Nova writes into a domain's <metadata> about the instance."""

    instance_name: str
    flavor: str
    project_id: str
    project_name: str
    user_id: str
    user_name: str


@dataclass(frozen=True)
class MetadataField:
    """An element's text or an attribute in a domain's <metadata>, exported as a label
    (`--libvirt.metadata`, parsed in config.py)."""

    namespace: str
    """The XML namespace (URI) of the application's element under <metadata>."""
    path: tuple[str, ...]
    """Element names from that element down (the first names it), each in the namespace."""
    attribute: str
    """An attribute of the last element; empty for the element's text."""
    label: str


@dataclass(frozen=True)
class DomainDescription:
    uuid: str
    os_type: str
    arch: str
    machine: str
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    openstack: OpenStackInstance | None = None
    title: str = ""
    description_text: str = ""
    """The domain's <description>, whitespace collapsed."""
    metadata: tuple[str, ...] = ()
    """The value of each field asked for, in their order; empty where absent."""
    vcpus_maximum: int = 0
    """The vCPUs it may have (`<vcpu>`), online or not."""
    vcpu_pins: tuple[tuple[int, str], ...] = ()
    """Each pinned vCPU and the host CPUs it may run on, as libvirt writes a cpuset (`0-3,8`)."""
    iothreads: bool = False
    """It defines I/O threads (`<iothreads>`, `<iothreadids>`): only then has its QEMU any."""
    agent: str | None = None
    """The state of its QEMU guest-agent channel as libvirt writes it (`connected`, `disconnected`,
    empty while unknown); None when it has none."""

    @cached_property
    def disks_with_media(self) -> tuple[Disk, ...]:
        """The disks with statistics to read: an empty CD-ROM drive has none. Kept with the
        description, which is parsed once per XML read, since every cycle asks for them."""
        return tuple(disk for disk in self.disks if disk.target and disk.path)

    @property
    def agent_connected(self) -> bool:
        """An agent answers in the guest, as far as libvirt knows without asking it."""
        return self.agent == "connected"


AGENT_CHANNEL = "org.qemu.guest_agent.0"


def _attr(element: Element | None, name: str) -> str:
    return "" if element is None else element.get(name, "")


def _disk_source(disk: Element) -> str:
    """A disk's source is a file, a block device, a network volume or a pool volume."""
    source = disk.find("source")
    if source is None:
        return ""
    for attribute in ("file", "dev", "name", "volume", "dir"):
        if source.get(attribute):
            if attribute == "volume":
                return f"{source.get('pool', '')}/{source.get('volume')}"
            return source.get(attribute, "")
    return ""


def _iotune(disk: Element) -> tuple[tuple[str, int], ...]:
    """The settings that are positive whole numbers (0 means no limit; `group_name` is a name)."""
    iotune = disk.find("iotune")
    found = ((child.tag, (child.text or "").strip()) for child in (iotune if iotune is not None else ()))
    return tuple((tag, int(text)) for tag, text in found if text.isdigit() and int(text) > 0)


def _disk(disk: Element) -> Disk:
    target = disk.find("target")
    return Disk(
        target=_attr(target, "dev"),
        path=_disk_source(disk),
        bus=_attr(target, "bus"),
        driver_type=_attr(disk.find("driver"), "type"),
        iotune=_iotune(disk),
        type=disk.get("type", ""),
        protocol=_attr(disk.find("source"), "protocol"),
    )


def _interface_source(interface: Element) -> str:
    """A bridge, network, host device or name; for a hostdev NIC, the PCI address of its VF."""
    source = interface.find("source")
    for attribute in ("bridge", "network", "dev", "name"):
        if source is not None and source.get(attribute):
            return source.get(attribute, "")
    address = source.find("address") if source is not None else None
    return _pci_address(address) if address is not None and address.get("type") == "pci" else ""


def _pci_address(address: Element) -> str:
    """`0000:03:10.2`, as lspci and sysfs write it, from libvirt's hexadecimal attributes."""
    try:
        parts = [int(address.get(name, "0"), 16) for name in ("domain", "bus", "slot", "function")]
    except ValueError:
        return ""
    domain, bus, slot, function = parts
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _interface(interface: Element) -> Interface:
    return Interface(
        target=_attr(interface.find("target"), "dev"),
        mac=_attr(interface.find("mac"), "address"),
        source=_interface_source(interface),
        model=_attr(interface.find("model"), "type"),
        type=interface.get("type", ""),
        alias=_attr(interface.find("alias"), "name"),
    )


MAX_METADATA_VALUE = 256
"""Characters of a Nova metadata value kept for a label: tenants choose instance and project
names, and a name of a megabyte would make every series of its `*_info` family as long. Nova's own
columns hold 255 characters."""


def _bounded(text: str) -> str:
    return text[:MAX_METADATA_VALUE]


def _label_text(text: str | None) -> str:
    """Free text as a label value: on one line, whitespace runs as one space, bounded."""
    return _bounded(" ".join((text or "").split()))


def _in(namespace: str, element: Element, name: str) -> bool:
    """Children of an application's element are in its namespace, or in none (unprefixed)."""
    return element.tag in (f"{{{namespace}}}{name}", name)


def _metadata_value(metadata: Element | None, field: MetadataField) -> str:
    """The first match of the field's path; empty when it is absent."""
    if metadata is None:
        return ""
    root, *below = field.path
    found = next((e for e in metadata if e.tag == f"{{{field.namespace}}}{root}"), None)
    for name in below:
        if found is None:
            return ""
        found = next((child for child in found if _in(field.namespace, child, name)), None)
    if found is None:
        return ""
    if field.attribute:
        qualified = f"{{{field.namespace}}}{field.attribute}"
        return _label_text(found.get(field.attribute, found.get(qualified)))
    return _label_text(found.text)


NOVA_NAMESPACE_PREFIX = "{http://openstack.org/xmlns/libvirt/nova/"


def _nova(tag: str, name: str) -> bool:
    """Nova's namespace carries a version (1.0, 1.1, 1.2): match any of them."""
    return tag.startswith(NOVA_NAMESPACE_PREFIX) and tag.endswith("}" + name)


def _nova_child(parent: Element, name: str) -> Element | None:
    return next((child for child in parent if _nova(child.tag, name)), None)


def _openstack(root: Element) -> OpenStackInstance | None:
    metadata = root.find("metadata")
    instance = _nova_child(metadata, "instance") if metadata is not None else None
    if instance is None:
        return None
    name = _nova_child(instance, "name")
    owner = _nova_child(instance, "owner")
    user = _nova_child(owner, "user") if owner is not None else None
    project = _nova_child(owner, "project") if owner is not None else None
    return OpenStackInstance(
        instance_name=_bounded((name.text or "").strip() if name is not None else ""),
        flavor=_bounded(_attr(_nova_child(instance, "flavor"), "name")),
        project_id=_bounded(_attr(project, "uuid")),
        project_name=_bounded((project.text or "").strip() if project is not None else ""),
        user_id=_bounded(_attr(user, "uuid")),
        user_name=_bounded((user.text or "").strip() if user is not None else ""),
    )


MAX_VCPUS = 16384
"""More than libvirt lets a QEMU domain have: a bound on the series a malformed count could make."""


def _vcpus_maximum(root: Element) -> int:
    text = (root.findtext("vcpu") or "").strip()
    return int(text) if text.isdigit() else 0


def _vcpu_pins(root: Element, count: int) -> tuple[tuple[int, str], ...]:
    """From <cputune><vcpupin vcpu= cpuset=>, else the domain-wide <vcpu cpuset=>, per vCPU of
    the `count`; what virDomainGetVcpuPinInfo answers, without asking it
    (docs/libvirt-behaviour.md). A vCPU free to run on any host CPU is left out."""
    everywhere = _bounded(_attr(root.find("vcpu"), "cpuset"))
    pinned = {}
    for pin in root.findall("cputune/vcpupin"):
        number, cpuset = pin.get("vcpu", ""), pin.get("cpuset", "")
        if number.isdigit() and cpuset:
            pinned[int(number)] = _bounded(cpuset)
    pins = ((number, pinned.get(number, everywhere)) for number in range(min(count, MAX_VCPUS)))
    return tuple((number, cpuset) for number, cpuset in pins if cpuset)


def _defines_iothreads(root: Element) -> bool:
    count = (root.findtext("iothreads") or "").strip()
    return (count.isdigit() and int(count) > 0) or root.find("iothreadids/iothread") is not None


def _agent_state(devices: Element | None) -> str | None:
    """From <channel><target type='virtio' name='org.qemu.guest_agent.0' state=...>: libvirt
    updates the state when QEMU sees the guest open or close the channel's port."""
    for target in devices.findall("channel/target") if devices is not None else ():
        if target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            return target.get("state", "")
    return None


def parse_domain_xml(xml: str, metadata: tuple[MetadataField, ...] = ()) -> DomainDescription:
    """The description, with the value of each `metadata` field. Raises
    `xml.etree.ElementTree.ParseError` or a defusedxml error on malformed or hostile XML."""
    root = SafeET.fromstring(xml)
    os_type = root.find("os/type")
    vcpus_maximum = _vcpus_maximum(root)
    devices = root.find("devices")
    return DomainDescription(
        uuid=(root.findtext("uuid") or "").strip(),
        os_type=(os_type.text or "").strip() if os_type is not None else "",
        arch=_attr(os_type, "arch"),
        machine=_attr(os_type, "machine"),
        disks=tuple(_disk(d) for d in devices.findall("disk")) if devices is not None else (),
        interfaces=(
            tuple(_interface(i) for i in devices.findall("interface")) if devices is not None else ()
        ),
        openstack=_openstack(root),
        title=_label_text(root.findtext("title")),
        description_text=_label_text(root.findtext("description")),
        metadata=tuple(_metadata_value(root.find("metadata"), field) for field in metadata),
        vcpus_maximum=vcpus_maximum,
        vcpu_pins=_vcpu_pins(root, vcpus_maximum),
        iothreads=_defines_iothreads(root),
        agent=_agent_state(devices),
    )

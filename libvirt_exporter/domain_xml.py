"""What the exporter needs from a domain's XML: identity, disks and network interfaces.

The XML is read once when a domain appears or changes (lifecycle and device events), never on
every cycle. It is parsed with defusedxml: a domain's metadata can be written by tenants, and
an exporter must not be the place where an entity-expansion bomb goes off.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET


@dataclass(frozen=True)
class Disk:
    target: str
    path: str
    device: str
    bus: str
    driver_type: str


@dataclass(frozen=True)
class Interface:
    target: str
    mac: str
    source: str
    model: str


@dataclass(frozen=True)
class DomainDescription:
    uuid: str
    os_type: str
    arch: str
    machine: str
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]


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


def _disk(disk: Element) -> Disk:
    target = disk.find("target")
    return Disk(
        target=_attr(target, "dev"),
        path=_disk_source(disk),
        device=disk.get("device", "disk"),
        bus=_attr(target, "bus"),
        driver_type=_attr(disk.find("driver"), "type"),
    )


def _interface_source(interface: Element) -> str:
    source = interface.find("source")
    for attribute in ("bridge", "network", "dev", "name"):
        if source is not None and source.get(attribute):
            return source.get(attribute, "")
    return ""


def _interface(interface: Element) -> Interface:
    return Interface(
        target=_attr(interface.find("target"), "dev"),
        mac=_attr(interface.find("mac"), "address"),
        source=_interface_source(interface),
        model=_attr(interface.find("model"), "type"),
    )


def parse_domain_xml(xml: str) -> DomainDescription:
    """Raises `xml.etree.ElementTree.ParseError` or a defusedxml error on malformed or hostile XML."""
    root = SafeET.fromstring(xml)
    os_type = root.find("os/type")
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
    )

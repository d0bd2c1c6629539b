"""Domain XML: the facts the exporter labels series with, and no trust in hostile XML."""

from __future__ import annotations

import pytest

from libvirt_exporter.domain_xml import (
    MAX_METADATA_VALUE,
    Disk,
    Interface,
    MetadataField,
    OpenStackInstance,
    parse_domain_xml,
)

XML = """
<domain type='kvm'>
  <name>web1</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98a23fa0</uuid>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:58'/><source bridge='br0'/>
      <target dev='vnet3'/><model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def test_identity_disks_and_interfaces() -> None:
    description = parse_domain_xml(XML)
    assert (description.uuid, description.os_type, description.arch, description.machine) == (
        "4dea22b3-1d52-d8f3-2516-782e98a23fa0",
        "hvm",
        "x86_64",
        "pc-q35-7.2",
    )
    assert description.disks == (
        Disk("vda", "/var/lib/libvirt/images/web1.qcow2", "virtio", "qcow2", type="file"),
        Disk("vdb", "pool/web1-data", "virtio", "raw", type="network", protocol="rbd"),
        Disk("sda", "", "sata", "", type="file"),
    )
    assert description.interfaces == (
        Interface("vnet3", "52:54:00:6b:3c:58", "br0", "virtio", type="bridge"),
    )


def test_network_disks_and_nics_without_a_host_side_device_say_what_they_are() -> None:
    xml = """<domain><devices>
      <disk type='network' device='disk'>
        <source protocol='iscsi' name='iqn.2013-07.com.example:storage/1'>
          <host name='10.0.0.5' port='3260'/></source>
        <target dev='sdb' bus='scsi'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='gluster' name='volume/images/db.img'><host name='gluster1'/></source>
        <target dev='vdc' bus='virtio'/></disk>
      <disk type='volume' device='disk'><source pool='ssd' volume='db-data'/>
        <target dev='vdd' bus='virtio'/></disk>
      <interface type='hostdev' managed='yes'>
        <mac address='52:54:00:6d:90:02'/><driver name='vfio'/>
        <source><address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source>
        <alias name='hostdev0'/></interface>
      <interface type='network'><mac address='52:54:00:6d:90:03'/>
        <source network='sriov-pool'/><alias name='hostdev1'/></interface>
      <interface type='bridge'><mac address='52:54:00:6d:90:04'/><source bridge='br0'/>
        <target dev='vnet7'/><model type='virtio'/><alias name='net0'/></interface>
    </devices></domain>"""
    description = parse_domain_xml(xml)
    assert [(d.target, d.path, d.type, d.protocol) for d in description.disks] == [
        ("sdb", "iqn.2013-07.com.example:storage/1", "network", "iscsi"),
        ("vdc", "volume/images/db.img", "network", "gluster"),
        ("vdd", "ssd/db-data", "volume", ""),
    ]
    assert [(i.device, i.source, i.type) for i in description.interfaces] == [
        ("hostdev0", "0000:03:10.2", "hostdev"),
        ("hostdev1", "sriov-pool", "network"),
        ("vnet7", "br0", "bridge"),
    ]


def test_entity_expansion_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><domain><name>&b;</name></domain>'
    )
    with pytest.raises(Exception, match=r"(?i)entit"):
        parse_domain_xml(bomb)


def test_nova_metadata_of_any_version_is_read() -> None:
    nova = (
        "<domain><uuid>1f0e</uuid><metadata>"
        '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.2">'
        '<nova:name>db-7</nova:name><nova:flavor name="m1.small"/>'
        '<nova:owner><nova:user uuid="u-1">bob</nova:user>'
        '<nova:project uuid="p-1">ops</nova:project></nova:owner>'
        "</nova:instance></metadata></domain>"
    )
    assert parse_domain_xml(nova).openstack == OpenStackInstance(
        "db-7", "m1.small", "p-1", "ops", "u-1", "bob"
    )
    assert parse_domain_xml(XML).openstack is None


def test_a_tenants_huge_metadata_value_is_cut_to_a_label_sized_prefix() -> None:
    """A name of a megabyte would otherwise be repeated in every series of its family."""
    huge = "x" * 1_000_000
    nova = (
        "<domain><uuid>1f0e</uuid><metadata>"
        '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">'
        f'<nova:name>{huge}</nova:name><nova:flavor name="{huge}"/>'
        f'<nova:owner><nova:user uuid="u-1">{huge}</nova:user>'
        f'<nova:project uuid="{huge}">ops</nova:project></nova:owner>'
        "</nova:instance></metadata></domain>"
    )
    openstack = parse_domain_xml(nova).openstack
    assert openstack is not None
    assert openstack.instance_name == "x" * MAX_METADATA_VALUE
    assert openstack.flavor == openstack.user_name == openstack.project_id == "x" * MAX_METADATA_VALUE
    assert (openstack.user_id, openstack.project_name) == ("u-1", "ops")


def test_a_disk_s_throttles_are_read_and_what_sets_no_limit_is_left_out() -> None:
    xml = """<domain><devices><disk type='file' device='disk'>
      <source file='/images/a.qcow2'/><target dev='vda' bus='virtio'/>
      <iotune>
        <total_bytes_sec>52428800</total_bytes_sec>
        <read_iops_sec>400</read_iops_sec>
        <write_iops_sec>0</write_iops_sec>
        <write_iops_sec_max>1000</write_iops_sec_max>
        <write_iops_sec_max_length>10</write_iops_sec_max_length>
        <group_name>tenant-7</group_name>
        <size_iops_sec>-1</size_iops_sec>
      </iotune></disk></devices></domain>"""
    (disk,) = parse_domain_xml(xml).disks
    assert disk.iotune == (
        ("total_bytes_sec", 52_428_800),
        ("read_iops_sec", 400),
        ("write_iops_sec_max", 1000),
        ("write_iops_sec_max_length", 10),
    )
    assert parse_domain_xml(XML).disks[0].iotune == ()


OPS = "https://example.com/ns/ops/1.0"


def test_metadata_fields_title_and_description_are_read_as_one_line_each() -> None:
    xml = f"""<domain><title>Shop front</title>
      <description>Serves the shop.
        Owned by the web team.</description>
      <metadata>
        <ops:service xmlns:ops="{OPS}" ops:tier="gold" region="eu-1">
          <ops:team>  web  </ops:team>
          <ops:owner email="alice@example.com">Alice</ops:owner>
          <unprefixed>kept</unprefixed>
        </ops:service>
        <other:service xmlns:other="https://elsewhere.example/ns">
          <other:team>not ours</other:team>
        </other:service>
      </metadata></domain>"""
    fields = (
        MetadataField(OPS, ("service", "team"), "", "team"),
        MetadataField(OPS, ("service", "owner"), "email", "email"),
        MetadataField(OPS, ("service",), "tier", "tier"),
        MetadataField(OPS, ("service",), "region", "region"),
        MetadataField(OPS, ("service", "unprefixed"), "", "unprefixed"),
        MetadataField(OPS, ("service", "missing"), "", "missing"),
        MetadataField(OPS, ("elsewhere",), "", "elsewhere"),
    )
    description = parse_domain_xml(xml, fields)
    assert description.title == "Shop front"
    assert description.description_text == "Serves the shop. Owned by the web team."
    assert description.metadata == ("web", "alice@example.com", "gold", "eu-1", "kept", "", "")
    assert parse_domain_xml(XML, fields).metadata == ("",) * len(fields)


def test_a_tenants_hostile_metadata_stays_one_bounded_line() -> None:
    huge = "y" * 100_000
    xml = (
        f"<domain><title>{huge}</title><description>a\nb\r\nc\td</description><metadata>"
        f'<ops:service xmlns:ops="{OPS}"><ops:team>"}} 1\nevil{{a="b"}} 1&lt;/x&gt;</ops:team>'
        f"<ops:owner>{huge}</ops:owner></ops:service></metadata></domain>"
    )
    fields = (
        MetadataField(OPS, ("service", "team"), "", "team"),
        MetadataField(OPS, ("service", "owner"), "", "owner"),
    )
    description = parse_domain_xml(xml, fields)
    assert description.title == "y" * MAX_METADATA_VALUE
    assert description.description_text == "a b c d"
    assert description.metadata == ('"} 1 evil{a="b"} 1</x>', "y" * MAX_METADATA_VALUE)


def test_vcpu_pinning_is_read_per_vcpu_with_the_domain_wide_cpuset_for_the_others() -> None:
    xml = """<domain><vcpu placement='static' current='3' cpuset='0-7'>4</vcpu>
      <cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3-4,6'/>
      <emulatorpin cpuset='0-1'/></cputune></domain>"""
    assert parse_domain_xml(xml).vcpu_pins == ((0, "2"), (1, "3-4,6"), (2, "0-7"), (3, "0-7"))
    assert parse_domain_xml(xml).vcpus_maximum == 4, "the vCPUs it may have, online (current) or not"
    unpinned = (
        "<domain><vcpu placement='static'>2</vcpu><cputune><vcpupin vcpu='1' cpuset='5'/></cputune></domain>"
    )
    assert parse_domain_xml(unpinned).vcpu_pins == ((1, "5"),), "a vCPU free to run anywhere has none"
    assert parse_domain_xml(XML).vcpu_pins == ()

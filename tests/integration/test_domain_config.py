"""What a VM's configuration shows, on the real libvirtd: I/O throttles, metadata, title and
description, vCPU pinning, the memory the guest uses, and a network disk; and the measurement
that vCPU pinning read from the XML is what virDomainGetVcpuPinInfo answers.

One VM has all of them: it boots a real kernel (guest.py) so that its balloon driver reports the
guest's figures, and its second disk is a network disk, an NBD export that qemu-nbd serves on
127.0.0.1. The test then changes the throttle, the pinning and the metadata of the running VM and
sees each change exported, read again from the XML after libvirt's event.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from libvirt_exporter.domain_xml import parse_domain_xml
from tests.exposition import Series, assert_promtool_accepts, value
from tests.integration.conftest import running_guest_vm
from tests.integration.guest import GuestConfig, GuestKernel
from tests.integration.test_real_libvirt import SCHEDULING_SLACK, scrape_until
from tests.integration.vms import (
    DEFAULT_PREFIX,
    INTERVAL,
    Exporter,
    create_disk,
    destroy_in_parallel,
    domain_xml,
    find_free_port,
    qemu_pid_of,
    wait_for,
)
from tests.integration.vms import FAST_SAMPLING as ARGS

OPS = "https://example.com/ns/ops/1.0"
METADATA_FLAG = f"--libvirt.metadata={OPS}=service/team,owner:service/owner/@email,service/@tier"
IOTUNE = {
    "total_bytes_sec": 10 * 2**20,
    "read_iops_sec": 400,
    "write_iops_sec": 200,
    "write_iops_sec_max": 1000,
    "write_iops_sec_max_length": 10,
    "size_iops_sec": 16384,
}
EXPORT = "data"
CHANGE_BOUND = 2 * INTERVAL + SCHEDULING_SLACK
"""A change is read at the survey that follows its event at once; two rounds at most."""


@contextlib.contextmanager
def nbd_server(image: Path) -> Iterator[int]:
    """qemu-nbd serving `image` as the export `data` on 127.0.0.1; yields its port."""
    port = find_free_port()
    process = subprocess.Popen(
        ["qemu-nbd", "--format=qcow2", "--bind=127.0.0.1", f"--port={port}", f"--export-name={EXPORT}",
         "--persistent", "--shared=8", str(image)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def listening() -> bool:
        assert process.poll() is None, "qemu-nbd exited"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, "qemu-nbd to listen")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _elements() -> str:
    return f"""
  <title>Shop database</title>
  <metadata>
    <ops:service xmlns:ops="{OPS}" tier="gold">
      <ops:team>db</ops:team>
      <ops:owner email="alice@example.com"/>
    </ops:service>
  </metadata>
  <cputune><vcpupin vcpu='0' cpuset='1'/></cputune>"""


def _network_disk(port: int) -> str:
    iotune = "".join(f"<{name}>{number}</{name}>" for name, number in IOTUNE.items())
    return f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='{EXPORT}'><host name='127.0.0.1' port='{port}'/></source>
      <target dev='vdb' bus='virtio'/>
      <iotune>{iotune}</iotune>
    </disk>"""


@pytest.fixture(scope="module")
def configured_vm(
    libvirt_uri: str, guest_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A running VM with a booting guest, throttles on an NBD disk, metadata and pinned vCPUs."""
    workdir = tmp_path_factory.mktemp("configured")
    image = workdir / "data.qcow2"
    create_disk(image)
    name = f"{DEFAULT_PREFIX}configured-{secrets.token_hex(3)}"
    with nbd_server(image) as port:
        config = GuestConfig(
            description="Holds the shop's orders. ",
            vcpus="<vcpu placement='static' cpuset='0-1'>2</vcpu>",
            devices=_network_disk(port),
            elements=_elements(),
        )
        with running_guest_vm(libvirt_uri, name, guest_kernel, workdir, config):
            yield name


def cpuset(text: str) -> set[int]:
    """The CPUs of a cpuset as libvirt writes it (`0-1,3`)."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def exported_pins(series: Series, domain: str) -> dict[int, set[int]]:
    return {
        int(dict(labels)["vcpu"]): cpuset(dict(labels)["cpus"])
        for name, labels in series
        if name == "libvirt_domain_vcpu_pinning_info" and dict(labels)["domain"] == domain
    }


def pins_by_the_api(dom: libvirt.virDomain) -> dict[int, set[int]]:
    """virDomainGetVcpuPinInfo, the call the XML spares us."""
    return {vcpu: {cpu for cpu, on in enumerate(cpus) if on} for vcpu, cpus in enumerate(dom.vcpuPinInfo(0))}


def metadata_labels(series: Series, domain: str) -> dict[str, str]:
    found = [dict(labels) for name, labels in series if name == "libvirt_domain_metadata_info"]
    mine = [labels for labels in found if labels["domain"] == domain]
    assert len(mine) == 1, found
    return mine[0]


def limit(series: Series, domain: str, name: str) -> float | None:
    return value(series, f"libvirt_domain_block_limit_{name}", domain=domain, device="vdb")


def test_a_configured_vm_exports_each_family_with_the_right_values_and_its_changes(
    configured_vm: str, run_exporter: Callable[..., Exporter], libvirt_conn: libvirt.virConnect
) -> None:
    exporter = run_exporter(*ARGS, METADATA_FLAG)
    vm = configured_vm

    def complete(s: Series) -> bool:
        return all(
            found is not None
            for found in (
                value(s, "libvirt_domain_memory_used_bytes", domain=vm),
                value(s, "libvirt_domain_block_capacity_bytes", domain=vm, device="vdb"),
                limit(s, vm, "total_bytes_per_second"),
            )
        )

    series, _ = scrape_until(exporter, complete, timeout=90)  # the guest boots under emulation

    assert limit(series, vm, "total_bytes_per_second") == 10 * 2**20
    assert limit(series, vm, "read_requests_per_second") == 400
    assert limit(series, vm, "write_requests_per_second") == 200
    assert limit(series, vm, "burst_write_requests_per_second") == 1000
    assert limit(series, vm, "burst_write_requests_duration_seconds") == 10
    assert limit(series, vm, "request_size_bytes") == 16384
    assert limit(series, vm, "read_bytes_per_second") is None, "a throttle not set has no series"

    labels = metadata_labels(series, vm)
    assert labels["title"] == "Shop database"
    assert labels["description"].startswith("Holds the shop's orders. owner pid ")
    assert (labels["team"], labels["owner"], labels["tier"]) == ("db", "alice@example.com", "gold")

    dom = libvirt_conn.lookupByName(vm)
    assert exported_pins(series, vm) == {0: {1}, 1: {0, 1}} == pins_by_the_api(dom)

    available = value(series, "libvirt_domain_memory_available_bytes", domain=vm)
    usable = value(series, "libvirt_domain_memory_usable_bytes", domain=vm)
    assert available is not None and usable is not None
    assert value(series, "libvirt_domain_memory_used_bytes", domain=vm) == available - usable > 0

    disk = {"domain": vm, "device": "vdb"}
    info = {"path": EXPORT, "bus": "virtio", "driver_type": "raw", "type": "network", "protocol": "nbd"}
    assert value(series, "libvirt_domain_block_info", **disk, **info) == 1
    assert value(series, "libvirt_domain_block_capacity_bytes", **disk) == 64 * 2**20
    assert value(series, "libvirt_domain_sample_errors_total", domain=vm, sampler="block") == 0

    assert_promtool_accepts(exporter.scrape())

    # Changed on the running VM: libvirt's tunable and metadata events make the XML be read again.
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE

    dom.setBlockIoTune("vdb", {"total_bytes_sec": 20 * 2**20}, live)
    _, took = scrape_until(exporter, lambda s: limit(s, vm, "total_bytes_per_second") == 20 * 2**20, 30)
    assert took <= CHANGE_BOUND, f"the new throttle showed after {took:.1f} s"

    dom.pinVcpuFlags(0, (True, False), live)
    series, took = scrape_until(exporter, lambda s: exported_pins(s, vm).get(0) == {0}, 30)
    assert took <= CHANGE_BOUND, f"the new pinning showed after {took:.1f} s"
    assert exported_pins(series, vm) == pins_by_the_api(dom)

    element = "<service tier='silver'><team>db2</team></service>"
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, "ops", OPS, live)
    series, took = scrape_until(exporter, lambda s: metadata_labels(s, vm)["team"] == "db2", 30)
    assert took <= CHANGE_BOUND, f"the new metadata showed after {took:.1f} s"
    assert metadata_labels(series, vm)["tier"] == "silver"
    assert metadata_labels(series, vm)["owner"] == "", "the element set anew has no owner"


PINNINGS = {
    "none": ("<vcpu>2</vcpu>", ""),
    "domain-wide": ("<vcpu cpuset='1'>2</vcpu>", ""),
    "per-vcpu": ("<vcpu cpuset='0-1'>2</vcpu>", "<cputune><vcpupin vcpu='0' cpuset='0'/></cputune>"),
}


@pytest.fixture
def pinned_vms(libvirt_conn: libvirt.virConnect, tmp_path: Path) -> Iterator[dict[str, libvirt.virDomain]]:
    """Tiny VMs (no guest OS) with each kind of pinning: none, `<vcpu cpuset>`, `<vcpupin>`."""
    started: dict[str, libvirt.virDomain] = {}
    try:
        for kind, (vcpu, cputune) in PINNINGS.items():
            name = f"{DEFAULT_PREFIX}pin-{secrets.token_hex(3)}-{kind}"
            disk = tmp_path / f"{name}.qcow2"
            create_disk(disk)
            xml = domain_xml(name, 2, [disk], ["vda"], f"lvp{secrets.token_hex(3)}")
            xml = xml.replace("<vcpu>2</vcpu>", vcpu + cputune)
            started[kind] = libvirt_conn.createXML(xml, 0)
        yield started
    finally:
        destroy_in_parallel(list(started.values()))


def test_pinning_read_from_the_xml_is_what_virDomainGetVcpuPinInfo_answers(
    pinned_vms: dict[str, libvirt.virDomain],
) -> None:
    """The measurement behind reading pinning from the XML (docs/libvirt-behaviour.md): for every
    vCPU the XML pins, the same CPUs as the call; a vCPU it does not pin may run on every host
    CPU. Changed live, the XML follows at once; and the call answers for a stopped QEMU too."""
    host_cpus = set(range(pinned_vms["none"].connect().getInfo()[2]))

    def compare(dom: libvirt.virDomain) -> None:
        from_xml = dict(parse_domain_xml(dom.XMLDesc(0)).vcpu_pins)
        for vcpu, cpus in pins_by_the_api(dom).items():
            assert cpus == (cpuset(from_xml[vcpu]) if vcpu in from_xml else host_cpus), (vcpu, dom.name())

    for dom in pinned_vms.values():
        compare(dom)
    assert parse_domain_xml(pinned_vms["none"].XMLDesc(0)).vcpu_pins == ()
    assert dict(parse_domain_xml(pinned_vms["per-vcpu"].XMLDesc(0)).vcpu_pins) == {0: "0", 1: "0-1"}

    unpinned = pinned_vms["none"]
    unpinned.pinVcpuFlags(1, (True, False), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    compare(unpinned)
    assert parse_domain_xml(unpinned.XMLDesc(0)).vcpu_pins == ((1, "0"),)

    pid = qemu_pid_of(unpinned.name())
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        compare(unpinned)
        assert time.monotonic() - started < 1.0, "the call waited on the stopped QEMU"
    finally:
        os.kill(pid, signal.SIGCONT)

"""A VM that runs a real kernel, so that its balloon driver reports the guest's memory figures.

The tiny test VMs run no OS: their firmware finds nothing to boot, and the figures that only a
guest's balloon driver reports (usable, available and unused memory, swap, page faults) never
appear. This VM boots Debian's kernel with an initramfs made here: busybox as init, which loads
virtio_balloon and sleeps. It runs under pure emulation (domain type `qemu`): under this
machine's nested KVM that kernel printed nothing and never reached its init.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import libvirt

BALLOON_MODULES = ("virtio_pci", "virtio_balloon")
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
for module in {modules}; do /bin/busybox insmod /modules/$module.ko; done
while true; do /bin/busybox sleep 3600; done
"""


@dataclass(frozen=True)
class GuestKernel:
    kernel: Path
    initrd: Path


def _newest_kernel() -> tuple[Path, str]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    assert kernels, "no kernel in /boot: `make test` installs Debian's linux-image-amd64"
    return kernels[-1], kernels[-1].name.removeprefix("vmlinuz-")


def _load_order(version: str, wanted: tuple[str, ...]) -> list[Path]:
    """The modules `wanted` and what they depend on, dependencies first (from modules.dep)."""
    root = Path("/lib/modules") / version
    depends: dict[str, list[str]] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        depends[module] = needs.split()
    by_name = {Path(module).name.split(".ko")[0]: module for module in depends}
    ordered: list[str] = []

    def visit(module: str) -> None:
        for dependency in reversed(depends[module]):
            visit(dependency)
        if module not in ordered:
            ordered.append(module)

    for name in wanted:
        visit(by_name[name])
    return [root / module for module in ordered]


def build_guest_kernel(workdir: Path) -> GuestKernel:
    """Debian's newest kernel in /boot and an initramfs that loads its balloon driver."""
    kernel, version = _newest_kernel()
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: `make test` installs Debian's busybox-static"
    root = workdir / "initramfs"
    (root / "bin").mkdir(parents=True)
    (root / "modules").mkdir()
    (root / "proc").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    modules = _load_order(version, BALLOON_MODULES)
    for module in modules:
        assert module.suffix == ".ko", f"{module}: compressed modules would need unpacking first"
        shutil.copy(module, root / "modules" / module.name)
    init = root / "init"
    init.write_text(INIT.format(modules=" ".join(module.stem for module in modules)))
    init.chmod(0o755)
    initrd = workdir / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with initrd.open("wb") as archive:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=archive, check=True
        )
    return GuestKernel(kernel, initrd)


@dataclass(frozen=True)
class GuestConfig:
    """What a test adds to the guest VM's XML."""

    description: str = ""
    """Said before the owner's pid (which tells a later run that the VM is a leftover)."""
    vcpus: str = "<vcpu>1</vcpu>"
    devices: str = ""
    """More devices (disks)."""
    elements: str = ""
    """More elements of the domain (<title>, <metadata>, <cputune>)."""


def start_guest_vm(
    conn: libvirt.virConnect, name: str, guest: GuestKernel, config: GuestConfig = GuestConfig()
) -> libvirt.virDomain:
    """A transient VM booting `guest`, with a balloon that polls the guest every 2 s."""
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <description>{config.description}owner pid {os.getpid()}</description>
  <memory unit='MiB'>192</memory>
  {config.vcpus}
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{guest.kernel}</kernel>
    <initrd>{guest.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=0</cmdline>
  </os>
  <devices>
    <memballoon model='virtio'><stats period='2'/></memballoon>{config.devices}
  </devices>{config.elements}
</domain>"""
    return conn.createXML(xml, 0)

"""A VM that runs a real kernel with the QEMU guest agent, so that the guest's own figures show.

The tiny test VMs run no OS: their firmware finds nothing to boot, and the figures that only a
guest reports never appear: its balloon driver's memory figures (usable, available and unused
memory, swap, page faults), and what its guest agent answers (file systems, OS, users, addresses).
This VM boots Debian's kernel with an initramfs made here from Debian's packages: busybox as init,
which loads the virtio drivers, mounts an ext4 disk at /data, and starts `qemu-ga` (copied with the
shared libraries `ldd` finds). It runs under pure emulation (domain type `qemu`): under this
machine's nested KVM that kernel printed nothing and never reached its init.

Its init then serves commands on its serial console, which the host reaches on a unix socket
(`GuestConsole`): `df` prints what the guest itself reports of its file systems, `agent-stop` and
`agent-cont` send SIGSTOP and SIGCONT to qemu-ga, so that a test can freeze the agent inside the
guest while the VM runs on, and `agent-kill` and `agent-start` end it and start it again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

GUEST_MODULES = ("virtio_pci", "virtio_balloon", "virtio_console", "virtio_blk", "crc32c_generic", "ext4")
"""crc32c_generic: ext4 asks for the crc32c algorithm, which no modprobe in the guest would load."""
AGENT = Path("/usr/sbin/qemu-ga")
AGENT_CHANNEL = "org.qemu.guest_agent.0"
DATA_DISK_MIB = 48
DATA_FILL_MIB = 5
"""Written to the data disk at boot, so that its used bytes are not those of an empty file system."""
HOSTNAME = "lvexp-guest"
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {modules}; do insmod /modules/$module.ko; done
hostname {hostname}
ip link set lo up
mount -t ext4 /dev/vda /data && dd if=/dev/zero of=/data/fill bs=1M count={fill} 2>/dev/null && sync
for port in /sys/class/virtio-ports/*; do
  [ "$(cat $port/name)" = {channel} ] && agent=/dev/${{port##*/}}
done
start_agent() {{ /usr/sbin/qemu-ga -m virtio-serial -p $agent -t /run & pid=$!; }}
start_agent
stty -F /dev/ttyS0 raw -echo
while read -r command < /dev/ttyS0; do
  case $command in
    df) {{ echo "df-begin"; df -k /data; echo "df-end"; }} > /dev/ttyS0 ;;
    agent-stop) kill -STOP $pid; echo "agent-stopped" > /dev/ttyS0 ;;
    agent-cont) kill -CONT $pid; echo "agent-continued" > /dev/ttyS0 ;;
    agent-kill) kill $pid; wait $pid; echo "agent-killed" > /dev/ttyS0 ;;
    agent-start) start_agent; echo "agent-started" > /dev/ttyS0 ;;
  esac
done
"""
"""The guest's init: at most the kernel's panic=0 if it ever returned."""


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


def _shared_libraries(program: Path) -> list[Path]:
    """The shared libraries `program` loads, the dynamic loader included, as `ldd` lists them."""
    listed = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    paths = [word for line in listed.splitlines() for word in line.split() if word.startswith("/")]
    return [Path(path) for path in paths]


def _copy_program(program: Path, root: Path) -> None:
    """`program` and its shared libraries, at the same paths inside `root`."""
    for path in (program, *_shared_libraries(program)):
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)


def build_guest_kernel(workdir: Path) -> GuestKernel:
    """Debian's newest kernel in /boot and an initramfs with its virtio drivers and qemu-ga."""
    kernel, version = _newest_kernel()
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: `make test` installs Debian's busybox-static"
    assert AGENT.exists(), f"{AGENT} is missing: `make test` installs Debian's qemu-guest-agent"
    root = workdir / "initramfs"
    for directory in ("bin", "modules", "proc", "sys", "dev", "run", "data", "etc"):
        (root / directory).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    shutil.copy("/etc/os-release", root / "etc" / "os-release")
    _copy_program(AGENT, root)
    modules = _load_order(version, GUEST_MODULES)
    for module in modules:
        assert module.suffix == ".ko", f"{module}: compressed modules would need unpacking first"
        shutil.copy(module, root / "modules" / module.name)
    init = root / "init"
    names = " ".join(module.stem for module in modules)
    init.write_text(INIT.format(modules=names, hostname=HOSTNAME, fill=DATA_FILL_MIB, channel=AGENT_CHANNEL))
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


@dataclass(frozen=True)
class GuestFiles:
    """The host side of one guest VM: its data disk (vda, ext4) and its serial console's socket."""

    directory: Path

    @property
    def data_disk(self) -> Path:
        return self.directory / "data.img"

    @property
    def console(self) -> Path:
        return self.directory / "console.sock"

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.data_disk.open("wb") as disk:
            disk.truncate(DATA_DISK_MIB * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.data_disk)], check=True)


def start_guest_vm(
    conn: libvirt.virConnect,
    name: str,
    guest: GuestKernel,
    files: GuestFiles,
    config: GuestConfig = GuestConfig(),
) -> libvirt.virDomain:
    """A transient VM booting `guest`, with a balloon that polls the guest every 2 s, a guest-agent
    channel, an ext4 data disk and its console on a unix socket (`files`, created here)."""
    files.create()
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
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{files.data_disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'><source mode='bind' path='{files.console}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>
    <memballoon model='virtio'><stats period='2'/></memballoon>{config.devices}
  </devices>{config.elements}
</domain>"""
    return conn.createXML(xml, 0)


@dataclass(frozen=True)
class GuestVM:
    """A running guest VM: its name, and its files on the host."""

    name: str
    files: GuestFiles


class GuestConsole:
    """The guest's serial console: commands to its init, and the lines it answers."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        self._socket.connect(str(path))
        self._pending = b""

    def close(self) -> None:
        self._socket.close()

    def ask(self, command: str, until: str, timeout: float) -> list[str]:
        """Send `command` until the guest answers with a line `until` (its init may still be
        booting), and return the lines up to that one, with the kernel's messages among them."""
        give_up_at = time.monotonic() + timeout
        while time.monotonic() < give_up_at:
            self._socket.sendall(command.encode() + b"\n")
            lines = self._read_until(until, give_up_at=min(give_up_at, time.monotonic() + 2))
            if lines is not None:
                return lines
        raise TimeoutError(f"the guest did not answer {command!r} within {timeout:g} s")

    def _read_until(self, last: str, give_up_at: float) -> list[str] | None:
        lines: list[str] = []
        while time.monotonic() < give_up_at:
            while b"\n" in self._pending:
                line, _, self._pending = self._pending.partition(b"\n")
                text = line.decode(errors="replace").strip()
                lines.append(text)
                if text == last:
                    return lines
            try:
                self._socket.settimeout(max(0.01, give_up_at - time.monotonic()))
                chunk = self._socket.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the guest's console closed")
            self._pending += chunk
        return None

"""The integration tests' host side: tiny real QEMU VMs, libvirtd, exporter processes.

The exporter's hard cases (a hung QEMU, a restarted libvirtd) only show with real
QEMU processes behind a real libvirtd, so the tests start throwaway VMs: 64 MiB of
memory, a small qcow2 disk or two, a tap interface and a virtio balloon. No guest
OS is needed: the firmware finds nothing to boot and the VM idles, while libvirt
still reports CPU, balloon, block and interface stats for it.

A VM is "frozen" by sending SIGSTOP to its QEMU process: its monitor stops
answering, as when QEMU's main loop is stuck (docs/libvirt-behaviour.md, which also
says how a storage outage differs).

Domains are transient (`createXML`): once destroyed they are gone, and nothing is
left in libvirt's persistent configuration.

conftest.py turns these helpers into fixtures. They live here, not in conftest.py,
so that test modules can import the types for their annotations:
`from tests.integration.vms import Exporter, LibvirtdControl, TinyVM, VMFactory`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import libvirt

DEFAULT_PREFIX = "lvexp-test-"
MEMORY_MIB = 64
DISK_SIZE_MIB = 64
QEMU_PID_DIR = Path("/run/libvirt/qemu")
# The owner's pid goes into each domain's description, so that a later session can
# tell a leftover of a crashed run from a VM of a test session still running.
OWNER_PATTERN = re.compile(r"owner pid (\d+)")
FREEZE_TIMEOUT_S = 5.0
TAP_NAME_MAX = 15  # IFNAMSIZ - 1
LIBVIRTD_TIMEOUT_S = 30.0
EXPORTER_START_TIMEOUT_S = 20.0
EXPORTER_STOP_TIMEOUT_S = 5.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `condition` until it holds; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def process_state(pid: int) -> str | None:
    """One-letter state of `pid` from /proc (`T` = stopped), or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
    return match.group(1) if match else None


def process_exists(pid: int) -> bool:
    """Whether a process `pid` exists (zombies count as gone)."""
    return process_state(pid) not in (None, "Z")


def qemu_pid_of(name: str) -> int:
    """Pid of domain `name`'s QEMU, from the pid file libvirtd keeps for it."""
    return int((QEMU_PID_DIR / f"{name}.pid").read_text().strip())


def domain_type() -> str:
    """`kvm` where the host offers it, else `qemu` (pure emulation: slower, still works)."""
    return "kvm" if os.path.exists("/dev/kvm") else "qemu"


@dataclass(eq=False)
class TinyVM:
    """A running tiny VM, as the tests need to know it."""

    name: str
    uuid: str
    vcpus: int
    disk_paths: list[Path]
    disk_targets: list[str]
    disk_virtual_size_bytes: int
    """Virtual size of each disk (all are the same size), as `qemu-img info` reports it."""
    interface_name: str
    """Host-side tap device of the VM's one interface."""
    frozen: bool = field(default=False, init=False)

    def domain(self, conn: libvirt.virConnect) -> libvirt.virDomain:
        """This VM's domain on `conn`."""
        return conn.lookupByUUIDString(self.uuid)

    def qemu_pid(self) -> int:
        """Pid of the QEMU process, from the pid file libvirtd writes for it."""
        return qemu_pid_of(self.name)

    def freeze(self) -> None:
        """SIGSTOP QEMU and wait until it is stopped, so its monitor hangs from now on."""
        pid = self.qemu_pid()
        os.kill(pid, signal.SIGSTOP)
        self.frozen = True
        wait_for(lambda: process_state(pid) == "T", FREEZE_TIMEOUT_S, f"{self.name} to stop")

    def thaw(self) -> None:
        """SIGCONT QEMU and wait until it runs again. Harmless if it is not frozen."""
        pid = self.qemu_pid()
        os.kill(pid, signal.SIGCONT)
        self.frozen = False
        wait_for(lambda: process_state(pid) != "T", FREEZE_TIMEOUT_S, f"{self.name} to resume")


def create_disk(path: Path, size_mib: int = DISK_SIZE_MIB) -> int:
    """Create an empty qcow2 image; return its virtual size in bytes per `qemu-img info`."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"],
        check=True,
        capture_output=True,
        text=True,
    )
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(json.loads(info.stdout)["virtual-size"])


def domain_xml(name: str, vcpus: int, disk_paths: list[Path], disk_targets: list[str], tap: str) -> str:
    """Libvirt XML of a tiny transient VM. No graphics; the NIC's boot ROM is off so
    that the firmware gives up at once instead of trying network boot."""
    disks = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(path))}/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""
        for path, target in zip(disk_paths, disk_targets, strict=True)
    )
    return f"""<domain type='{domain_type()}'>
  <name>{escape(name)}</name>
  <description>libvirt-exporter integration test VM, owner pid {os.getpid()}</description>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{disks}
    <interface type='ethernet'>
      <target dev='{tap}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <memballoon model='virtio'>
      <stats period='2'/>
    </memballoon>
  </devices>
</domain>
"""


def create_tiny_vms(
    conn: libvirt.virConnect,
    count: int,
    workdir: Path,
    prefix: str = DEFAULT_PREFIX,
    vcpus: int = 1,
    second_disk: bool = False,
) -> list[TinyVM]:
    """Start `count` tiny transient VMs named `<prefix><random>-<i>`, disks in `workdir`.

    Either all start or none is left behind: on a failure the ones already started
    are destroyed before the error propagates.
    """
    token = secrets.token_hex(3)  # unique per call, so parallel sessions never clash
    vms: list[TinyVM] = []
    try:
        for index in range(count):
            vms.append(
                _create_one(conn, f"{prefix}{token}-{index}", token, index, workdir, vcpus, second_disk)
            )
    except BaseException:
        destroy_vms(conn, vms)
        raise
    return vms


def _create_one(
    conn: libvirt.virConnect,
    name: str,
    token: str,
    index: int,
    workdir: Path,
    vcpus: int,
    second_disk: bool,
) -> TinyVM:
    targets = ["vda", "vdb"] if second_disk else ["vda"]
    paths = [workdir / f"{name}-{target}.qcow2" for target in targets]
    sizes = [create_disk(path) for path in paths]
    tap = f"lvt{token}n{index}"
    assert len(tap) <= TAP_NAME_MAX, tap
    dom = conn.createXML(domain_xml(name, vcpus, paths, targets, tap), 0)
    return TinyVM(
        name=name,
        uuid=dom.UUIDString(),
        vcpus=vcpus,
        disk_paths=paths,
        disk_targets=targets,
        disk_virtual_size_bytes=sizes[0],
        interface_name=tap,
    )


def destroy_vms(conn: libvirt.virConnect, vms: Iterable[TinyVM]) -> None:
    """Destroy the VMs and delete their disks. VMs already gone are fine.

    A frozen QEMU is thawed first: libvirt ends QEMU with SIGTERM and waits for it
    before resorting to SIGKILL, and a stopped process only acts on SIGTERM once
    continued, so destroying a frozen VM would take seconds longer.
    """
    vms = list(vms)
    for vm in vms:
        if vm.frozen:
            _thaw_if_running(vm)
    running = {dom.UUIDString(): dom for dom in conn.listAllDomains()}
    destroy_in_parallel([running[vm.uuid] for vm in vms if vm.uuid in running])
    for vm in vms:
        for path in vm.disk_paths:
            path.unlink(missing_ok=True)


def destroy_in_parallel(domains: list[libvirt.virDomain]) -> None:
    """Destroy domains concurrently: here QEMU takes 1.5-2 s to exit after libvirt's
    SIGTERM, so a module's teardown of many VMs one by one would take minutes."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_destroy_ignoring_gone, domains))


def _thaw_if_running(vm: TinyVM) -> None:
    try:
        vm.thaw()
    except (FileNotFoundError, ProcessLookupError):
        vm.frozen = False  # QEMU already gone


def _destroy_ignoring_gone(dom: libvirt.virDomain) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError as err:
        # Ended between listing and destroying: that is what we wanted anyway.
        if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def remove_leftover_vms(conn: libvirt.virConnect, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Destroy `prefix*` domains whose owning test process is dead; return their names.

    They are leftovers of a crashed run. VMs of another test session still running
    on this host (their owner pid is alive) are left alone.
    """
    leftovers = [
        dom for dom in conn.listAllDomains() if dom.name().startswith(prefix) and not _owner_alive(dom)
    ]
    for dom in leftovers:
        _continue_qemu(dom.name())  # in case it was left frozen
    destroy_in_parallel(leftovers)
    return [dom.name() for dom in leftovers]


def _owner_alive(dom: libvirt.virDomain) -> bool:
    try:
        description = dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None)
    except libvirt.libvirtError:
        return False
    match = OWNER_PATTERN.search(description)
    return match is not None and process_exists(int(match.group(1)))


def _continue_qemu(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):  # not running
        os.kill(qemu_pid_of(name), signal.SIGCONT)


# --- VMs per test module ---------------------------------------------------------


@contextlib.contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    """A short-lived read-write connection."""
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


class VMFactory:
    """Starts tiny VMs on demand and remembers them, so that all can be destroyed.

    Each call opens its own short-lived connection: it keeps working after a test
    restarted libvirtd, which kills every open connection.
    """

    def __init__(self, uri: str, workdir: Path) -> None:
        self.uri = uri
        self.workdir = workdir
        self.vms: list[TinyVM] = []

    def __call__(self, count: int, **kwargs: Any) -> list[TinyVM]:
        """Start `count` VMs; kwargs as for create_tiny_vms (vcpus, second_disk, prefix)."""
        with connection(self.uri) as conn:
            created = create_tiny_vms(conn, count, self.workdir, **kwargs)
        self.vms.extend(created)
        return created

    def destroy(self, to_destroy: Iterable[TinyVM] | None = None) -> None:
        """Destroy the given VMs (default: all this factory made) and forget them."""
        targets = list(self.vms if to_destroy is None else to_destroy)
        with connection(self.uri) as conn:
            destroy_vms(conn, targets)
        self.vms = [vm for vm in self.vms if vm not in targets]

    def thaw_all(self) -> None:
        """Thaw every frozen VM, so that no test leaves a hung QEMU to the next."""
        for vm in self.vms:
            if vm.frozen:
                _thaw_if_running(vm)


# --- libvirtd ---------------------------------------------------------------------


def libvirtd_answers(uri: str) -> bool:
    """Whether libvirtd answers `virsh version` (the check ensure-libvirtd.sh makes)."""
    result = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def libvirtd_pids() -> list[int]:
    """Pids of the running libvirtd processes (normally one)."""
    result = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


@dataclass
class LibvirtdControl:
    """Restart or freeze the libvirtd under test (the one ensure-libvirtd.sh started;
    there is no systemd to do it)."""

    uri: str
    frozen_pids: list[int] = field(default_factory=list)

    def restart(
        self, how: signal.Signals = signal.SIGTERM, while_down: Callable[[], object] | None = None
    ) -> None:
        """Stop libvirtd with `how`, wait until it is gone, run `while_down` (what a test must see
        while libvirtd is away), start it again and wait until it answers. Running transient VMs
        survive: the new libvirtd reconnects to them.

        SIGTERM lets libvirtd shut down cleanly, which it cannot do while a worker waits on a
        frozen QEMU's monitor (it then hangs for good): kill it with SIGKILL in that case."""
        self.thaw()
        pids = libvirtd_pids()
        for pid in pids:
            os.kill(pid, how)
        wait_for(
            lambda: not any(process_exists(pid) for pid in pids),
            LIBVIRTD_TIMEOUT_S,
            "libvirtd to exit",
        )
        if while_down is not None:
            while_down()
        subprocess.run(["libvirtd", "-d"], check=True)
        wait_for(lambda: libvirtd_answers(self.uri), LIBVIRTD_TIMEOUT_S, "libvirtd to answer")

    def freeze(self) -> None:
        """SIGSTOP libvirtd: connections stay open, but nothing answers on them."""
        for pid in libvirtd_pids():
            os.kill(pid, signal.SIGSTOP)
            self.frozen_pids.append(pid)

    def thaw(self) -> None:
        """SIGCONT what freeze() stopped."""
        while self.frozen_pids:
            pid = self.frozen_pids.pop()
            if process_exists(pid):
                os.kill(pid, signal.SIGCONT)


# --- exporter processes -------------------------------------------------------------


INTERVAL = 2.0
DEADLINE = 1.0
SIZES_INTERVAL = 10 * INTERVAL
FAST_SAMPLING = (
    f"--sampler.bulk.interval={INTERVAL:g}s",
    f"--sampler.bulk.deadline={DEADLINE:g}s",
    f"--sampler.block_info.interval={SIZES_INTERVAL:g}s",
)
"""Exporter flags for tests: a cycle every 2 s, a call stuck after 1 s; the disks' sizes every
10 cycles, so that a test sees both the host-wide call that reads the disks' counters and the
domains' own calls that read their sizes too, spread over the cycles."""


def find_free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ExporterStartError(RuntimeError):
    """The exporter exited or never answered; the message carries its log."""


@dataclass
class Exporter:
    """A libvirt-exporter process serving on 127.0.0.1:`port`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The metrics URL."""
        return f"{self.base_url}/metrics"

    def scrape(self, timeout: float = 5) -> str:
        """GET /metrics; the body as text. Raises on a non-200 answer or a timeout."""
        return self.get("/metrics", timeout)

    def get(self, path: str, timeout: float = 5) -> str:
        """GET `path`; the body as text. Raises on a non-200 answer or a timeout."""
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
            body: bytes = response.read()
            return body.decode()

    def answers(self) -> bool:
        """Whether `/` answers 200 right now."""
        try:
            with urllib.request.urlopen(self.base_url + "/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_text(self) -> str:
        """Everything the exporter wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = EXPORTER_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` s; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_exporter(
    uri: str,
    extra_args: Iterable[str],
    log_path: Path,
    program: Sequence[str] = (sys.executable, "-m", "libvirt_exporter"),
) -> Exporter:
    """Start `program` (by default `python -m libvirt_exporter`; test_deb runs the
    installed package's) on a free port, output to `log_path`, and return once `/`
    answers 200. Raise ExporterStartError with the log if it exits first or does not
    answer within EXPORTER_START_TIMEOUT_S."""
    port = find_free_port()
    command = [
        *program,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--libvirt.uri={uri}",
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    exporter = Exporter(process, port, log_path)
    deadline = time.monotonic() + EXPORTER_START_TIMEOUT_S
    while not exporter.answers():
        exit_code = process.poll()
        if exit_code is not None or time.monotonic() >= deadline:
            exporter.stop()
            why = (
                f"did not answer within {EXPORTER_START_TIMEOUT_S:g} s"
                if exit_code is None
                else f"exited with {exit_code} before answering"
            )
            raise ExporterStartError(f"exporter {why}: {command}\n--- log ---\n{exporter.log_text()}")
        time.sleep(0.1)
    return exporter

"""Fixtures for tests against a real libvirtd with real (tiny) QEMU VMs.

`make test` installs and starts libvirtd (scripts/ensure-libvirtd.sh) before pytest
runs. These tests never skip: without libvirtd they fail, so that a CI run which
lost its daemon cannot pass by testing nothing.

  libvirt_uri       (session)  URI of the libvirtd under test, checked to answer
  libvirt_conn      (function) a fresh read-write connection, closed afterwards
  make_tiny_vms     (module)   VMFactory: make_tiny_vms(count, vcpus=1, second_disk=False)
  tiny_vms          (module)   two running VMs: 1 vCPU + 1 disk, 2 vCPUs + 2 disks
  guest_kernel      (session)  the booting guest's kernel and initramfs (guest.py), built once
  agent_guest       (session)  GuestVM: a running VM with a guest kernel, its agent and its console
  guest_vm          (session)  the name of that same VM
  free_port         (function) a TCP port free on 127.0.0.1
  run_exporter      (function) factory: run_exporter(*extra_args, uri=None) -> Exporter
  libvirtd_control  (function) LibvirtdControl: restart(), freeze(), thaw()

The helpers behind them are in vms.py; tests import their types from there
(`from tests.integration.vms import Exporter, LibvirtdControl, TinyVM, VMFactory`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.guest import (
    GuestConfig,
    GuestFiles,
    GuestKernel,
    GuestVM,
    build_guest_kernel,
    start_guest_vm,
)
from tests.integration.vms import (
    DEFAULT_PREFIX,
    Exporter,
    ExporterStartError,
    LibvirtdControl,
    TinyVM,
    VMFactory,
    find_free_port,
    libvirtd_answers,
    remove_leftover_vms,
    start_exporter,
)

INTEGRATION_DIR = Path(__file__).parent
DEFAULT_URI = "qemu:///system"
NO_LIBVIRTD = "no libvirtd at {uri}: run `make test`, which installs and starts it"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `integration`, so that
    `-m 'not integration'` runs the unit tests alone. This hook sees the items of
    the whole session, not only this directory's, hence the path test."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


# --- libvirtd ---------------------------------------------------------------------


def open_connection(uri: str) -> libvirt.virConnect:
    """A read-write connection to `uri` (tests create VMs), else a failed test that
    says how to get libvirtd. Never a skip."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        pytest.fail(f"{NO_LIBVIRTD.format(uri=uri)} ({err})", pytrace=False)


@contextlib.contextmanager
def running_guest_vm(
    uri: str, name: str, guest: GuestKernel, workdir: Path, config: GuestConfig | None = None
) -> Iterator[GuestVM]:
    """The guest VM `name` running for the duration of the block, its files in `workdir`,
    destroyed afterwards."""
    files = GuestFiles(workdir / name)
    conn = open_connection(uri)
    start_guest_vm(conn, name, guest, files, config or GuestConfig())
    conn.close()
    try:
        yield GuestVM(name, files)
    finally:
        # A new connection: tests restart libvirtd, which closes any connection opened before.
        with contextlib.suppress(libvirt.libvirtError):
            conn = open_connection(uri)
            conn.lookupByName(name).destroy()
            conn.close()


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """The URI under test, checked to answer; VMs left by a crashed run are removed."""
    uri = os.environ.get("LIBVIRT_EXPORTER_TEST_URI", DEFAULT_URI)
    conn = open_connection(uri)
    try:
        removed = remove_leftover_vms(conn)
    finally:
        conn.close()
    if removed:
        print(f"removed test VMs left by an earlier run: {removed}")
    return uri


@pytest.fixture
def libvirt_conn(libvirt_uri: str) -> Iterator[libvirt.virConnect]:
    """A fresh read-write connection per test: one opened before a test restarted
    libvirtd would be dead in the tests after it."""
    conn = open_connection(libvirt_uri)
    yield conn
    with contextlib.suppress(libvirt.libvirtError):  # libvirtd was restarted under it
        conn.close()


@pytest.fixture
def libvirtd_control(libvirt_uri: str) -> Iterator[LibvirtdControl]:
    """Restart or freeze libvirtd in one test. Afterwards libvirtd runs and answers
    again, so that one test's freeze or failed restart cannot break the next ones."""
    control = LibvirtdControl(libvirt_uri)
    yield control
    control.thaw()
    if not libvirtd_answers(libvirt_uri):
        control.restart()


# --- VMs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_tiny_vms(libvirt_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VMFactory]:
    """Factory of tiny VMs for one test module; all are destroyed at its end, frozen
    ones thawed first. `make_tiny_vms.destroy(vms)` destroys some sooner."""
    factory = VMFactory(libvirt_uri, tmp_path_factory.mktemp("vms"))
    yield factory
    factory.destroy()


@pytest.fixture(autouse=True)
def _thaw_vms_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """VMs outlive a test (module scope); a freeze must not: thaw them after it."""
    yield
    if "make_tiny_vms" in request.fixturenames:
        factory: VMFactory = request.getfixturevalue("make_tiny_vms")
        factory.thaw_all()


@pytest.fixture(scope="module")
def tiny_vms(make_tiny_vms: VMFactory) -> list[TinyVM]:
    """Two running VMs shared by a module: [0] 1 vCPU, 1 disk; [1] 2 vCPUs, 2 disks."""
    return make_tiny_vms(1) + make_tiny_vms(1, vcpus=2, second_disk=True)


@pytest.fixture(scope="session")
def guest_kernel(tmp_path_factory: pytest.TempPathFactory) -> GuestKernel:
    """The booting guest's kernel and initramfs, built once for every VM of the session."""
    return build_guest_kernel(tmp_path_factory.mktemp("guest-kernel"))


@pytest.fixture(scope="session")
def agent_guest(
    libvirt_uri: str, guest_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuestVM]:
    """A running VM with a real kernel: its balloon driver reports guest figures, its agent the
    guest's file systems, and its console answers the test (guest.py). One for the session: it
    boots under emulation, and outlives libvirtd's restarts; a test that stops its agent starts it
    again."""
    name = f"{DEFAULT_PREFIX}guest-{secrets.token_hex(3)}"
    with running_guest_vm(libvirt_uri, name, guest_kernel, tmp_path_factory.mktemp("guest")) as vm:
        yield vm


@pytest.fixture(scope="session")
def guest_vm(agent_guest: GuestVM) -> str:
    """The name of the session's guest VM, for tests that need its figures and not its console."""
    return agent_guest.name


# --- the exporter -----------------------------------------------------------------


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return find_free_port()


@pytest.fixture
def run_exporter(libvirt_uri: str, tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    """Factory: `run_exporter(*extra_args, uri=None)` starts the exporter on a free
    port against `libvirt_uri` (or `uri`) and returns once `/` answers 200.

    Each exporter started is stopped at teardown and its log printed: pytest shows
    that output with a failed test.
    """
    started: list[Exporter] = []

    def run(*extra_args: str, uri: str | None = None) -> Exporter:
        log_path = tmp_path / f"exporter-{len(started)}.log"
        try:
            exporter = start_exporter(uri or libvirt_uri, extra_args, log_path)
        except ExporterStartError as err:
            failure = str(err)
        else:
            started.append(exporter)
            return exporter
        pytest.fail(failure, pytrace=False)  # outside `except`: no chained traceback

    yield run
    for exporter in started:
        code = exporter.stop()
        print(f"--- exporter on port {exporter.port} (exit code {code}) log ---")
        print(exporter.log_text())

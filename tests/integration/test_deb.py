"""The Debian package as an operator gets it: built from this tree (scripts/build-deb.sh,
what `make deb` runs), installed with `dpkg -i`, its unit, defaults file and system user in
place, and the installed exporter serving a real VM's metrics while it runs as that user.

This machine runs no systemd, so the exporter runs twice: the way the unit would start it
(its ExecStart with the defaults file's ARGS, as its User, with no privileges and no way to
gain any: setpriv), and started by a real systemd booted in a container of this host
(systemd_container.py), where the unit's whole sandbox applies. The package is purged
afterwards, leaving the machine as it was; the test fails at once where the package was
already installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exposition import domains_in, parse, value
from tests.integration.systemd_container import SystemdContainer, boot
from tests.integration.vms import Exporter, ExporterStartError, TinyVM, VMFactory, start_exporter, wait_for

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "libvirt-exporter"
USER = "libvirt-exporter"
UNIT_PATH = Path("/lib/systemd/system/libvirt-exporter.service")
DEFAULTS_PATH = Path("/etc/default/libvirt-exporter")
VENV = Path("/usr/lib/libvirt-exporter")
# What install and enablement put on the machine; none of it may outlive a purge.
LEFTOVERS = (
    UNIT_PATH,
    DEFAULTS_PATH,
    VENV,
    Path("/usr/bin/libvirt-exporter"),
    Path("/etc/systemd/system/multi-user.target.wants/libvirt-exporter.service"),
    Path("/etc/systemd/system/libvirt-exporter.service"),  # a mask
)
BUILD_TIMEOUT_S = 900  # a fresh machine downloads the wheels and compiles libvirt-python
SERIES_TIMEOUT_S = 60.0  # the service's default 15 s intervals, on a slow machine
PORT = 9177  # the exporter's default, which the shipped ARGS="" keeps


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def package_installed() -> bool:
    status = run("dpkg-query", "-W", "-f=${Status}", PACKAGE).stdout
    return status.endswith(" installed")


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package built from this tree and installed with dpkg -i; purged at the end,
    and checked to leave neither its files nor its user behind."""
    if package_installed():
        pytest.fail(f"{PACKAGE} is already installed here; this test would purge it", pytrace=False)
    out = tmp_path_factory.mktemp("deb")
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-deb.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, build.stderr
    (path,) = out.glob(f"{PACKAGE}_*.deb")
    try:
        install = run("dpkg", "-i", str(path))
        assert install.returncode == 0, install.stdout + install.stderr
        yield path
    finally:
        purge = run("dpkg", "-P", PACKAGE)
        assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not package_installed()
    assert [path for path in LEFTOVERS if path.exists() or path.is_symlink()] == []
    assert not user_exists()


def test_the_unit_and_defaults_file_are_installed_and_the_unit_verifies(deb: Path) -> None:
    assert UNIT_PATH.read_text() == (ROOT / "packaging/systemd/libvirt-exporter.service").read_text()
    assert DEFAULTS_PATH.read_text() == (ROOT / "packaging/systemd/libvirt-exporter.default").read_text()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
    assert str(DEFAULTS_PATH) in conffiles
    # Now ExecStart's program exists: systemd-analyze checks the unit exactly as shipped.
    verify = run("systemd-analyze", "verify", str(UNIT_PATH))
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    enabled = run("systemctl", "--root=/", "is-enabled", UNIT_PATH.name)
    assert enabled.stdout.strip() == "enabled", enabled.stdout + enabled.stderr


def test_the_service_user_is_a_system_user_without_a_login(deb: Path) -> None:
    entry = pwd.getpwnam(USER)
    assert entry.pw_uid < 1000
    assert entry.pw_shell == "/usr/sbin/nologin"
    assert entry.pw_dir == "/nonexistent" and not Path(entry.pw_dir).exists()


def test_the_venv_runs_on_debians_python_that_the_package_depends_on(deb: Path) -> None:
    interpreter = (VENV / "bin" / "python3").resolve()
    assert interpreter.parent == Path("/usr/bin")
    assert re.fullmatch(r"python3\.\d+", interpreter.name)
    depends = run("dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
    assert interpreter.name in depends.split(", ")
    version = run("/usr/bin/libvirt-exporter", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == [PACKAGE, run("dpkg-query", "-W", "-f=${Version}", PACKAGE).stdout]


def unit_setting(key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", UNIT_PATH.read_text(), re.MULTILINE)
    assert match, key
    return match.group(1)


def as_service_user(*command: str) -> list[str]:
    """`command` run as the unit's User, with a clean environment, no capabilities and
    no_new_privs, as systemd would start it."""
    user = unit_setting("User")
    return [
        "setpriv",
        f"--reuid={user}",
        f"--regid={user}",
        "--init-groups",
        "--reset-env",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *command,
    ]


def test_native_modules_load_libraries_from_debian_or_the_venv_only(deb: Path) -> None:
    """A module compiled by another python (a pyenv build, through pip's wheel cache) names that
    python's library directory in its RUNPATH: the package must not depend on it."""
    modules = list(VENV.rglob("*.so"))
    assert any(module.name.startswith("libvirtmod") for module in modules)
    for module in modules:
        dynamic = run("readelf", "--dynamic", str(module)).stdout
        for search_path in re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", dynamic):
            assert all(entry.startswith("$ORIGIN") for entry in search_path.split(":")), (module, search_path)
        linked = run("ldd", str(module)).stdout
        assert "not found" not in linked, (module, linked)
        for library in re.findall(r"=> (/\S+)", linked):
            assert library.startswith(("/lib/", "/usr/lib/")), (module, library)


def service_command() -> list[str]:
    """The unit's ExecStart with $ARGS from the installed defaults file, as the service user."""
    words = shlex.split(unit_setting("ExecStart"))
    assert words[-1] == "$ARGS"
    args = re.search(r'^ARGS="(.*)"$', DEFAULTS_PATH.read_text(), re.MULTILINE)
    assert args
    return as_service_user(*words[:-1], *args.group(1).split())


@pytest.fixture(scope="module")
def vm(make_tiny_vms: VMFactory) -> TinyVM:
    """A VM that runs before the exporter starts, as on a host where the package is installed."""
    (created,) = make_tiny_vms(1)
    return created


@pytest.fixture
def service(deb: Path, vm: TinyVM, libvirt_uri: str, tmp_path: Path) -> Iterator[Exporter]:
    """The installed exporter, started as the service would be. libvirtd must admit a
    read-only client that is not root: checked first, so that a refusal is named."""
    probe = run(*as_service_user("virsh", "--readonly", "--connect", libvirt_uri, "version"))
    if probe.returncode != 0:
        pytest.fail(
            f"libvirtd refuses {USER} on its read-only socket ({probe.stderr.strip()}); "
            'scripts/ensure-libvirtd.sh sets auth_unix_ro = "none" for the libvirtd it starts',
            pytrace=False,
        )
    try:
        exporter = start_exporter(libvirt_uri, (), tmp_path / "service.log", program=service_command())
    except ExporterStartError as err:
        failure = str(err)
    else:
        yield exporter
        print(f"--- installed exporter (exit code {exporter.stop()}) log ---\n{exporter.log_text()}")
        return
    pytest.fail(failure, pytrace=False)  # outside `except`: no chained traceback


def test_the_installed_exporter_serves_a_running_vm_as_the_service_user(
    service: Exporter, vm: TinyVM
) -> None:
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert uid and {int(uid.group(1)), int(uid.group(2))} == {pwd.getpwnam(USER).pw_uid}

    def vm_is_served() -> bool:
        """The survey brings the VM's state and CPU time; its vCPUs come with the bulk sampler's
        cycle after it, which a scrape may come between."""
        series = parse(service.scrape())
        vcpus = value(series, "libvirt_domain_vcpus_current", domain=vm.name)
        return value(series, "libvirt_up") == 1 and vcpus is not None

    wait_for(vm_is_served, SERIES_TIMEOUT_S, f"{vm.name}'s series from the installed exporter")
    series = parse(service.scrape())
    assert value(series, "libvirt_domain_vcpus_current", domain=vm.name) == 1
    assert (value(series, "libvirt_domain_cpu_time_seconds_total", domain=vm.name) or 0) > 0


@pytest.fixture
def systemd(deb: Path, vm: TinyVM, tmp_path: Path) -> Iterator[SystemdContainer]:
    """A real systemd, booted in a container of this host, running the installed unit."""
    container = boot(tmp_path, UNIT_PATH.name, f"lvexp-{os.getpid()}")
    yield container
    journal = container.run("journalctl", "--no-pager", "--unit", UNIT_PATH.name)
    container.stop()
    print(f"--- {UNIT_PATH.name} journal ---\n{journal.stdout}{journal.stderr}")
    print(f"--- systemd-nspawn (exit code {container.nspawn.returncode}) ---\n{container.log_text()}")


def proc_status(systemd: SystemdContainer, pid: str) -> dict[str, str]:
    status = systemd.run("cat", f"/proc/{pid}/status")
    assert status.returncode == 0, status.stderr
    return {
        key: rest.strip() for key, _, rest in (line.partition(":") for line in status.stdout.splitlines())
    }


def test_under_systemd_the_hardened_unit_serves_the_vm(systemd: SystemdContainer, vm: TinyVM) -> None:
    """The unit as shipped, started by systemd: its whole sandbox applies (system-call filter,
    no W+X memory, no capability, a private user namespace, a read-only file system), and the
    exporter still reaches libvirtd's read-only socket and serves the VM."""
    url = f"http://127.0.0.1:{PORT}/metrics"

    def vm_is_served() -> bool:
        body = systemd.fetch(url)
        series = parse(body) if body is not None else {}
        return value(series, "libvirt_up") == 1 and vm.name in domains_in(series)

    wait_for(vm_is_served, SERIES_TIMEOUT_S, f"{vm.name}'s series from the unit under systemd")
    body = systemd.fetch(url)
    assert body is not None
    assert (value(parse(body), "process_resident_memory_bytes") or 0) > 0  # /proc is readable enough
    assert (value(parse(body), "libvirt_exporter_front_process_resident_memory_bytes") or 0) > 0

    main_pid = systemd.run(
        "systemctl", "show", "--property=MainPID", "--value", UNIT_PATH.name
    ).stdout.strip()
    (front_pid,) = systemd.run("cat", f"/proc/{main_pid}/task/{main_pid}/children").stdout.split()
    init = proc_status(systemd, "1")
    for pid in (main_pid, front_pid):  # the front, which answers HTTP, is in the same sandbox
        service = proc_status(systemd, pid)
        assert service["Uid"].split() == [str(pwd.getpwnam(USER).pw_uid)] * 4
        assert service["NoNewPrivs"] == "1"
        assert int(service["CapBnd"], 16) == 0 != int(init["CapBnd"], 16)
        # nspawn filters the container's system calls already; the unit adds filters of its own.
        assert int(service["Seccomp_filters"]) > int(init["Seccomp_filters"])

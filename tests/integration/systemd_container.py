"""A real systemd, booted in a container, to run an installed unit with all its hardening.

The machines here run no systemd, so nothing on the host can start a unit. systemd-nspawn
boots the host's own systemd as PID 1 of a container made of the host's /usr (bound
read-only), a copy of the host's /etc (so that the container sees an installed package, its
user and its unit), an empty /var and a private network (nothing in it can touch the host's
interfaces). The host's /run/libvirt is bound in read-only, so that a unit reaches libvirtd as
it would on a real host. systemd boots a target that wants the unit under test alone, not the
host's default target, so that no other service of the host starts in the container.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration.vms import wait_for

BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
TARGET = "lvexp-check.target"
# Reads a URL from inside the container's network namespace, with the host's python3 under /usr.
FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


@dataclass
class SystemdContainer:
    """A container booted by systemd-nspawn; `run` executes a command inside it."""

    nspawn: subprocess.Popen[bytes]
    init_pid: int
    log_path: Path

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`command` in all of the container's namespaces, as its root."""
        return subprocess.run(
            ["nsenter", "--target", str(self.init_pid), "--all", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def fetch(self, url: str) -> str | None:
        """The body at `url` as seen from inside the container, or None if it does not answer."""
        result = self.run("python3", "-c", FETCH, url)
        return result.stdout if result.returncode == 0 else None

    def stop(self) -> None:
        """Halt the container (nspawn turns SIGTERM into a clean shutdown), else kill it."""
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_root(root: Path, unit: str) -> None:
    """The container's root: mount points, /usr's links as on the host, /etc copied, and the
    target that boots `unit` alone."""
    for directory in ("usr", "dev", "proc", "sys", "run", "tmp", "root", "var/tmp", "var/lib", "var/log"):
        (root / directory).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / link
        if host.is_symlink():
            (root / link).symlink_to(host.readlink())
    subprocess.run(["cp", "-a", "/etc", str(root)], check=True, timeout=120)
    etc = root / "etc"
    # nspawn checks for an OS tree before /usr is bound: os-release must be a file of its own.
    (etc / "os-release").unlink()
    shutil.copy("/usr/lib/os-release", etc / "os-release")
    (etc / "machine-id").write_text("")  # a fresh id: the host's would clash with the host's journal
    (etc / "systemd" / "system" / TARGET).write_text(
        f"[Unit]\nDescription={unit} alone\nWants={unit}\nAfter={unit}\nAllowIsolate=yes\n"
    )


def systemd_child_of(pid: int) -> int | None:
    """The child of `pid` that runs systemd (nspawn's helper children come and go first)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
    return None


def boot(workdir: Path, unit: str, name: str) -> SystemdContainer:
    """Boot a container under `workdir` in which systemd starts `unit`; return once its
    systemd runs. Raise with nspawn's output if it exits first."""
    nspawn_path = shutil.which("systemd-nspawn")
    assert nspawn_path, "systemd-nspawn is missing: `make test` installs Debian's systemd-container"
    root = workdir / "root"
    make_root(root, unit)
    log_path = workdir / "nspawn.log"
    command = [
        nspawn_path,
        f"--directory={root}",
        f"--machine={name}",
        "--boot",
        "--bind-ro=/usr",
        "--bind-ro=/run/libvirt",
        "--private-network",
        "--register=no",  # no machined to register with,
        "--keep-unit",  # and no systemd on the host to give the container a scope
        "--console=passive",
        "--",
        f"--unit={TARGET}",
    ]
    with log_path.open("wb") as log:
        nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def systemd_started() -> bool:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {nspawn.returncode}:\n{log_path.read_text()}")
        return systemd_child_of(nspawn.pid) is not None

    wait_for(systemd_started, BOOT_TIMEOUT_S, "systemd-nspawn to start systemd")
    init_pid = systemd_child_of(nspawn.pid)
    assert init_pid is not None
    return SystemdContainer(nspawn, init_pid, log_path)

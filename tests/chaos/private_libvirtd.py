"""A libvirtd of our own, in private mount and pid namespaces, that we may freeze, kill and restart.

A chaos or soak run must not be done to a host's own libvirtd, and cannot hold the shared one for
an hour. So the run re-executes itself under `unshare`: in a new mount namespace, libvirt's
directories (/etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt) are
bind-mounted from a work directory, so that nothing is shared with the host's daemons; in a new pid
namespace, when the run ends, however it ends, the kernel kills every process left in it: no daemon
or QEMU survives. The daemons run under names of their own, so that the host's tools that look for
`libvirtd` by name do not find ours. Its first process is a shell, which reaps the orphans
(daemonised libvirtd, QEMU) as an init does: libvirt waits on a dead QEMU nobody reaps as if alive.

Everything that talks to this libvirtd (the exporter, VM factories, signals to QEMU) must run in
the namespace: start the program with `reexec_in_namespace()` first thing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from tests.integration.vms import LIBVIRTD_TIMEOUT_S, libvirtd_answers, process_exists, wait_for

URI = "qemu:///system"
PID_FILE = "/run/libvirtd.pid"
"""In the private /run."""
DAEMONS = {"chaos-virtd": "/usr/sbin/libvirtd", "chaos-logd": "/usr/sbin/virtlogd"}
"""Names our daemons run under: a pid namespace hides nothing from the host, whose tools find the
system libvirtd with `pidof libvirtd` (tests/integration/vms.py, scripts/ensure-libvirtd.sh) and
must not find ours, nor stop it."""
MARKER = "LIBVIRT_EXPORTER_PRIVATE_NAMESPACE"
PRIVATE_DIRS = ("/etc/libvirt", "/run", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
QEMU_CONF = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
"""QEMU runs as root and unconfined, as in scripts/ensure-libvirtd.sh: disks live in temp dirs."""


def in_namespace() -> bool:
    return os.environ.get(MARKER) == "1"


def reexec_in_namespace(module: str, args: Sequence[str]) -> NoReturn:
    """Run `python -m module args` again in new mount and pid namespaces (needs root)."""
    if os.geteuid() != 0:
        sys.exit(f"{module}: must run as root (it starts its own libvirtd in a private namespace)")
    command = [
        "unshare",
        "--mount",
        "--propagation=private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        # A shell as the namespace's init: it reaps orphans; `; exit` keeps it from exec'ing python.
        "bash",
        "-c",
        '"$@"; exit $?',
        "namespace-init",
        sys.executable,
        "-m",
        module,
        *args,
    ]
    os.execvpe("unshare", command, {**os.environ, MARKER: "1"})


def _mount_private_dirs(workdir: Path) -> None:
    """Bind a fresh directory of `workdir` over each of libvirt's directories."""
    for target in PRIVATE_DIRS:
        source = workdir / target.strip("/").replace("/", "-")
        source.mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), target], check=True)


def _write_config(log_dir: Path, libvirtd_conf: str) -> None:
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    for daemon, more in (("libvirtd", libvirtd_conf), ("virtlogd", "")):
        Path(f"/etc/libvirt/{daemon}.conf").write_text(
            f'log_outputs = "3:file:{log_dir}/{daemon}.log"\n{more}'
        )


def _link_daemons(bin_dir: Path) -> None:
    """Our daemons run under names of their own (see DAEMONS)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, real in DAEMONS.items():
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(real)


@dataclass
class PrivateLibvirtd:
    """The namespace's libvirtd: started, restarted (SIGTERM or SIGKILL), frozen and thawed by the
    pid in its own pid file, never by name."""

    bin_dir: Path
    frozen_pid: int | None = None

    def start(self) -> None:
        subprocess.run([str(self.bin_dir / "chaos-virtd"), "-d", "-p", PID_FILE], check=True)
        wait_for(lambda: libvirtd_answers(URI), LIBVIRTD_TIMEOUT_S, "the private libvirtd to answer")

    def pid(self) -> int | None:
        try:
            pid = int(Path(PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_exists(pid) else None

    def restart(self, how: signal.Signals) -> None:
        """Stop it with `how`, wait until it is gone, start it again and wait until it answers.
        SIGTERM cannot stop it while a worker waits on a frozen QEMU's monitor: use SIGKILL then."""
        self.thaw()
        pid = self.pid()
        if pid is not None:
            os.kill(pid, how)
            wait_for(lambda: _all_threads_gone(pid), LIBVIRTD_TIMEOUT_S, "the private libvirtd to exit")
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, but nothing answers on them."""
        self.frozen_pid = self.pid()
        if self.frozen_pid is not None:
            os.kill(self.frozen_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.frozen_pid is not None and process_exists(self.frozen_pid):
            os.kill(self.frozen_pid, signal.SIGCONT)
        self.frozen_pid = None


def _all_threads_gone(pid: int) -> bool:
    """Whether every thread of `pid` has exited. Its main thread may exit first, a zombie to /proc,
    while the others still hold libvirtd's pid file and sockets: a new libvirtd would fail then."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1 and not process_exists(pid)
    except FileNotFoundError:
        return True


def prepare(workdir: Path, libvirtd_conf: str = "") -> PrivateLibvirtd:
    """Mount the private directories, write the daemons' configuration (with `libvirtd_conf` added
    to libvirtd's) and start virtlogd: what runs beside libvirtd (a D-Bus system bus, say) may be
    started in the private /run before `PrivateLibvirtd.start`. Their logs go to `workdir`/logs
    (outside the mounts)."""
    if not in_namespace():
        raise RuntimeError("start() outside the private namespace would touch the host's libvirtd")
    for program in (*DAEMONS.values(), "qemu-img"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} is missing: run scripts/ensure-libvirtd.sh, which installs it")
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    _mount_private_dirs(workdir / "mounts")
    _write_config(log_dir, libvirtd_conf)
    _link_daemons(workdir / "bin")
    subprocess.run([str(workdir / "bin" / "chaos-logd"), "-d"], check=True)
    return PrivateLibvirtd(workdir / "bin")


def start(workdir: Path) -> PrivateLibvirtd:
    """`prepare`, then start libvirtd and wait until it answers at URI."""
    libvirtd = prepare(workdir)
    libvirtd.start()
    return libvirtd

"""A libvirtd of our own, in private mount and pid namespaces, that we may freeze, kill and restart.

A chaos or soak run must not be done to a host's own libvirtd, and cannot hold the shared one for
an hour. So the run re-executes itself under `unshare`: in a new mount namespace, libvirt's
directories (/etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt) are
bind-mounted from a work directory, so that nothing is shared with the host's daemons; in a new pid
namespace, `pidof libvirtd` sees only ours (so tests.integration.vms.LibvirtdControl works as it
is), and when the run ends, however it ends, the kernel kills every process left in it: no daemon
or QEMU survives. Its first process is a shell, which reaps the orphans (daemonised libvirtd, QEMU)
as an init does: libvirt waits on a dead QEMU that nobody reaps as if it were still alive.

Everything that talks to this libvirtd (the exporter, VM factories, signals to QEMU) must run in
the namespace: start the program with `reexec_in_namespace()` first thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tests.integration.vms import LIBVIRTD_TIMEOUT_S, libvirtd_answers, wait_for

URI = "qemu:///system"
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


def _write_config(log_dir: Path) -> None:
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    for daemon in ("libvirtd", "virtlogd"):
        Path(f"/etc/libvirt/{daemon}.conf").write_text(f'log_outputs = "3:file:{log_dir}/{daemon}.log"\n')


def start(workdir: Path) -> Path:
    """Mount the private directories, start virtlogd and libvirtd, and wait until libvirtd
    answers at URI. Returns the directory that holds the daemons' logs (outside the mounts)."""
    if not in_namespace():
        raise RuntimeError("start() outside the private namespace would touch the host's libvirtd")
    for daemon in ("libvirtd", "virtlogd", "qemu-img"):
        if shutil.which(daemon) is None:
            raise RuntimeError(f"{daemon} is missing: run scripts/ensure-libvirtd.sh, which installs it")
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    _mount_private_dirs(workdir / "mounts")
    _write_config(log_dir)
    subprocess.run(["virtlogd", "-d"], check=True)
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: libvirtd_answers(URI), LIBVIRTD_TIMEOUT_S, "the private libvirtd to answer")
    return log_dir

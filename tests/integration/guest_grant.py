"""The polkit grant of docs/security.md, tried as written: run as
`python -m tests.integration.guest_grant WORKDIR KERNEL INITRD`, it prints what it saw as JSON.

libvirt's polkit access driver asks polkitd, over the D-Bus system bus, about every call of a
client that is not root. Neither may be set up on a host's own libvirtd by a test, so this runs in
private mount and pid namespaces (tests/chaos/private_libvirtd.py): a D-Bus system bus, Debian's
polkitd with libvirt's actions and no rules but the one tried, and a libvirtd with
`access_drivers = [ "polkit" ]`, that boot the suite's guest (guest.py). The exporter runs as the
unprivileged user `nobody`, first without the grant, then with the rule of docs/security.md
(its user `libvirt-exporter` read as `nobody`).

libvirt's polkit actions come with Debian's libvirt-daemon-system, which also brings init scripts
and a default network that a test host's libvirtd must not get: scripts/ensure-libvirtd.sh keeps
its .deb in POLICY_DEB_DIR, and only the actions are unpacked from it, into the namespace.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libvirt

from tests.chaos import private_libvirtd
from tests.exposition import parse, value, value_including
from tests.integration.guest import GuestFiles, GuestKernel, start_guest_vm
from tests.integration.vms import Exporter, start_exporter, wait_for

POLICY_DEB_DIR = Path("/var/cache/libvirt-exporter-tests")
ACTIONS = Path("/usr/share/polkit-1/actions")
RULES = Path("/etc/polkit-1/rules.d")
SECURITY_DOC = Path(__file__).parents[2] / "docs" / "security.md"
ACCESS_CONTROL = 'access_drivers = [ "polkit" ]\nauth_unix_ro = "none"\nunix_sock_rw_perms = "0777"\n'
"""The access driver, as docs/security.md sets it; the sockets open to every user, as Debian's
are to the `libvirt` group, so that the permissions alone decide."""
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
EXPORTER_ARGS = (
    "--collector.guest",
    "--sampler.guest.interval=2s",
    "--sampler.guest.deadline=1s",
    "--sampler.bulk.interval=2s",
    "--sampler.bulk.deadline=1s",
)
WAIT = 120.0
"""The guest boots under pure emulation; the rest answers in seconds."""


def documented_rule() -> str:
    """The polkit rule of docs/security.md, for the user the test runs the exporter as."""
    (rule,) = re.findall(r"```js\n(.*?)```", SECURITY_DOC.read_text(), re.S)
    assert '"libvirt-exporter"' in rule
    return rule.replace('"libvirt-exporter"', '"nobody"')


def _libvirt_actions(workdir: Path) -> Path:
    """A copy of the host's polkit actions with libvirt's, unpacked from libvirt-daemon-system."""
    debs = sorted(POLICY_DEB_DIR.glob("libvirt-daemon-system_*.deb"))
    assert debs, f"no libvirt-daemon-system .deb in {POLICY_DEB_DIR}: run scripts/ensure-libvirtd.sh"
    unpacked = workdir / "libvirt-daemon-system"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
    actions = workdir / "actions"
    shutil.copytree(ACTIONS, actions)
    for policy in (unpacked / ACTIONS.relative_to("/")).glob("org.libvirt.*.policy"):
        shutil.copy(policy, actions)
    return actions


def _bind(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def start_polkit(workdir: Path) -> None:
    """A system bus and polkitd of the namespace's own (its /run is private), with libvirt's
    actions and an empty rules directory."""
    _bind(_libvirt_actions(workdir), ACTIONS)
    (workdir / "rules").mkdir()
    _bind(workdir / "rules", RULES)
    Path("/run/dbus").mkdir(parents=True, exist_ok=True)
    subprocess.run(["dbus-daemon", "--system", "--fork"], check=True)
    log = (workdir / "logs" / "polkitd.log").open("wb")
    subprocess.Popen(["/usr/lib/polkit-1/polkitd", "--no-debug"], stdout=log, stderr=log)
    wait_for(_polkit_answers, 30, "polkitd to take its name on the system bus")


def _polkit_answers() -> bool:
    asked = subprocess.run(
        ["dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
         "org.freedesktop.DBus.NameHasOwner", "string:org.freedesktop.PolicyKit1"],
        capture_output=True, text=True,
    )  # fmt: skip
    return "boolean true" in asked.stdout


def _run_exporter(workdir: Path, name: str) -> Exporter:
    return start_exporter(
        private_libvirtd.URI,
        EXPORTER_ARGS,
        workdir / "logs" / f"exporter-{name}.log",
        program=(*NOBODY, sys.executable, "-m", "libvirt_exporter"),
    )


def _until(exporter: Exporter, condition: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    give_up_at = time.monotonic() + WAIT
    while True:
        series = parse(exporter.scrape())
        if condition(series):  # type: ignore[operator]
            return series
        assert time.monotonic() < give_up_at, f"not seen within {WAIT:g} s:\n{exporter.log_text()}"
        time.sleep(0.2)


CONNECT_ONLY = """polkit.addRule(function(action, subject) {
    if (subject.user == "nobody" && action.id == "org.libvirt.unix.manage") {
        return polkit.Result.YES;
    }
});
"""
"""Half the grant: the read-write socket, without `domain:write`."""


def refused(workdir: Path, domain: str, rule: str, name: str) -> dict[str, object]:
    """The exporter as `nobody` under `rule` (none if empty): what it exports, and its log lines
    about the guest."""
    _set_rule(rule)
    exporter = _run_exporter(workdir, name)
    try:
        series = _until(
            exporter,
            lambda s: (
                (value(s, "libvirt_domain_sample_errors_total", domain=domain, sampler="guest") or 0) >= 3
                and value(s, "libvirt_domain_sample_stale", domain=domain, sampler="bulk") == 0
            ),
        )
    finally:
        exporter.stop()
    log = exporter.log_text().splitlines()
    return {
        "guest_errors": value(series, "libvirt_domain_sample_errors_total", domain=domain, sampler="guest"),
        "guest_stale": value(series, "libvirt_domain_sample_stale", domain=domain, sampler="guest"),
        "bulk_stale": value(series, "libvirt_domain_sample_stale", domain=domain, sampler="bulk"),
        "basic_stale": value(series, "libvirt_domain_sample_stale", domain=domain, sampler="basic"),
        "guest_log_lines": [line for line in log if "guest" in line],
        "error_log_lines": [line for line in log if "level=error" in line],
    }


def with_grant(workdir: Path, domain: str) -> dict[str, object]:
    """The documented rule in place: the exporter as `nobody` exports the guest's file systems."""
    _set_rule(documented_rule())
    exporter = _run_exporter(workdir, "with-grant")
    try:
        series = _until(
            exporter,
            lambda s: (
                value_including(s, "libvirt_domain_guest_filesystem_used_bytes", mountpoint="/data")
                is not None
            ),
        )
    finally:
        exporter.stop()
    return {
        "data_used_bytes": value_including(
            series, "libvirt_domain_guest_filesystem_used_bytes", mountpoint="/data"
        ),
        "guest_stale": value(series, "libvirt_domain_sample_stale", domain=domain, sampler="guest"),
        "error_log_lines": [line for line in exporter.log_text().splitlines() if "level=error" in line],
        "nobody_may": _what_nobody_may_do(domain),
    }


def _set_rule(rule: str) -> None:
    path = RULES / "50-libvirt-exporter.rules"
    if rule:
        path.write_text(rule)
    else:
        path.unlink(missing_ok=True)
    time.sleep(1)  # polkitd reloads its rules on a change of the directory: no event to wait on


NOBODY_TRIES = """
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *_: None, None)
dom = libvirt.open(sys.argv[1]).lookupByName(sys.argv[2])
tried = {}
for name, call in (("guestInfo", lambda: dom.guestInfo(0, 0)), ("suspend", dom.suspend),
                   ("destroy", dom.destroy)):
    try:
        call()
        tried[name] = "allowed"
    except libvirt.libvirtError as error:
        tried[name] = str(error)
print(json.dumps(tried))
"""


def _what_nobody_may_do(domain: str) -> dict[str, str]:
    """As `nobody`, on a read-write connection: read the agent, suspend, destroy."""
    done = subprocess.run(
        [*NOBODY, sys.executable, "-c", NOBODY_TRIES, private_libvirtd.URI, domain],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    tried: dict[str, str] = json.loads(done.stdout)
    return tried


def _agent_connected(conn: libvirt.virConnect, domain: str) -> bool:
    return "state='connected'" in conn.lookupByName(domain).XMLDesc(0)


def main(argv: list[str]) -> None:
    if not private_libvirtd.in_namespace():
        private_libvirtd.reexec_in_namespace("tests.integration.guest_grant", argv)
    workdir, kernel, initrd = (Path(arg) for arg in argv)
    libvirtd = private_libvirtd.prepare(workdir, libvirtd_conf=ACCESS_CONTROL)
    start_polkit(workdir)
    libvirtd.start()
    conn = libvirt.open(private_libvirtd.URI)
    domain = "lvexp-grant-guest"
    start_guest_vm(conn, domain, GuestKernel(kernel, initrd), GuestFiles(workdir / "guest"))
    wait_for(lambda: _agent_connected(conn, domain), WAIT, "the guest's agent to connect")
    seen = {
        "without_grant": refused(workdir, domain, "", "without-grant"),
        "connect_only": refused(workdir, domain, CONNECT_ONLY, "connect-only"),
        "with_grant": with_grant(workdir, domain),
    }
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1:])

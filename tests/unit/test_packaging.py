"""The packaging files, checked as an operator reviewing them would: the systemd unit
(systemd-analyze accepts it; it is hardened and still reaches libvirt's read-only socket),
its /etc/default file, the Debian maintainer scripts and the Kubernetes manifests.

The .deb itself is built, installed and run by tests/integration/test_deb.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from libvirt_exporter.cli import parse_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "libvirt-exporter.service"
DEFAULTS = PACKAGING / "systemd" / "libvirt-exporter.default"
DEBIAN = PACKAGING / "debian"
KUBERNETES = PACKAGING / "kubernetes"
PORT = 9177
IMAGE_UID = 65534  # nobody:nogroup, the container image's user (Dockerfile)

# --- systemd ------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file by "Section.Key", in order; systemd allows a key
    more than once (SystemCallFilter=), so each maps to all its values."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: `make test` installs Debian's systemd package"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """verify checks every directive and that ExecStart's program is executable. That program
    exists only once the .deb is installed (test_deb verifies the installed unit as it is), so
    here it is a stand-in at another path."""
    program = tmp_path / "libvirt-exporter"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/libvirt-exporter " in text
    unit.write_text(text.replace("ExecStart=/usr/bin/libvirt-exporter ", f"ExecStart={program} "))
    result = systemd_analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # warnings too


def test_the_unit_runs_the_exporter_with_the_defaults_files_args() -> None:
    settings = unit_settings(UNIT)
    assert settings["Service.EnvironmentFile"] == ["-/etc/default/libvirt-exporter"]
    assert settings["Service.ExecStart"] == ["/usr/bin/libvirt-exporter $ARGS"]
    assert settings["Service.User"] == ["libvirt-exporter"]
    assert settings["Install.WantedBy"] == ["multi-user.target"]


def test_the_unit_is_hardened() -> None:
    settings = unit_settings(UNIT)
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert settings.get(f"Service.{key}") == [value], key
    families = settings["Service.RestrictAddressFamilies"]
    assert [set(f.split()) for f in families] == [{"AF_UNIX", "AF_INET", "AF_INET6"}]
    assert "@system-service" in settings["Service.SystemCallFilter"]
    # Nothing may make a path writable again.
    assert not {"ReadWritePaths", "BindPaths", "StateDirectory"} & {key.partition(".")[2] for key in settings}


def exposure_score(unit: Path) -> float:
    result = systemd_analyze("security", "--offline=true", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_the_readme_reports_the_units_exposure_score() -> None:
    """The figure in the README is the one `systemd-analyze security` gives today."""
    score = exposure_score(UNIT)
    assert score < 2.0  # our bar; systemd rates 1.0 to 4.9 "OK", below 1.0 "SAFE"
    stated = re.search(r"exposure level of \*\*(\d+\.\d+)\*\*", (ROOT / "README.md").read_text())
    assert stated, "README.md states no exposure level of **N.N**"
    assert float(stated.group(1)) == score


def test_the_defaults_file_sets_args_as_debians_exporters_do() -> None:
    assignments = [
        line for line in DEFAULTS.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert assignments == ['ARGS=""']


# --- Debian -------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_valid_sh_that_stops_at_an_error(script: str) -> None:
    path = DEBIAN / script
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -e" in lines
    result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_defaults_file_is_a_conffile() -> None:
    assert (DEBIAN / "conffiles").read_text().split() == ["/etc/default/libvirt-exporter"]


def test_the_package_depends_on_its_python_and_libvirts_client_library() -> None:
    control = (DEBIAN / "control.in").read_text()
    depends = re.search(r"^Depends: (.*)$", control, re.MULTILINE)
    assert depends
    names = [d.split()[0] for d in depends.group(1).split(", ")]
    assert names[:2] == ["@PYTHON@", "libvirt0"]


# --- Kubernetes ---------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    """Every document of every YAML file under packaging/kubernetes, loaded safely."""
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return documents


def the(kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} manifests of kind {kind}"
    return found[0]


def exporter_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = the("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_manifest_is_a_kubernetes_object_in_one_namespace() -> None:
    documents = manifests()
    assert {doc["kind"] for doc in documents} >= {"Namespace", "DaemonSet", "Service", "ServiceMonitor"}
    namespace = the("Namespace")["metadata"]["name"]
    for doc in documents:
        assert {"apiVersion", "kind"} <= doc.keys()
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def test_the_kubernetes_objects_match_the_api_schemas() -> None:
    """Strict: a misspelt field (readOnlyRootFileSystem) fails, where Kubernetes would drop it
    without a word. The schemas ship with kubernetes-validate; no cluster is needed. The
    ServiceMonitor (a CRD) and the Kustomization have none there."""
    for doc in manifests():
        if doc["kind"] not in ("ServiceMonitor", "Kustomization"):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_files_that_exist() -> None:
    resources = the("Kustomization")["resources"]
    assert {"namespace.yaml", "daemonset.yaml", "service.yaml"} <= set(resources)
    for name in resources:
        assert (KUBERNETES / name).is_file(), name


def test_the_daemonset_mounts_the_hosts_libvirt_run_directory_read_only() -> None:
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in exporter_container()["volumeMounts"] if m["mountPath"] == "/run/libvirt"]
    assert len(mounts) == 1
    assert mounts[0]["readOnly"] is True
    assert volumes[mounts[0]["name"]]["hostPath"] == {"path": "/run/libvirt", "type": "Directory"}
    assert "--libvirt.uri=qemu:///system" in exporter_container()["args"]


def test_the_daemonset_sees_the_hosts_processes_and_image_storage_read_only() -> None:
    """What shows a hung VM without a call to it: QEMU's state in the host's /proc, and the mount
    points of disk images, whose probes find dead storage; every host path is read-only."""
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    images = [m for m in exporter_container()["volumeMounts"] if m["mountPath"] == "/var/lib/libvirt/images"]
    assert len(images) == 1 and images[0]["readOnly"] is True
    assert images[0]["mountPropagation"] == "HostToContainer", "NFS mounted later must show up"
    assert volumes[images[0]["name"]]["hostPath"]["path"] == "/var/lib/libvirt/images"
    host_paths = {m["name"] for m in exporter_container()["volumeMounts"] if "hostPath" in volumes[m["name"]]}
    assert all(m["readOnly"] for m in exporter_container()["volumeMounts"] if m["name"] in host_paths)


def test_the_exporter_runs_unprivileged() -> None:
    pod = the("DaemonSet")["spec"]["template"]["spec"]
    container = exporter_container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["runAsGroup"] == IMAGE_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container.get("privileged", False) is False
    for host_access in ("hostNetwork", "hostIPC"):
        assert not pod.get(host_access, False), host_access
    assert pod["automountServiceAccountToken"] is False


def test_the_image_is_tagged_with_the_projects_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert exporter_container()["image"] == f"libvirt-exporter:{version}"


def quantity(text: str) -> float:
    """A CPU or memory quantity as a number: "50m" -> 0.05, "64Mi" -> 67108864."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(text))
    assert match, text
    return float(match.group(1)) * units.get(match.group(2) or "", 1)


def test_the_exporter_has_resource_requests_within_limits() -> None:
    resources = exporter_container()["resources"]
    for resource in ("cpu", "memory"):
        assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource])


def test_probes_ask_the_landing_page_not_the_metrics() -> None:
    container = exporter_container()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"metrics": PORT}
    assert f"--web.listen-address=:{PORT}" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/", probe
        assert container[probe]["httpGet"]["port"] in (PORT, "metrics"), probe


def test_prometheus_finds_the_exporter_by_annotation_or_service_monitor() -> None:
    template = the("DaemonSet")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    service, monitor = the("Service"), the("ServiceMonitor")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert service_ports == {"metrics"}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_the_units_file_limit_leaves_room_for_every_connection_the_exporter_allows() -> None:
    """Past LimitNOFILE the exporter would fail accepts and libvirt connections with EMFILE; its
    own connection cap must bind first, beside libvirt's connections and the process's own."""
    config, _ = parse_config([])
    libvirt_connections = config.max_concurrent_calls + config.max_stuck_calls + 1
    (limit,) = unit_settings(UNIT)["Service.LimitNOFILE"]
    assert int(limit) >= config.web.max_connections + libvirt_connections + 64


def test_the_daemonset_states_the_web_limits() -> None:
    """The pod's memory limit is sized for them (docs/security.md), so they are stated, not implied."""
    args = exporter_container()["args"]
    config, _ = parse_config([a for a in args if a.startswith("--web.")])
    assert {a.split("=")[0] for a in args} >= {
        "--web.max-connections",
        "--web.read-timeout",
        "--web.write-timeout",
    }
    assert config.web.max_connections <= 256

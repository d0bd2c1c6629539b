"""The exporter itself, its connection to libvirtd, and the host it watches."""

from __future__ import annotations

from collections import Counter
from importlib.metadata import PackageNotFoundError, version

from libvirt_exporter import __version__
from libvirt_exporter.collector.domain import state_name
from libvirt_exporter.collector.families import Families, counter, gauge
from libvirt_exporter.collector.view import State
from libvirt_exporter.samplers import SamplerName

UP = gauge("libvirt_up", "1 while the connection to libvirtd is alive, else 0.", source="liveness probe")
RECONNECTS = counter(
    "libvirt_connection_reconnects",
    "Times the connection to libvirtd was opened again after it closed or failed.",
)
BUILD_INFO = gauge(
    "libvirt_exporter_build_info",
    "The exporter's version, with value 1.",
    ("version", "libvirt_python_version"),
)
HOST_INFO = gauge(
    "libvirt_host_info",
    "The libvirt host as libvirtd describes itself, with value 1.",
    ("hostname", "uri", "libvirt_version", "hypervisor", "hypervisor_version"),
    source="virConnectGetHostname, GetLibVersion, GetType, GetVersion",
)
DOMAINS = gauge(
    "libvirt_domains", "Domains by state, as of their last sample.", ("state",), source="state.state"
)
SPECS = (UP, RECONNECTS, BUILD_INFO, HOST_INFO, DOMAINS)


def _libvirt_python_version() -> str:
    try:
        return version("libvirt-python")
    except PackageNotFoundError:
        return "unknown"


_BUILD_LABELS = (__version__, _libvirt_python_version())


def collect(state: State) -> Families:
    families = Families()
    families.add(UP, (), 1.0 if state.up else 0.0)
    families.add(RECONNECTS, (), state.reconnects)
    families.add(BUILD_INFO, _BUILD_LABELS, 1)
    host = state.host
    if host is not None:
        labels = (
            host.hostname,
            state.uri,
            host.libvirt_version,
            host.hypervisor,
            host.hypervisor_version,
        )
        families.add(HOST_INFO, labels, 1)
    by_state = Counter(
        state_name(sample.values)
        for entry in state.domains
        if (sample := state.store.sample(SamplerName.BASIC, entry.subject)) is not None
        and "state.state" in sample.values
    )
    by_state["shutoff"] += state.inactive_left_out
    for name, count in sorted(by_state.items()):
        if not count:
            continue
        families.add(DOMAINS, (name,), count)
    return families

"""The exporter's settings, validated once at start-up so that nothing later has to doubt them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from libvirt_exporter.samplers import SamplerName

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


COLLECTOR_DEFAULTS: dict[str, bool] = {
    "cpu": True,
    "balloon": True,
    "vcpu": True,
    "interface": True,
    "block": True,
    "iothread": True,
    "memory": True,
    "job": True,
    "storage_pool": True,
    "perf": False,
    "dirtyrate": False,
}
"""Each `--collector.<name>`: the cheap groups are on; perf counters and dirty-rate measurement,
which cost the host, are off."""


class ConfigError(ValueError):
    """A setting that cannot work; its message is shown to the operator as the one line of error."""


def parse_duration(text: str) -> float:
    """Seconds from a Prometheus-style duration (`15s`, `500ms`, `1m`) or a bare number of seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"{text!r} is not a duration (examples: 15s, 500ms, 1m, 2.5)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"{text!r} is not a positive duration")
    return seconds


def parse_listen_address(text: str) -> tuple[str, int]:
    """(host, port) from `host:port`, `:port` (every address) or `[v6-address]:port`."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"listen address {text!r} is not host:port (examples: :9177, [::]:9177)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"listen address {text!r}: put an IPv6 address in brackets, as [::1]:9177")
    return host, int(port_text)


@dataclass(frozen=True)
class SamplerConfig:
    """How often one sampler runs, and how long one of its calls may run before it counts as stuck."""

    name: SamplerName
    interval: float
    deadline: float

    def __post_init__(self) -> None:
        if self.deadline > self.interval:
            raise ConfigError(
                f"sampler {self.name}: the deadline ({self.deadline:g}s) must not be longer "
                f"than the interval ({self.interval:g}s)"
            )

    @property
    def stale_after(self) -> float:
        """Age past which the values served for a domain no longer come from a recent cycle.

        A cycle may take three deadlines to bring a domain's values: when the bulk sampler's
        host-wide call waits on a VM frozen since the last cycle, the call's deadline, the survey
        that finds which VM it waits on, then the domain's own call. Until then the values of the
        cycle before are current, not stale (a failed call marks them stale at once anyway)."""
        return self.interval + 3 * self.deadline


@dataclass(frozen=True)
class Config:
    """Everything the exporter needs to know to start."""

    listen_host: str
    listen_port: int
    telemetry_path: str
    libvirt_uri: str
    samplers: tuple[SamplerConfig, ...]
    max_concurrent_calls: int
    max_stuck_calls: int
    collectors: frozenset[str] = frozenset(name for name, on in COLLECTOR_DEFAULTS.items() if on)
    include_inactive: bool = False
    web_config_file: str = ""
    connect_deadline: float = 10.0

    def __post_init__(self) -> None:
        if not self.telemetry_path.startswith("/") or self.telemetry_path == "/":
            raise ConfigError(f"telemetry path {self.telemetry_path!r} must start with / and not be / itself")
        if self.max_concurrent_calls < 1:
            raise ConfigError("--sampler.max-concurrent-calls must be at least 1")
        if self.max_stuck_calls < 1:
            raise ConfigError("--sampler.max-stuck-calls must be at least 1")

    def enabled(self, collector: str) -> bool:
        return collector in self.collectors

    def sampler(self, name: SamplerName) -> SamplerConfig:
        """The settings of the sampler called `name`."""
        return next(s for s in self.samplers if s.name == name)

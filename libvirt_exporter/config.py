"""The exporter's settings, validated once at start-up so that nothing later has to doubt them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from libvirt_exporter.domain_xml import MetadataField
from libvirt_exporter.samplers import SamplerName

_DURATION_UNITS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
"""Prometheus' duration units, largest first; a year is 365 days and a week 7, as in Prometheus."""
_PROMETHEUS_DURATION = re.compile(
    "".join(rf"(?:(?P<{unit}>\d+){unit})?" for unit in _DURATION_UNITS).join("^$")
)
"""Prometheus' own syntax: whole numbers, each unit at most once and in descending order (`1h30m`)."""
_DECIMAL_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)?$")
"""One number, which may have decimals, with one unit or none (seconds): `2.5`, `0.5s`, `1.5h`."""


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
    "guest": False,
}
"""Each `--collector.<name>`: the cheap groups are on; perf counters and dirty-rate measurement,
which cost the host, are off, and so is the guest agent's sampler, which needs more than a
read-only connection (samplers/guest.py)."""


class ConfigError(ValueError):
    """A setting that cannot work; its message is shown to the operator as the one line of error."""


def parse_duration(text: str) -> float:
    """Seconds from a Prometheus duration (`15s`, `250ms`, `1h30m`, `1d`), from one number with one
    unit that may have decimals (`1.5m`), or from a bare number of seconds (`2.5`)."""
    stripped = text.strip()
    seconds = _decimal_duration(stripped)
    if seconds is None:
        seconds = _prometheus_duration(stripped)
    if seconds is None:
        raise ConfigError(f"{text!r} is not a duration (examples: 15s, 500ms, 1h30m, 1d, 2.5)")
    if seconds <= 0:
        raise ConfigError(f"{text!r} is not a positive duration")
    return seconds


def _decimal_duration(text: str) -> float | None:
    match = _DECIMAL_DURATION.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _prometheus_duration(text: str) -> float | None:
    match = _PROMETHEUS_DURATION.match(text)
    if match is None or not text:
        return None
    return sum(int(count) * _DURATION_UNITS[unit] for unit, count in match.groupdict().items() if count)


def parse_bounded_duration(text: str, flag: str, minimum: float, maximum: float) -> float:
    """`parse_duration`, refusing a value outside [minimum, maximum]: an interval of a microsecond
    would spin a core on warnings, and one of a century overflows gevent's timers."""
    seconds = parse_duration(text)
    if not minimum <= seconds <= maximum:
        raise ConfigError(
            f"{flag}={text}: must be between {format_duration(minimum)} and {format_duration(maximum)}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling of a whole number of milliseconds, for messages."""
    millis = round(seconds * 1000)
    parts = []
    for unit, size in _DURATION_UNITS.items():
        count, millis = divmod(millis, round(size * 1000))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


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


_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
"""An element or attribute name without a prefix: the namespace is given once for all."""
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = ("domain", "title", "description")
"""The labels `libvirt_domain_metadata_info` has whatever the flags say."""
METADATA_SYNTAX = "NAMESPACE=[LABEL:]PATH[,...], PATH as element/element/@attribute"


def parse_metadata_flag(text: str) -> tuple[MetadataField, ...]:
    """One `--libvirt.metadata`: an XML namespace, `=`, then the elements or attributes to export,
    each a path from the namespace's element under <metadata> (`instance/owner/@email`), with the
    label's name before a colon or, without one, the path's last name (`email`)."""
    namespace, sep, items = text.rpartition("=")
    if not sep or not namespace.strip() or any(c.isspace() for c in namespace) or not items:
        raise ConfigError(f"--libvirt.metadata={text}: expected {METADATA_SYNTAX}")
    return tuple(_metadata_field(text, namespace, item) for item in items.split(","))


def _metadata_field(flag: str, namespace: str, item: str) -> MetadataField:
    label, _, path_text = item.rpartition(":")
    names = path_text.split("/")
    attribute = names.pop()[1:] if names[-1].startswith("@") else None
    wrong = f"--libvirt.metadata={flag}:"
    checked = names if attribute is None else [*names, attribute]
    if not names or not all(_XML_NAME.match(name) for name in checked):
        raise ConfigError(f"{wrong} {path_text!r} is not a path ({METADATA_SYNTAX})")
    label = label or (attribute or names[-1]).replace("-", "_").replace(".", "_")
    if not _LABEL_NAME.match(label) or label.startswith("__"):
        raise ConfigError(f"{wrong} {label!r} is not a label name")
    if label in RESERVED_LABELS:
        raise ConfigError(f"{wrong} the label {label!r} is taken; name it LABEL:{path_text}")
    return MetadataField(namespace, tuple(names), attribute or "", label)


def check_metadata_labels(fields: tuple[MetadataField, ...]) -> None:
    """Two fields may not share a label, whichever flags they come from."""
    seen: set[str] = set()
    for field in fields:
        if field.label in seen:
            raise ConfigError(
                f"--libvirt.metadata: the label {field.label!r} is given twice; name one LABEL:PATH"
            )
        seen.add(field.label)


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


MIN_INTERVAL, MAX_INTERVAL = 1.0, 86400.0
"""A sampler's interval: samples finer than a second serve no scrape, and one cycle a day is the
coarsest that still tells anything."""
MIN_DEADLINE = 0.1
"""A libvirt call answers in milliseconds; a deadline shorter than this would count healthy calls
as timeouts."""
MIN_WEB_TIMEOUT, MAX_WEB_TIMEOUT = 1.0, 3600.0
"""`--web.read-timeout` and `--web.write-timeout`: a second is the least a client across a network
needs; past an hour a held connection is no longer bounded in any useful sense."""


@dataclass(frozen=True)
class WebLimits:
    """What one client may hold of the exporter, and for how long (docs/security.md)."""

    read_timeout: float = 60.0
    """Seconds a connection has to deliver its next request's line and headers, TLS handshake and
    keep-alive idle time included. Longer than any sensible scrape interval, so that Prometheus
    keeps its connection."""
    write_timeout: float = 60.0
    """Seconds from a complete request head to the last byte of the answer taken by the client."""
    max_connections: int = 256
    """Open connections at once; kept well below the process's file descriptor limit."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError("--web.max-connections must be at least 1")


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
    web: WebLimits = WebLimits()
    metadata: tuple[MetadataField, ...] = ()
    """What to export from each domain's <metadata> as labels (`--libvirt.metadata`)."""
    guest_uri: str = ""
    """Where the guest sampler opens its read-write lanes (`--sampler.guest.uri`); empty: the
    libvirt URI."""
    log_level: str = "info"
    log_format: str = "logfmt"

    def __post_init__(self) -> None:
        check_metadata_labels(self.metadata)
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

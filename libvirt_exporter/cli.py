"""Command line: Prometheus-style flags, one line of error for a wrong one, then run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import NoReturn

from libvirt_exporter import __version__
from libvirt_exporter.config import (
    COLLECTOR_DEFAULTS,
    MAX_INTERVAL,
    MAX_WEB_TIMEOUT,
    MIN_DEADLINE,
    MIN_INTERVAL,
    MIN_WEB_TIMEOUT,
    Config,
    ConfigError,
    SamplerConfig,
    WebLimits,
    parse_bounded_duration,
    parse_listen_address,
    parse_metadata_flag,
)
from libvirt_exporter.logs import FORMATS, LEVELS, get_logger, setup_logging
from libvirt_exporter.samplers import SamplerName
from libvirt_exporter.web_config import load_web_config

log = get_logger("libvirt_exporter")

SURVEY_DEADLINES = {SamplerName.BASIC: None, SamplerName.STORAGE: 1.0}
"""The samplers that survey the host at the start of each round (samplers/basic.py), which run as
often as the most frequent of the others: their deadline when no flag gives one, in seconds, at most
the bulk sampler's (None: the bulk sampler's)."""
SAMPLER_DEFAULTS = {
    SamplerName.BULK: ("15s", "5s"),
    SamplerName.JOB: ("15s", "5s"),
    SamplerName.STORAGE_POOL: ("60s", "10s"),
    SamplerName.GUEST: ("60s", "5s"),
}
"""Each sampler's interval and deadline; the guest agent's calls cost the guest most, so its
sampler runs least often."""
DISK_INTERVALS = {SamplerName.BLOCK: None, SamplerName.BLOCK_INFO: "5m"}
"""The samplers whose values come with the bulk sampler's calls (samplers/block.py, block_info.py),
under its deadline: the disks' counters each cycle (None: the bulk sampler's interval), their sizes,
which change slowly and cost a round trip to QEMU per disk, every 5 minutes (docs/benchmarks.md)."""

RETIRED_FLAGS = {
    "--sampler.block.interval": "the disks' I/O counters come with each bulk cycle "
    "(--sampler.bulk.interval), their sizes every --sampler.block_info.interval",
    "--sampler.block.deadline": "the disks' values come with the bulk sampler's calls, under "
    "--sampler.bulk.deadline",
}
"""Flags of earlier versions that no longer do anything: still accepted, so that a service whose
flags name them starts after an upgrade, and each given one is logged with what took its place."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line that says what is wrong, and exit 2 (argparse would add its usage block)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="libvirt-exporter",
        description="Prometheus exporter for libvirt hosts; scrapes are answered from a cached "
        "snapshot and never wait for libvirt or QEMU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"libvirt-exporter {__version__}")
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=":9177",
        help="address to listen on: host:port, :port or [v6-address]:port",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path under which to expose metrics",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        help="exporter-toolkit web config file: TLS, basic auth, response headers",
    )
    parser.add_argument(
        "--web.read-timeout",
        dest="web_read_timeout",
        default="1m",
        help="how long a connection may take to send its next request's line and headers, TLS "
        "handshake and keep-alive idle time included, before it is closed",
    )
    parser.add_argument(
        "--web.write-timeout",
        dest="web_write_timeout",
        default="1m",
        help="how long an answer may take from a complete request to its last byte taken by the "
        "client, before the connection is closed",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="web_max_connections",
        type=int,
        default=256,
        help="open connections at once; at the cap, the one that has waited longest for its request "
        "is closed to make room for a new one (keep it below the file descriptor limit, LimitNOFILE)",
    )
    parser.add_argument(
        "--libvirt.uri",
        dest="uri",
        default="qemu:///system",
        help="libvirt URI to connect to (read-only)",
    )
    for name, (interval, deadline) in SAMPLER_DEFAULTS.items():
        parser.add_argument(
            f"--sampler.{name}.interval",
            dest=f"{name}_interval",
            default=interval,
            help=f"how often the {name} sampler runs",
        )
        parser.add_argument(
            f"--sampler.{name}.deadline",
            dest=f"{name}_deadline",
            default=deadline,
            help=f"how long a {name} call may run before it counts as a timeout; it never delays a scrape",
        )
    for flag in RETIRED_FLAGS:
        parser.add_argument(flag, dest=_retired_dest(flag), help=argparse.SUPPRESS)
    parser.add_argument(
        "--sampler.block_info.interval",
        dest="block_info_interval",
        default=DISK_INTERVALS[SamplerName.BLOCK_INFO],
        help="how often each disk's capacity, allocation and physical size are read again, with the "
        "bulk sampler's calls; the disks' I/O counters come with every bulk cycle",
    )
    parser.add_argument(
        "--sampler.basic.deadline",
        dest="basic_deadline",
        default="",
        help="how long the survey of the host (domains, their state, CPU time and network counters, "
        "all read without QEMU) may run before it counts as a timeout (default: the bulk sampler's)",
    )
    parser.add_argument(
        "--sampler.storage.deadline",
        dest="storage_deadline",
        default="",
        help="how long a storage may take to answer its probe before its VMs get no call that "
        "touches their disks (default: 1s, or the bulk sampler's deadline if shorter)",
    )
    parser.add_argument(
        "--sampler.guest.uri",
        dest="guest_uri",
        default="",
        help="libvirt URI the guest sampler opens read-write, for its calls alone, which libvirt "
        "refuses on a read-only connection (default: --libvirt.uri; see docs/security.md)",
    )
    parser.add_argument(
        "--sampler.max-concurrent-calls",
        dest="max_concurrent",
        type=int,
        default=4,
        help="libvirt calls within their deadline at once (each takes one of libvirtd's workers)",
    )
    parser.add_argument(
        "--sampler.max-stuck-calls",
        dest="max_stuck",
        type=int,
        default=12,
        help="threads that calls stuck past their deadline may hold before new calls are skipped; "
        "each also holds one of libvirtd's workers (20 by default, shared by every client)",
    )
    parser.add_argument(
        "--libvirt.metadata",
        dest="metadata",
        action="append",
        default=[],
        help="export elements or attributes of the domains' <metadata> as labels of "
        "libvirt_domain_metadata_info: NAMESPACE=[LABEL:]PATH[,...], e.g. "
        "'https://example.com/ops=ops/team,owner:ops/owner/@email'; repeatable",
    )
    parser.add_argument(
        "--libvirt.include-inactive",
        dest="include_inactive",
        action="store_true",
        help="also export defined but shut-off domains",
    )
    for collector, default in COLLECTOR_DEFAULTS.items():
        parser.add_argument(
            f"--collector.{collector}",
            dest=f"collector_{collector}",
            default=default,
            action=argparse.BooleanOptionalAction,
            help=f"the {collector} collector (--no-collector.{collector} turns it off)",
        )
    parser.add_argument("--log.level", dest="log_level", default="info", choices=list(LEVELS))
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=FORMATS)
    return parser


def _survey_samplers(
    samplers: tuple[SamplerConfig, ...], args: argparse.Namespace
) -> tuple[SamplerConfig, ...]:
    """The survey's samplers: as often as the most frequent sampler, deadlines no longer than bulk's."""
    round_interval = min(sampler.interval for sampler in samplers)
    bulk_deadline = next(s.deadline for s in samplers if s.name is SamplerName.BULK)
    survey = []
    for name, default in SURVEY_DEADLINES.items():
        given = getattr(args, f"{name}_deadline")
        flag = f"--sampler.{name}.deadline"
        deadline = (
            parse_bounded_duration(given, flag, MIN_DEADLINE, MAX_INTERVAL)
            if given
            else min(default or bulk_deadline, bulk_deadline)
        )
        survey.append(SamplerConfig(name, round_interval, deadline))
    return tuple(survey)


def _disk_samplers(
    samplers: tuple[SamplerConfig, ...], args: argparse.Namespace
) -> tuple[SamplerConfig, ...]:
    """The disks' samplers: the bulk sampler's deadline, and its interval or their own."""
    bulk = next(s for s in samplers if s.name is SamplerName.BULK)
    disks = []
    for name, default in DISK_INTERVALS.items():
        flag = f"--sampler.{name}.interval"
        interval = (
            parse_bounded_duration(getattr(args, f"{name}_interval"), flag, MIN_INTERVAL, MAX_INTERVAL)
            if default is not None
            else bulk.interval
        )
        disks.append(replace(bulk, name=name, interval=interval))
    return tuple(disks)


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Flags to a validated Config; any mistake exits 2 with one line."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen_address(args.listen_address)
        samplers = tuple(_sampler(args, name) for name in SAMPLER_DEFAULTS)
        samplers += _survey_samplers(samplers, args) + _disk_samplers(samplers, args)
        collectors = frozenset(name for name in COLLECTOR_DEFAULTS if getattr(args, f"collector_{name}"))
        config = Config(
            host,
            port,
            args.telemetry_path,
            args.uri,
            samplers,
            args.max_concurrent,
            args.max_stuck,
            collectors,
            args.include_inactive,
            args.web_config_file,
            web=_web_limits(args),
            metadata=tuple(field for flag in args.metadata for field in parse_metadata_flag(flag)),
            guest_uri=args.guest_uri,
            log_level=args.log_level,
            log_format=args.log_format,
        )
        if config.web_config_file:
            load_web_config(config.web_config_file)  # a file that cannot work stops us here
    except ConfigError as error:
        parser.error(str(error))
    return config, args


def _retired_dest(flag: str) -> str:
    return "retired_" + flag.removeprefix("--").replace(".", "_")


def warn_of_retired_flags(args: argparse.Namespace) -> None:
    for flag, instead in RETIRED_FLAGS.items():
        if getattr(args, _retired_dest(flag)) is not None:
            log.warning("flag no longer has an effect", flag=flag, instead=instead)


def _sampler(args: argparse.Namespace, name: SamplerName) -> SamplerConfig:
    interval = getattr(args, f"{name}_interval")
    deadline = getattr(args, f"{name}_deadline")
    return SamplerConfig(
        name,
        parse_bounded_duration(interval, f"--sampler.{name}.interval", MIN_INTERVAL, MAX_INTERVAL),
        parse_bounded_duration(deadline, f"--sampler.{name}.deadline", MIN_DEADLINE, MAX_INTERVAL),
    )


def _web_limits(args: argparse.Namespace) -> WebLimits:
    def timeout(text: str, flag: str) -> float:
        return parse_bounded_duration(text, flag, MIN_WEB_TIMEOUT, MAX_WEB_TIMEOUT)

    return WebLimits(
        read_timeout=timeout(args.web_read_timeout, "--web.read-timeout"),
        write_timeout=timeout(args.web_write_timeout, "--web.write-timeout"),
        max_connections=args.web_max_connections,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse_config(argv)
    setup_logging(config.log_level, config.log_format)
    warn_of_retired_flags(args)
    from libvirt_exporter.app import Exporter  # imports gevent and libvirt only once flags are good
    from libvirt_exporter.front_link import FrontFailed

    log.info("starting libvirt-exporter", version=__version__, uri=config.libvirt_uri)
    if config.libvirt_uri.startswith("test://"):
        log.info("libvirt's built-in test driver: demo domains, not this host's VMs")
    try:
        Exporter(config).serve_forever()
    except OSError as error:
        print(
            f"libvirt-exporter: error: cannot listen on {args.listen_address}: {error.strerror}",
            file=sys.stderr,
        )
        return 1
    except FrontFailed as error:
        print(f"libvirt-exporter: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0

"""Flags: Prometheus-style names, and one clear line (exit 2) for anything wrong."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from libvirt_exporter.cli import parse_config
from libvirt_exporter.config import ConfigError, parse_duration, parse_listen_address


def test_defaults() -> None:
    config, args = parse_config([])
    assert (config.listen_host, config.listen_port) == ("", 9177)
    assert config.telemetry_path == "/metrics"
    assert config.libvirt_uri == "qemu:///system"
    assert config.sampler("bulk").interval == 15 and config.sampler("bulk").deadline == 5
    assert config.sampler("block").stale_after == 30
    assert args.log_level == "info" and args.log_format == "logfmt"


def test_collector_switches_and_inactive_domains() -> None:
    config, _ = parse_config([])
    assert config.enabled("block") and not config.enabled("perf") and not config.include_inactive
    config, _ = parse_config(["--no-collector.block", "--collector.perf", "--libvirt.include-inactive"])
    assert not config.enabled("block") and config.enabled("perf") and config.include_inactive


def test_flags_are_read() -> None:
    config, _ = parse_config(
        [
            "--web.listen-address=[::1]:9200",
            "--libvirt.uri=test:///default",
            "--sampler.block.interval=1m",
            "--sampler.block.deadline=500ms",
        ]
    )
    assert (config.listen_host, config.listen_port) == ("::1", 9200)
    assert config.libvirt_uri == "test:///default"
    assert config.sampler("block").interval == 60 and config.sampler("block").deadline == 0.5


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--web.listen-address=9177"], "is not host:port"),
        (["--web.listen-address=::1:9177"], "put an IPv6 address in brackets"),
        (["--sampler.bulk.interval=soon"], "is not a duration"),
        (["--sampler.bulk.deadline=20s"], "must not be longer than the interval"),
        (["--web.telemetry-path=metrics"], "must start with /"),
        (["--log.level=loud"], "invalid choice: 'loud'"),
    ],
)
def test_a_wrong_flag_exits_2_with_one_line(flags: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "libvirt_exporter", *flags], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "libvirt_exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                "--libvirt.uri=test:///default",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.splitlines()[-1]


def test_durations_and_addresses() -> None:
    assert parse_duration("2.5") == 2.5 and parse_duration("1h") == 3600
    assert parse_listen_address(":9177") == ("", 9177)
    with pytest.raises(ConfigError):
        parse_duration("0s")
    with pytest.raises(ConfigError):
        parse_listen_address("host:99999")

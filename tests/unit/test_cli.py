"""Flags: Prometheus-style names, and one clear line (exit 2) for anything wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from libvirt_exporter.cli import parse_config
from libvirt_exporter.config import ConfigError, parse_duration, parse_listen_address
from libvirt_exporter.domain_xml import MetadataField


def test_defaults() -> None:
    config, args = parse_config([])
    assert (config.listen_host, config.listen_port) == ("", 9177)
    assert config.telemetry_path == "/metrics"
    assert config.libvirt_uri == "qemu:///system"
    assert config.sampler("bulk").interval == 15 and config.sampler("bulk").deadline == 5
    assert config.sampler("block").stale_after == 30
    block_info = config.sampler("block_info")
    assert block_info.interval == 300 and block_info.stale_after == 315, "sizes: every 5 minutes"
    assert args.log_level == "info" and args.log_format == "logfmt"


def test_collector_switches_and_inactive_domains() -> None:
    config, _ = parse_config([])
    assert config.enabled("block") and not config.enabled("perf") and not config.include_inactive
    config, _ = parse_config(["--no-collector.block", "--collector.perf", "--libvirt.include-inactive"])
    assert not config.enabled("block") and config.enabled("perf") and config.include_inactive


def test_metadata_flags_name_a_namespace_and_paths_each_with_its_label() -> None:
    config, _ = parse_config(
        [
            "--libvirt.metadata=https://example.com/ops?v=1=ops/team,mail:ops/owner/@email",
            "--libvirt.metadata=urn:app=app/cost-center,app/@tier",
        ]
    )
    assert config.metadata == (
        MetadataField("https://example.com/ops?v=1", ("ops", "team"), "", "team"),
        MetadataField("https://example.com/ops?v=1", ("ops", "owner"), "email", "mail"),
        MetadataField("urn:app", ("app", "cost-center"), "", "cost_center"),
        MetadataField("urn:app", ("app",), "tier", "tier"),
    )
    assert parse_config([])[0].metadata == ()


def test_flags_are_read() -> None:
    config, _ = parse_config(
        [
            "--web.listen-address=[::1]:9200",
            "--libvirt.uri=test:///default",
            "--sampler.bulk.interval=1m",
            "--sampler.bulk.deadline=500ms",
            "--sampler.block_info.interval=10m",
        ]
    )
    assert (config.listen_host, config.listen_port) == ("::1", 9200)
    assert config.libvirt_uri == "test:///default"
    assert config.sampler("bulk").interval == 60 and config.sampler("bulk").deadline == 0.5
    # The disks' values come with the bulk sampler's calls, under its deadline.
    assert config.sampler("block").interval == 60 and config.sampler("block").deadline == 0.5
    assert config.sampler("block_info").interval == 600 and config.sampler("block_info").deadline == 0.5


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
        (["--sampler.bulk.interval=0.001ms"], "--sampler.bulk.interval=0.001ms: must be between 1s and 1d"),
        (["--sampler.job.deadline=10ms"], "--sampler.job.deadline=10ms: must be between 100ms and 1d"),
        (["--sampler.block_info.interval=2d"], "--sampler.block_info.interval=2d: must be between 1s and 1d"),
        (["--sampler.storage.deadline=1ms"], "--sampler.storage.deadline=1ms: must be between 100ms and 1d"),
        (["--sampler.job.interval=1y"], "must be between 1s and 1d"),
        (["--sampler.bulk.interval=30m1h"], "is not a duration"),
        (["--web.read-timeout=500ms"], "--web.read-timeout=500ms: must be between 1s and 1h"),
        (["--web.write-timeout=2h"], "--web.write-timeout=2h: must be between 1s and 1h"),
        (["--web.max-connections=0"], "--web.max-connections must be at least 1"),
        (["--libvirt.metadata=team"], "--libvirt.metadata=team: expected NAMESPACE=[LABEL:]PATH"),
        (["--libvirt.metadata=urn:x=ops/@"], "'ops/@' is not a path"),
        (["--libvirt.metadata=urn:x=ops/1st"], "'ops/1st' is not a path"),
        (["--libvirt.metadata=urn:x=team-name:ops/team"], "'team-name' is not a label name"),
        (["--libvirt.metadata=urn:x=ops/title"], "the label 'title' is taken; name it LABEL:ops/title"),
        (
            ["--libvirt.metadata=urn:x=ops/team", "--libvirt.metadata=urn:y=app/team"],
            "the label 'team' is given twice",
        ),
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


def exporter_command(port: int, *flags: str) -> list[str]:
    """The exporter on libvirt's test driver, listening on `port`."""
    address = f"--web.listen-address=127.0.0.1:{port}"
    return [sys.executable, "-m", "libvirt_exporter", address, "--libvirt.uri=test:///default", *flags]


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            exporter_command(port),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.splitlines()[-1]


def test_a_retired_flag_is_accepted_and_logged_with_what_took_its_place() -> None:
    """An upgraded service whose flags name one still starts (here it stops at once on the port)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ("--sampler.block.interval=30s", "--sampler.block.deadline=5s")
        result = subprocess.run(exporter_command(port, *flags), capture_output=True, text=True, timeout=30)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.splitlines()[-1], result.stderr
    warnings = [line for line in result.stderr.splitlines() if "flag no longer has an effect" in line]
    assert len(warnings) == 2, result.stderr
    assert "--sampler.block.interval" in warnings[0] and "--sampler.block_info.interval" in warnings[0]
    assert "--sampler.block.deadline" in warnings[1] and "--sampler.bulk.deadline" in warnings[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2.5", 2.5),
        ("15", 15),
        ("250ms", 0.25),
        ("15s", 15),
        ("1m", 60),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1w", 7 * 86400),
        ("1y", 365 * 86400),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5m", 90),
        ("0.5s", 0.5),
    ],
)
def test_durations_take_prometheus_syntax_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0s", "0", "", "1h1h", "30m1h", "1.5h30m", "ms", "-1s", "1x", "1 h"])
def test_a_duration_that_is_not_one_or_not_positive_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_every_duration_flag_takes_the_full_syntax() -> None:
    config, _ = parse_config(
        [
            "--sampler.storage_pool.interval=1h30m",
            "--sampler.storage_pool.deadline=1m30s",
            "--web.read-timeout=1m30s",
            "--web.write-timeout=45s",
            "--web.max-connections=64",
        ]
    )
    assert (config.sampler("storage_pool").interval, config.sampler("storage_pool").deadline) == (5400, 90)
    assert (config.web.read_timeout, config.web.write_timeout, config.web.max_connections) == (90, 45, 64)


def test_the_web_limits_default_to_a_minute_each_and_256_connections() -> None:
    config, _ = parse_config([])
    assert (config.web.read_timeout, config.web.write_timeout, config.web.max_connections) == (60, 60, 256)


def test_addresses() -> None:
    assert parse_listen_address(":9177") == ("", 9177)
    with pytest.raises(ConfigError):
        parse_listen_address("host:99999")


def test_the_exporter_serves_under_the_web_flags() -> None:
    """`--web.read-timeout` reaches the server: a silent connection is let go after it, not after
    the default minute."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        exporter_command(port, "--web.read-timeout=1s"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stderr is not None
        while "msg=listening" not in exporter.stderr.readline():
            assert exporter.poll() is None, "the exporter exited"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(64) == b""
            assert time.monotonic() - started < 5
    finally:
        exporter.terminate()
        exporter.wait(timeout=20)

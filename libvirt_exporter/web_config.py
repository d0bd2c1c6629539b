"""`--web.config.file`: TLS, basic auth and response headers, in the format of Prometheus'
exporter-toolkit, so that one file serves this exporter and node_exporter alike.

Everything is checked when the exporter starts: a file that cannot work stops it with one line
that says what is wrong, rather than a server that half works.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from gevent import ssl as gevent_ssl

from libvirt_exporter.config import ConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
"""Python's ssl module cannot ask for a client certificate without verifying it, so the toolkit's
RequestClientCert and RequireAnyClientCert are refused with a clear message."""
HEADERS = {
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
}
"""The response headers the exporter-toolkit lets a web config set."""


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    """User name to bcrypt hash."""
    headers: tuple[tuple[str, str], ...] = ()


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    return value


def _only(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown or unsupported field {unknown[0]!r}")


def _tls(section: dict[str, Any], base: Path) -> ssl.SSLContext | None:
    if not section:
        return None
    where = "tls_server_config"
    _only(
        section,
        {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"},
        where,
    )
    if not section.get("cert_file") or not section.get("key_file"):
        raise ConfigError(f"{where}: cert_file and key_file are both required")
    # gevent's context makes gevent sockets: the standard one's would block the whole hub on a
    # client that is slow to handshake or to send its request.
    context: ssl.SSLContext = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(section.get("min_version", "TLS12"), f"{where}.min_version")
    if "max_version" in section:
        context.maximum_version = _version(section["max_version"], f"{where}.max_version")
    try:
        context.load_cert_chain(base / section["cert_file"], base / section["key_file"])
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{where}: cannot load cert_file and key_file: {error}") from error
    _client_auth(context, section, base, where)
    return context


def _version(name: Any, where: str) -> ssl.TLSVersion:
    if name not in TLS_VERSIONS:
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[name]


def _client_auth(context: ssl.SSLContext, section: dict[str, Any], base: Path, where: str) -> None:
    auth_type = section.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH:
        raise ConfigError(f"{where}.client_auth_type: {auth_type!r} is not one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    ca_file = section.get("client_ca_file")
    if auth_type != "NoClientCert" and not ca_file:
        raise ConfigError(f"{where}: client_auth_type {auth_type} needs client_ca_file")
    if ca_file:
        try:
            context.load_verify_locations(base / ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{where}: cannot load client_ca_file: {error}") from error


def _users(section: dict[str, Any]) -> dict[str, bytes]:
    users = {}
    for name, hashed in section.items():
        text = str(hashed)
        if not text.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"basic_auth_users: the password of {name!r} is not a bcrypt hash")
        users[str(name)] = text.encode()
    return users


def _headers(section: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    _only(section, {"headers", "http2"}, "http_server_config")
    headers = _mapping(section.get("headers"), "http_server_config.headers")
    for name in headers:
        if name not in HEADERS:
            raise ConfigError(
                f"http_server_config.headers: {name!r} may not be set (allowed: {', '.join(sorted(HEADERS))})"
            )
    return tuple((str(name), str(value)) for name, value in headers.items())


def load_web_config(path: str) -> WebConfig:
    """Parse and check the file; paths in it are relative to the file's own folder."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"web config {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"web config {path}: not valid YAML: {str(error).splitlines()[0]}") from error
    try:
        top = _mapping(document, "the web config")
        _only(top, {"tls_server_config", "http_server_config", "basic_auth_users"}, "web config")
        base = Path(path).resolve().parent
        return WebConfig(
            ssl_context=_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), base),
            users=_users(_mapping(top.get("basic_auth_users"), "basic_auth_users")),
            headers=_headers(_mapping(top.get("http_server_config"), "http_server_config")),
        )
    except ConfigError as error:
        raise ConfigError(f"web config {path}: {error}") from error

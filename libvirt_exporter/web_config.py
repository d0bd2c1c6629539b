"""`--web.config.file`: TLS, basic auth and response headers, in the format of Prometheus'
exporter-toolkit, so that one file serves this exporter and node_exporter alike.

Everything is checked when the exporter starts: a file that cannot work stops it with one line
that says what is wrong, rather than a server that half works.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
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
BCRYPT_HASH = re.compile(rb"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
"""A bcrypt hash in its modular crypt form: version, cost 4 to 31, 22 characters of salt and 31 of
hash. bcrypt itself takes a truncated hash without a word and then matches no password."""
HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
"""What HTTP allows in a header value (RFC 9110 field-value): no CR, LF or other control character,
and nothing that is not Latin-1, which gevent would refuse in every answer."""


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


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, not {value!r}")
    return value


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
    cert_file = _string(section["cert_file"], f"{where}.cert_file")
    key_file = _string(section["key_file"], f"{where}.key_file")
    # gevent's context makes gevent sockets: the standard one's would block the whole hub on a
    # client that is slow to handshake or to send its request.
    context: ssl.SSLContext = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _versions(context, section, where)
    try:
        context.load_cert_chain(base / cert_file, base / key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{where}: cannot load cert_file and key_file: {error}") from error
    _client_auth(context, section, base, where)
    return context


def _versions(context: ssl.SSLContext, section: dict[str, Any], where: str) -> None:
    """min_version (TLS12 by default, as the toolkit's) and max_version, the one not above the other."""
    minimum = _version(section.get("min_version", "TLS12"), f"{where}.min_version")
    context.minimum_version = minimum
    if "max_version" in section:
        maximum = _version(section["max_version"], f"{where}.max_version")
        if maximum < minimum:
            raise ConfigError(
                f"{where}: max_version {section['max_version']} is below min_version "
                f"{section.get('min_version', 'TLS12')}"
            )
        context.maximum_version = maximum


def _version(name: Any, where: str) -> ssl.TLSVersion:
    if not isinstance(name, str) or name not in TLS_VERSIONS:
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[name]


def _client_auth(context: ssl.SSLContext, section: dict[str, Any], base: Path, where: str) -> None:
    auth_type = section.get("client_auth_type", "NoClientCert")
    if not isinstance(auth_type, str) or auth_type not in CLIENT_AUTH:
        raise ConfigError(f"{where}.client_auth_type: {auth_type!r} is not one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    ca_file = section.get("client_ca_file")
    if auth_type != "NoClientCert" and not ca_file:
        raise ConfigError(f"{where}: client_auth_type {auth_type} needs client_ca_file")
    if ca_file:
        try:
            context.load_verify_locations(base / _string(ca_file, f"{where}.client_ca_file"))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{where}: cannot load client_ca_file: {error}") from error


def _users(section: dict[str, Any]) -> dict[str, bytes]:
    return {str(name): _bcrypt_hash(hashed, str(name)) for name, hashed in section.items()}


def _bcrypt_hash(value: Any, name: str) -> bytes:
    """The hash, checked by bcrypt itself at its cheapest cost so that start-up stays quick: a hash
    bcrypt cannot read would otherwise fail every request."""
    hashed = str(value).encode("utf-8", "replace")
    where = f"basic_auth_users: the password of {name!r}"
    if not BCRYPT_HASH.match(hashed):
        raise ConfigError(f"{where} is not a bcrypt hash ($2y$, $2b$ or $2a$, cost 04 to 31, 60 characters)")
    try:
        bcrypt.checkpw(b"", hashed[:4] + b"04" + hashed[6:])
    except ValueError as error:
        raise ConfigError(f"{where} is not a valid bcrypt hash: {error}") from error
    return hashed


def _headers(section: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    _only(section, {"headers", "http2"}, "http_server_config")
    headers = _mapping(section.get("headers"), "http_server_config.headers")
    for name, value in headers.items():
        if name not in HEADERS:
            raise ConfigError(
                f"http_server_config.headers: {name!r} may not be set (allowed: {', '.join(sorted(HEADERS))})"
            )
        if not isinstance(value, str) or not HEADER_VALUE.match(value):
            raise ConfigError(
                f"http_server_config.headers: the value of {name} must be Latin-1 text without "
                "control characters (no CR or LF)"
            )
    return tuple((str(name), value) for name, value in headers.items())


def load_web_config(path: str) -> WebConfig:
    """Parse and check the file; paths in it are relative to the file's own folder."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"web config {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"web config {path}: not UTF-8 text (byte {error.start})") from error
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

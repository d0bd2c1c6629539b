"""--web.config.file with a real TLS client: certificates, client certificates, basic auth,
headers, and a clear error for a file that cannot work."""

from __future__ import annotations

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import gevent
import pytest

from libvirt_exporter.app import Exporter
from libvirt_exporter.config import ConfigError, WebLimits
from libvirt_exporter.http import make_server
from libvirt_exporter.web_config import load_web_config
from tests.unit.conftest import make_config
from tests.unit.fake_libvirt import FakeDomain, FakeHost

EXAMPLE = Path(__file__).parents[2] / "packaging" / "web-config.yml"
PASSWORD = "s3cret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(name: str, subject: str, san: str, pki: Path) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={subject}", cwd=pki)  # fmt: skip
    (pki / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=pki)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""
    pki = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=CA", cwd=pki
    )
    _signed("server", "127.0.0.1", "IP:127.0.0.1", pki)
    _signed("client", "prometheus", "DNS:prometheus", pki)
    return pki


def write_config(pki: Path, body: str) -> Path:
    path = pki / "web.yml"
    path.write_text(body)
    return path


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Served:
    port: int
    pki: Path

    def get(self, tls: bool = True, client_cert: bool = False, auth: str | None = None) -> Answer:
        return gevent.get_hub().threadpool.spawn(self._get, tls, client_cert, auth).get()

    def _get(self, tls: bool, client_cert: bool, auth: str | None) -> Answer:
        """Runs in a real OS thread, as a scraper would, outside the exporter's hub."""
        if tls:
            context = ssl.create_default_context(cafile=self.pki / "ca.crt")
            if client_cert:
                context.load_cert_chain(self.pki / "client.crt", self.pki / "client.key")
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=context, timeout=5
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {"Authorization": auth} if auth else {}
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        answer = Answer(response.status, dict(response.getheaders()), response.read())
        conn.close()
        return answer


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


Serve = Callable[..., Served]


@pytest.fixture
def serve(pki: Path) -> Iterator[Serve]:
    servers = []

    def start(config_body: str, limits: WebLimits | None = None) -> Served:
        exporter = Exporter(make_config(), opener=FakeHost([FakeDomain("a", 1)]).open)
        server = make_server(
            ("127.0.0.1", 0),
            exporter.snapshot,
            "/metrics",
            load_web_config(str(write_config(pki, config_body))),
            limits,
        )
        server.start()
        servers.append(server)
        return Served(server.server_port, pki)

    yield start
    for server in servers:
        server.stop()


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def test_the_right_ca_and_password_get_the_metrics_and_nothing_else_does(serve: Serve) -> None:
    served = serve(TLS + f"basic_auth_users:\n  alice: {HASH}\n")
    ok = served.get(auth=basic("alice", PASSWORD))
    assert ok.status == 200 and b"libvirt_up" in ok.body

    wrong_password = served.get(auth=basic("alice", "guess"))
    wrong_user = served.get(auth=basic("mallory", PASSWORD))
    missing = served.get()
    for refused in (wrong_password, wrong_user, missing):
        assert refused.status == 401
        assert refused.body == b"Unauthorized\n"  # the same answer whichever part was wrong
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="libvirt-exporter"'
    assert served.get(auth=basic("alice", PASSWORD)).status == 200  # remembered, still right


def test_plain_http_to_the_tls_port_is_refused(serve: Serve) -> None:
    served = serve(TLS)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        served.get(tls=False)  # the TLS handshake fails and the server drops the connection
    assert served.get().status == 200


def test_a_client_that_never_starts_the_tls_handshake_delays_no_one_and_is_let_go(serve: Serve) -> None:
    served = serve(TLS, WebLimits(read_timeout=3.0))
    in_thread = gevent.get_hub().threadpool.spawn
    silent = in_thread(socket.create_connection, ("127.0.0.1", served.port), 10).get()
    with silent:
        assert served.get().status == 200  # served while the silent client waits before it
        assert in_thread(silent.recv, 64).get() == b""  # then hung up on (else the read times out)


def test_a_client_certificate_is_required_when_configured(serve: Serve) -> None:
    served = serve(TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        served.get()
    assert served.get(client_cert=True).status == 200


def test_configured_headers_are_sent(serve: Serve) -> None:
    served = serve(TLS + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    assert served.get().headers["X-Frame-Options"] == "deny"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("tls_server_config:\n  cert_file: server.crt\n", "cert_file and key_file are both required"),
        (TLS + "  min_version: TLS9\n", "'TLS9' is not one of"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n", "cannot load cert_file"),
        ("basic_auth_users:\n  alice: plaintext\n", "is not a bcrypt hash"),
        ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "'Set-Cookie' may not be set"),
        ("tls_config:\n  cert_file: a\n", "unknown or unsupported field 'tls_config'"),
        ("tls_server_config: [1, 2]\n", "must be a mapping"),
        (TLS + "  client_auth_type: RequireAnyClientCert\n", "'RequireAnyClientCert' is not one of"),
        (TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "unsupported field 'cipher_suites'"),
        (TLS + "  min_version: [TLS12]\n", "min_version: ['TLS12'] is not one of"),
        (
            TLS + "  min_version: TLS13\n  max_version: TLS12\n",
            "max_version TLS12 is below min_version TLS13",
        ),
        (
            "tls_server_config:\n  cert_file: 123\n  key_file: server.key\n",
            "cert_file must be a non-empty string",
        ),
        (
            TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: [ca.crt]\n",
            "client_ca_file must be",
        ),
        (f"basic_auth_users:\n  alice: {HASH[:-1]}\n", "is not a bcrypt hash"),
        (f"basic_auth_users:\n  alice: {HASH[:7]}{'/' * 53}\n", "is not a valid bcrypt hash"),
        (f"basic_auth_users:\n  alice: {HASH[:4]}03{HASH[6:]}\n", "is not a bcrypt hash"),
        (
            'http_server_config:\n  headers:\n    X-Frame-Options: "deny\\r\\nSet-Cookie: a=b"\n',
            "no CR or LF",
        ),
        ("http_server_config:\n  headers:\n    X-Frame-Options: [deny]\n", "no CR or LF"),
    ],
)
def test_a_file_that_cannot_work_is_one_clear_error(pki: Path, body: str, says: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        load_web_config(str(write_config(pki, body)))
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_a_file_that_is_not_utf8_is_one_clear_error(pki: Path) -> None:
    path = pki / "latin1.yml"
    path.write_bytes("basic_auth_users:\n  jos\xe9: x\n".encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_web_config(str(path))
    assert "not UTF-8" in str(raised.value) and "\n" not in str(raised.value)


def test_the_exporter_refuses_to_start_with_a_bad_file(pki: Path) -> None:
    bad = write_config(pki, "basic_auth_users:\n  alice: plaintext\n")
    result = subprocess.run(
        [sys.executable, "-m", "libvirt_exporter", f"--web.config.file={bad}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "is not a bcrypt hash" in result.stderr


def test_promtool_and_the_exporter_accept_the_example_file(pki: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    example = tmp_path / "web-config.yml"
    shutil.copy(EXAMPLE, example)
    for source, name in (("server.crt", "tls.crt"), ("server.key", "tls.key"), ("ca.crt", "client-ca.crt")):
        shutil.copy(pki / source, tmp_path / name)
    check = subprocess.run(
        [promtool, "check", "web-config", str(example)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert load_web_config(str(example)).users.keys() == {"prometheus"}

"""The receiver's asyncio Redis client (``service.redis_client``) over TLS, against a real
``redis-server`` serving a private CA's certificate.

Each URL is also given to redis-py's blocking client (what the Celery workers and the command
line use): the two must agree on which ``rediss://`` URLs connect and which fail certificate
verification, and a TLS option that cannot be honoured stops the receiver at start-up.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labelloop.dev.stack import Stack, free_port, wait_until
from service import redis_client

PASSWORD = "tls-secret"
DB = 3


@dataclass(frozen=True)
class Pki:
    """PEM files of a private CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class TlsRedis:
    pki: Pki
    port: int  # TLS only, client certificates not asked for
    mtls_port: int  # TLS only, a client certificate signed by the CA required


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return key


def _certificate(
    path: Path,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        usages = {"key_cert_sign": True, "crl_sign": True, "digital_signature": False}
    else:
        usages = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usages,
        ),
        critical=True,
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        # 127.0.0.1 only: "localhost" is a name this certificate does not carry.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _make_pki(root: Path) -> Pki:
    ca_key = _key(root / "ca.key")
    ca = _certificate(root / "ca.pem", "labelloop test CA", ca_key, None, ca_key)
    server_key = _key(root / "server.key")
    _certificate(root / "server.pem", "127.0.0.1", server_key, ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = _key(root / "client.key")
    _certificate(root / "client.pem", "labelloop receiver", client_key, ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "client.pem", root / "client.key")


def _start_tls_redis(stack: Stack, name: str, pki: Pki, auth_clients: str) -> int:
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("redis-server not found; install it (Debian: apt-get install redis-server)")
    port = free_port()
    data = stack.workdir / name
    data.mkdir()
    stack.start(
        name,
        [
            binary,
            "--port",
            "0",  # no plain-text listener at all
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(pki.server_cert),
            "--tls-key-file",
            str(pki.server_key),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            auth_clients,
            "--requirepass",
            PASSWORD,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"PING\r\n")
                return tls.recv(64).startswith(b"-NOAUTH")

    try:
        wait_until(answers, 15, f"redis-server with TLS ({name})")
    except TimeoutError:
        pytest.fail(f"redis-server with TLS did not start:\n{stack.log_tail(name)}")
    return port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """Two TLS-only redis-servers with a private CA's certificate: one that asks for no client
    certificate and one that requires a client certificate signed by that CA."""
    root = tmp_path_factory.mktemp("redis-tls")
    pki = _make_pki(root)
    stack = Stack(root, {})
    try:
        port = _start_tls_redis(stack, "redis-tls", pki, "no")
        mtls_port = _start_tls_redis(stack, "redis-mtls", pki, "yes")
        yield TlsRedis(pki, port, mtls_port)
    finally:
        stack.stop_all()


def _url(port: int, host: str = "127.0.0.1", **query: str | Path) -> str:
    params = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in query.items())
    return f"rediss://:{PASSWORD}@{host}:{port}/{DB}" + (f"?{params}" if params else "")


def _run_receiver(url: str, loop: str = "asyncio") -> bool:
    """PING through the receiver's client; returns the reply or raises what the client raised."""

    async def main() -> bool:
        client = redis_client.client(url, timeout_s=5)
        try:
            return bool(await client.ping())  # type: ignore[misc]
        finally:
            await client.aclose()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _redis_py(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_rediss_url_with_private_ca_runs_eval_set_get(tls_redis: TlsRedis, loop: str) -> None:
    """With ``?ssl_ca_certs=<private CA>`` the receiver's client verifies the server, authenticates,
    selects the URL's db and runs SET/GET and a registered script; redis-py's blocking client on
    the same URL reads what it wrote."""
    url = _url(tls_redis.port, ssl_ca_certs=tls_redis.pki.ca)
    key = f"tls-{loop}"

    async def main() -> list[object]:
        client = redis_client.client(url, timeout_s=5)
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        try:
            return [
                await client.set(key, "over tls"),
                await client.get(key),
                await script([f"{key}-n"], [7]),
            ]
        finally:
            await client.aclose()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main()) == [True, b"over tls", 7]

    other, db0 = _redis_py(url), _redis_py(url.replace(f"/{DB}?", "/0?"))
    try:
        assert other.get(key) == b"over tls" and other.get(f"{key}-n") == b"7"
        assert db0.get(key) is None  # written to the URL's db, not db 0
    finally:
        other.close()
        db0.close()


# (case, host, query, connects); query values that are paths are filled in from the fixture.
VERIFICATION = [
    ("private CA", "127.0.0.1", {"ssl_ca_certs": "ca"}, True),
    ("private CA, cert_reqs=required", "127.0.0.1", {"ssl_ca_certs": "ca", "ssl_cert_reqs": "required"}, True),
    ("no CA: system CAs only", "127.0.0.1", {}, False),
    ("no CA, cert_reqs=required", "127.0.0.1", {"ssl_cert_reqs": "required"}, False),
    ("no CA, cert_reqs=optional", "127.0.0.1", {"ssl_cert_reqs": "optional"}, False),
    ("no CA, cert_reqs=none", "127.0.0.1", {"ssl_cert_reqs": "none"}, True),
    ("private CA, name not in the certificate", "localhost", {"ssl_ca_certs": "ca"}, False),
    ("private CA, check_hostname=false", "localhost", {"ssl_ca_certs": "ca", "ssl_check_hostname": "false"}, True),
]


@pytest.mark.parametrize(("case", "host", "query", "connects"), VERIFICATION, ids=[row[0] for row in VERIFICATION])
def test_receiver_and_workers_clients_agree_on_tls_verification(
    tls_redis: TlsRedis, case: str, host: str, query: dict[str, str], connects: bool
) -> None:
    """Each rediss:// URL either connects with both the receiver's asyncio client and the workers'
    blocking one, or fails certificate verification in both; verification is never silently
    skipped."""
    filled = {k: (tls_redis.pki.ca if v == "ca" else v) for k, v in query.items()}
    url = _url(tls_redis.port, host, **filled)
    other = _redis_py(url)
    try:
        if connects:
            assert _run_receiver(url) is True
            assert other.ping() is True
        else:
            with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
                _run_receiver(url)
            with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
                other.ping()
    finally:
        other.close()


def test_rediss_client_certificate_from_url_is_presented(tls_redis: TlsRedis) -> None:
    """A server that requires client certificates accepts the receiver's client (and the workers')
    with ``ssl_certfile``/``ssl_keyfile`` and rejects both without them."""
    pki = tls_redis.pki
    without = _url(tls_redis.mtls_port, ssl_ca_certs=pki.ca)
    with_cert = _url(tls_redis.mtls_port, ssl_ca_certs=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key)

    assert _run_receiver(with_cert) is True
    with pytest.raises((redis.exceptions.ConnectionError, ssl.SSLError)):
        _run_receiver(without)
    for url, accepted in ((with_cert, True), (without, False)):
        other = _redis_py(url)
        try:
            if accepted:
                assert other.ping() is True
            else:
                with pytest.raises(redis.exceptions.ConnectionError):
                    other.ping()
        finally:
            other.close()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://127.0.0.1:6399/0?ssl_ca_certs=/etc/ca.pem", ValueError),  # TLS asked for, plain text given
        ("rediss://127.0.0.1:6399/0?ssl_cert_reqs=maybe", ValueError),
        ("rediss://127.0.0.1:6399/0?ssl_no_such_option=1", ValueError),
        ("rediss://127.0.0.1:6399/0?ssl_ca_certs=/nonexistent/ca.pem", FileNotFoundError),
    ],
)
def test_tls_options_that_cannot_be_honoured_fail_at_construction(url: str, error: type[Exception]) -> None:
    """A TLS option that is misspelt, invalid, unreadable or on a redis:// URL stops the receiver's
    client from being built (at start-up), instead of connecting with different TLS settings than
    the URL asks for."""
    with pytest.raises(error):
        redis_client.client(url, timeout_s=1)

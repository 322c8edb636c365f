"""The gateway's listening socket: TLS (a real handshake on loopback with a certificate made for
the test) and the accept backlog it asks the kernel for."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import GatewayConfig, GatewayLimits, NodeEndpoint, load_gateway_config
from gateway.keyring import Keyring, load_keyring, new_partner, save_keyring
from gateway.main import run_gateway
from gateway.tls import load_tls_context
from node.errors import ConfigError
from tools.client import PartnerClient

MASTER = bytes(range(32))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _config(tmp_path: Path, port: int, cert: Path | None, key: Path | None) -> GatewayConfig:
    partner = new_partner("shop", "key-shop")
    save_keyring(tmp_path / "keyring.json", Keyring(version=1, partners={"shop": partner}), MASTER)
    (tmp_path / "token").write_text("t" * 32)
    return GatewayConfig(
        http_listen=f"127.0.0.1:{port}",
        keyring_file=tmp_path / "keyring.json",
        master_key_file=None,
        node_api_token_file=tmp_path / "token",
        nodes=(NodeEndpoint("node-1", f"127.0.0.1:{_free_port()}"),),  # nobody listens there
        tls_cert_file=cert,
        tls_key_file=key,
    )


async def _get(url: str, ssl_context: ssl.SSLContext | bool) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ssl_context, timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        return response.status


async def _until_started(url: str, ssl_context: ssl.SSLContext | bool) -> None:
    for _ in range(200):
        try:
            assert await _get(url, ssl_context) == 200
            return
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.02)
    raise AssertionError("gateway did not start")


async def test_gateway_serves_https_only_with_its_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    cert, key = _certificate(tmp_path, "gateway")
    port = _free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(run_gateway(_config(tmp_path, port, cert, key), stop))
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        await _until_started(f"https://127.0.0.1:{port}/healthz", trusting)
        # A client that does not trust the certificate is refused at the handshake.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(f"https://127.0.0.1:{port}/healthz", ssl.create_default_context())
        # Plain HTTP to the TLS port gets no HTTP answer.
        with pytest.raises(aiohttp.ClientError):
            await _get(f"http://127.0.0.1:{port}/healthz", False)
        # Partner requests are authenticated over TLS as over HTTP.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{port}/v1/records", json={"record": {}}, ssl=trusting
            ) as response,
        ):
            assert response.status == 401
            assert (await response.json())["code"] == "unauthenticated"
        # The dashboard's cookies are Secure over TLS (and only there: tests/test_dashboard.py).
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{port}/dashboard/signin", ssl=trusting) as response,
        ):
            assert response.status == 200
            cookie = response.headers["Set-Cookie"]
            assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # SIGHUP loads a renewed certificate for new connections.
        renewed, renewed_key = _certificate(tmp_path, "renewed")
        cert.write_bytes(renewed.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        os.kill(os.getpid(), signal.SIGHUP)
        trusting_renewed = ssl.create_default_context(cafile=str(renewed))
        for _ in range(100):
            try:
                assert await _get(f"https://127.0.0.1:{port}/healthz", trusting_renewed) == 200
                break
            except aiohttp.ClientConnectorCertificateError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("renewed certificate not served after SIGHUP")
    finally:
        stop.set()
        await server


def test_bad_tls_settings_are_refused_at_start(tmp_path: Path) -> None:
    cert, _key = _certificate(tmp_path, "one")
    _, other_key = _certificate(tmp_path, "two")
    with pytest.raises(ConfigError, match="does not exist"):
        load_tls_context(cert, tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="cannot load"):
        load_tls_context(cert, other_key)  # a key that does not match the certificate
    with pytest.raises(ConfigError, match="both"):
        _config(tmp_path, 1, cert, None).validate()
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        "[gateway]\n"
        'http_listen = "127.0.0.1:8443"\n'
        'keyring_file = "keyring.json"\n'
        'node_api_token_file = "token"\n'
        'tls_cert_file = "one.crt"\n'
        'tls_key_file = "one.key"\n'
        '[[nodes]]\nname = "node-1"\nhttp_addr = "127.0.0.1:7101"\n'
    )
    config = load_gateway_config(toml)
    assert config.scheme == "https" and config.tls_key_file == tmp_path / "one.key"


async def test_partner_client_talks_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    cert, key = _certificate(tmp_path, "gateway")
    port = _free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(run_gateway(_config(tmp_path, port, cert, key), stop))
    try:
        credential = load_keyring(tmp_path / "keyring.json", MASTER).partners["shop"].credentials[0]
        client = PartnerClient(
            f"https://127.0.0.1:{port}",
            credential.api_key,
            credential.secret,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        async with client:
            for _ in range(200):
                try:
                    reply = await client.get_record("00" * 32)
                    break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.02)
            assert reply.status == 503  # authenticated over TLS; no node is up to answer
    finally:
        stop.set()
        await server


async def test_gateway_listens_with_its_configured_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's default backlog (128) overflowed when hundreds of clients connected at once and
    # their SYNs were dropped (retried after 1 s, then 3 s). ss shows a listening socket's
    # backlog as its Send-Q.
    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    port = _free_port()
    config = dataclasses.replace(
        _config(tmp_path, port, None, None), limits=GatewayLimits(listen_backlog_max=777)
    )
    stop = asyncio.Event()
    server = asyncio.create_task(run_gateway(config, stop))
    try:
        await _until_started(f"http://127.0.0.1:{port}/healthz", False)
        listing = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(listing[2]) == min(777, somaxconn), listing
    finally:
        stop.set()
        await server

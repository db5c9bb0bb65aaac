"""The panel certificate: generation, SANs, key mode, fingerprint, paths; AsgiServer serving HTTPS with it."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.asgi_server import AsgiServer
from gateway.config import GatewayConfig, PanelConfig
from gateway.panel.tls import (
    certificate_info,
    ensure_certificate,
    ensure_panel_certificate,
    fingerprint,
    panel_hostnames,
    panel_paths,
)


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "panel" / "tls" / "cert.pem", tmp_path / "panel" / "tls" / "key.pem"


def test_generates_once(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    assert ensure_certificate(cert, key, ["gw-north.example", "192.168.1.10"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    assert not ensure_certificate(cert, key, ["other"])
    assert cert.read_bytes() == first
    key.unlink()
    assert ensure_certificate(cert, key, [])  # a missing key: a new pair
    assert cert.read_bytes() != first


def test_certificate_contents(cert_pair: tuple[Path, Path]) -> None:
    cert_file, key_file = cert_pair
    ensure_certificate(cert_file, key_file, ["gw-north.example", "192.168.1.10", "[fd00::1]"])
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert {"gw-north.example", "localhost", socket.gethostname().lower()} <= dns
    assert {ipaddress.ip_address(a) for a in ("192.168.1.10", "fd00::1", "127.0.0.1", "::1")} <= ips
    life = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=3649) < life <= dt.timedelta(days=3650)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_fingerprint_and_info(cert_pair: tuple[Path, Path]) -> None:
    cert_file, key_file = cert_pair
    ensure_certificate(cert_file, key_file, ["gw-north.example"])
    der = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    expected = "SHA256 " + ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    assert fingerprint(cert_file) == expected
    info = certificate_info(cert_file)
    assert info["fingerprint"] == expected
    assert info["subject_cn"] == "gw-north.example"
    assert "gw-north.example" in info["sans"] and "127.0.0.1" in info["sans"] and "::1" in info["sans"]
    assert dt.datetime.fromisoformat(info["not_after"]).year >= dt.datetime.now(dt.UTC).year + 9


def test_bad_host_name(cert_pair: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        ensure_certificate(*cert_pair, ["bad name"])
    assert not cert_pair[0].exists() and not cert_pair[1].exists()


def test_panel_paths_and_hostnames(tmp_path: Path) -> None:
    cfg = GatewayConfig(id="gw", data_dir=tmp_path / "d", panel=PanelConfig(host="0.0.0.0"))
    assert panel_paths(cfg) == (tmp_path / "d/panel/users.json", tmp_path / "d/panel/tls/cert.pem",
                                tmp_path / "d/panel/tls/key.pem")
    assert panel_hostnames(cfg, ["x.example"]) == ["x.example"]
    cert, key = ensure_panel_certificate(cfg)
    assert (cert, key) == panel_paths(cfg)[1:] and cert.is_file()
    assert stat.S_IMODE((tmp_path / "d/panel").stat().st_mode) == 0o700
    own = GatewayConfig(id="gw", data_dir=tmp_path / "d",
                        panel=PanelConfig(host="10.1.1.1", cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem"))
    assert panel_paths(own)[1:] == (tmp_path / "c.pem", tmp_path / "k.pem")
    assert panel_hostnames(own) == ["10.1.1.1"]
    assert ensure_panel_certificate(own) == (tmp_path / "c.pem", tmp_path / "k.pem")
    assert not (tmp_path / "c.pem").exists()  # the site's own certificate is never generated


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.url.scheme}")


async def test_asgi_server_serves_https(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    ensure_certificate(cert, key, [])
    app = Starlette(routes=[Route("/", _hello)])
    async with AsgiServer(app, "127.0.0.1", 0, name="panel", ssl_certfile=cert, ssl_keyfile=key) as server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=ctx) as client:
            r = await client.get(server.url + "/")
            assert r.status_code == 200 and r.text == "hello https"
        async with httpx.AsyncClient() as client:  # the system trust store does not know a self-signed cert
            with pytest.raises(httpx.ConnectError):
                await client.get(server.url + "/")


async def test_asgi_server_plain_http_url() -> None:
    app = Starlette(routes=[Route("/", _hello)])
    async with AsgiServer(app, "127.0.0.1", 0) as server:
        assert server.url.startswith("http://")
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url + "/")).text == "hello http"
    with pytest.raises(ValueError, match="go together"):
        AsgiServer(app, ssl_certfile="c.pem")

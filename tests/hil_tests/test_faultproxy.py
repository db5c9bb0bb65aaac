"""The fault proxy, byte by byte, over loopback: a real echo server behind it, real sockets in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil_tests.faultproxy import FaultProxy
from hil_tests.testpki import CertAuthority
from tests.waiting import wait_for

WAIT_S = 10.0  # upper bound for an outcome that must come (never an assertion on elapsed time)
SILENT_S = 0.3  # how long a link that must stay silent is watched


class Echo:
    """A TCP echo server on 127.0.0.1 that records what it received (across all connections)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Echo:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def echo_and_proxy(
    tls: ssl.SSLContext | None = None, tls_untrusted: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Echo, FaultProxy]]:
    async with (
        Echo() as echo,
        FaultProxy("127.0.0.1", 0, "127.0.0.1", echo.port, tls=tls, tls_untrusted=tls_untrusted) as proxy,
    ):
        yield echo, proxy


@contextlib.asynccontextmanager
async def connection(
    proxy: FaultProxy, ctx: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), WAIT_S)


def blocking_connect(port: int, timeout: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout):
        pass


async def test_pass_forwards_both_ways_and_counts() -> None:
    async with echo_and_proxy() as (echo, proxy), connection(proxy) as (r, w):
        payload = bytes(range(256)) * 1000
        assert await roundtrip(r, w, payload) == payload
        st = proxy.stats()
        assert (st["connections"], st["active"], st["bytes_up"], st["bytes_down"]) == (1, 1, len(payload), len(payload))
        assert bytes(echo.received) == payload


async def test_refuse_gives_econnrefused_and_resets_open_connections() -> None:
    async with echo_and_proxy() as (_, proxy):
        port = proxy.port
        async with connection(proxy) as (r, w):
            assert await roundtrip(r, w, b"hello") == b"hello"
            await proxy.set_mode("refuse")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), WAIT_S)
        with pytest.raises(ConnectionRefusedError) as exc:
            await asyncio.open_connection("127.0.0.1", port)
        assert exc.value.errno == errno.ECONNREFUSED
        await proxy.set_mode("pass")
        assert proxy.port == port  # the port was held throughout
        async with connection(proxy) as (r, w):
            assert await roundtrip(r, w, b"again") == b"again"
        assert proxy.stats()["resets"] == 1


async def test_blackhole_connect_hangs_and_open_connections_go_silent_then_resume() -> None:
    async with echo_and_proxy() as (echo, proxy), connection(proxy) as (r, w):
        assert await roundtrip(r, w, b"before") == b"before"
        await proxy.set_mode("blackhole")
        # a new connect hangs until the client's own timeout (SYNs dropped), it is not refused
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(blocking_connect, proxy.port, SILENT_S)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), SILENT_S)
        # the open connection carries nothing either way
        w.write(b"during")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), SILENT_S)
        assert bytes(echo.received) == b"before"
        # link back: the stream carries on where it stopped, and new connects succeed
        await proxy.set_mode("pass")
        assert await asyncio.wait_for(r.readexactly(6), WAIT_S) == b"during"
        await asyncio.to_thread(blocking_connect, proxy.port, WAIT_S)


async def test_reset_open_and_new_connections() -> None:
    async with echo_and_proxy() as (echo, proxy):
        async with connection(proxy) as (r, w):
            assert await roundtrip(r, w, b"x") == b"x"
            await proxy.set_mode("reset")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), WAIT_S)
        async with connection(proxy) as (r, w):  # the handshake completes, then RST
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), WAIT_S)
        assert proxy.stats()["resets"] == 2 and echo.connections == 1


async def test_reset_after_bytes_cuts_a_request_in_the_middle() -> None:
    async with echo_and_proxy() as (echo, proxy):
        await proxy.set_mode("reset", after_bytes=1000)
        async with connection(proxy) as (r, w):
            w.write(b"a" * 5000)
            with pytest.raises(ConnectionResetError):
                while await asyncio.wait_for(r.read(65536), WAIT_S):
                    pass
        await wait_for(lambda: len(echo.received) == 1000, WAIT_S, "1000 bytes at the target")
        assert proxy.stats()["bytes_up"] == 1000


async def test_latency_and_bandwidth_delay_every_chunk() -> None:
    async with echo_and_proxy() as (_, proxy), connection(proxy) as (r, w):
        await proxy.set_mode("latency", latency_ms=500)
        w.write(b"ping")
        await w.drain()
        with pytest.raises(TimeoutError):  # held 500 ms each way: nothing can be back within 100 ms
            await asyncio.wait_for(asyncio.shield(pending := asyncio.ensure_future(r.readexactly(4))), 0.1)
        assert await asyncio.wait_for(pending, WAIT_S) == b"ping"  # ... and then it comes
        await proxy.set_mode("latency", bandwidth_bps=100_000)
        payload = b"b" * 60_000
        w.write(payload)
        await w.drain()
        with pytest.raises(TimeoutError):  # 60 kB at 100 kB/s: not all back within 100 ms
            await asyncio.wait_for(asyncio.shield(pending := asyncio.ensure_future(r.readexactly(60_000))), 0.1)
        assert await asyncio.wait_for(pending, WAIT_S) == payload
        with pytest.raises(ValueError, match="latency"):
            await proxy.set_mode("latency")


async def test_tls_terminates_and_tls_fail_breaks_verification(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    rogue = CertAuthority(tmp_path / "rogue", "Rogue CA")
    good, bad = ca.issue_server(), rogue.issue_server()
    client_ctx = ca.client_context()
    async with echo_and_proxy(tls=good.server_context(), tls_untrusted=bad.server_context()) as (echo, proxy):
        await proxy.set_mode("tls")
        async with connection(proxy, client_ctx) as (r, w):
            assert await roundtrip(r, w, b"secret") == b"secret"
            await proxy.set_mode("tls_fail")  # open connections are closed
            assert await asyncio.wait_for(r.read(1), WAIT_S) == b""
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_ctx, server_hostname="127.0.0.1")
        await wait_for(lambda: proxy.stats()["tls_failures"] == 1, WAIT_S, "the failed handshake counted")
        await proxy.set_mode("tls")
        async with connection(proxy, client_ctx) as (r, w):
            assert await roundtrip(r, w, b"back") == b"back"
        assert bytes(echo.received) == b"secretback"  # plaintext behind the proxy
        assert proxy.stats()["tls_handshakes"] == 2


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    server = ca.issue_server()
    client = ca.issue_client("sub-north-01")
    assert ca.cert_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    async with echo_and_proxy(tls=server.server_context(client_ca=ca.cert_file)) as (echo, proxy):
        await proxy.set_mode("tls")
        async with connection(proxy, ca.client_context(client)) as (r, w):
            assert await roundtrip(r, w, b"mtls") == b"mtls"
        # TLS 1.3: a client without a certificate finishes its side of the handshake, then the server drops it
        async with connection(proxy, ca.client_context()) as (r, w):
            w.write(b"no cert")
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                assert await asyncio.wait_for(r.read(), WAIT_S) == b""
        await wait_for(lambda: proxy.stats()["tls_failures"] == 1, WAIT_S, "the refused handshake counted")
        assert echo.received == b"mtls"
        assert proxy.stats()["tls_handshakes"] == 1


async def test_in_thread_for_synchronous_code() -> None:
    async with Echo() as echo:
        with FaultProxy("127.0.0.1", 0, "127.0.0.1", echo.port).in_thread() as proxy:

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT_S) as s:
                    s.sendall(b"sync")
                    return s.recv(4)

            assert await asyncio.to_thread(client) == b"sync"
            await asyncio.to_thread(proxy.set_mode, "refuse")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.to_thread(blocking_connect, proxy.port, WAIT_S)
            await asyncio.to_thread(proxy.set_mode, "pass")
            assert await asyncio.to_thread(client) == b"sync"
            assert proxy.stats()["connections"] == 2


async def test_unknown_mode_and_missing_tls_context_are_errors() -> None:
    async with echo_and_proxy() as (_, proxy):
        with pytest.raises(ValueError, match="unknown mode"):
            await proxy.set_mode("flaky")
        with pytest.raises(ValueError, match="tls"):
            await proxy.set_mode("tls")
        assert proxy.mode == "pass"

"""Test helpers for Modbus: a socat pseudo-terminal pair, byte-level misbehaving TCP servers, condition waits.

Used by ``tests/protocols/test_modbus*.py`` and ``tests/gateway/test_runner*.py``. Everything here is owned by
the calling test and closed by it (fixtures do it for you).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until

SOCAT = shutil.which("socat") or "/usr/bin/socat"


@contextlib.contextmanager
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat: bytes written to one are read from the other."""
    if not os.path.exists(SOCAT):
        pytest.fail("socat is needed for the RTU tests: `make test` installs it (apt-get install socat)")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = subprocess.Popen(
        [SOCAT, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        ready = 0
        deadline = time.monotonic() + 10
        while ready < 2:  # socat logs "N PTY is /dev/pts/X" once per side, then starts transferring
            line = proc.stderr.readline().decode(errors="replace")
            if not line or time.monotonic() > deadline:
                raise AssertionError("socat did not create the pty pair")
            ready += "PTY is" in line
        wait_until(lambda: os.path.exists(a) and os.path.exists(b), 10, "the pty links")
        yield a, b
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


class ByteServer:
    """A TCP server that answers each Modbus/TCP request with whatever ``handler`` writes.

    ``handler(request_bytes, writer)`` returns False to close the connection. Used only for malformed input
    (garbage, truncated responses, mid-response close), which a real Modbus stack cannot be made to send.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    async def __aenter__(self) -> ByteServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()  # the handlers see EOF and finish normally (a cancelled handler task logs an error)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                body = await reader.readexactly(int.from_bytes(header[4:6], "big") - 1)
                self.requests += 1
                if not await self.handler(header + body, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def mbap_response(request: bytes, pdu: bytes) -> bytes:
    """A Modbus/TCP response frame for ``request`` carrying ``pdu`` (function code + data)."""
    return request[0:2] + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + request[6:7] + pdu


def holding_response(request: bytes, words: list[int]) -> bytes:
    body = bytes([3, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)
    return mbap_response(request, body)

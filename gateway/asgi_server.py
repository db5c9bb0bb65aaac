"""Run an ASGI app with uvicorn inside an already-running asyncio loop, without uvicorn's signal handling.

We bind the listening socket ourselves so that "address in use" becomes a clear :class:`BindError` naming the
address (uvicorn would log and ``sys.exit``), and so that port 0 works in tests (``server.port`` tells the port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class BindError(OSError):
    """The listening address could not be bound (in use, not permitted, bad address)."""


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the owning daemon handles signals
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BindError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class AsgiServer:
    """Owns one listening socket and one uvicorn server task. Use from the event loop thread only."""

    def __init__(self, app: Any, host: str, port: int, *, name: str = "http") -> None:
        self._sock = bind_socket(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.name = name
        cfg = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2)
        self._server = _QuietServer(cfg)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=f"asgi-{self.name}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
                raise RuntimeError(f"{self.name} server stopped during startup")
            await asyncio.sleep(0.01)
        logging.getLogger(__name__).debug("%s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Idempotent: ask uvicorn to finish and wait for it."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._sock.close()

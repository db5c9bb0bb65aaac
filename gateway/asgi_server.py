"""Run an ASGI app with uvicorn inside an already-running asyncio loop, without uvicorn's signal handling.

We bind the listening socket ourselves so that "address in use" becomes a clear :class:`BindError` naming the
address (uvicorn would log and ``sys.exit``), and so that port 0 works in tests (``server.port`` tells the port).

TLS: give ``ssl_certfile`` and ``ssl_keyfile`` (PEM files, e.g. from :mod:`gateway.panel.tls`) and the server
speaks HTTPS only (``url`` says ``https://``); uvicorn loads them when the server starts, so a bad file fails
:meth:`AsgiServer.start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal, Self

import uvicorn


class BindError(OSError):
    """The listening address could not be bound (in use, not permitted, bad address)."""


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the owning daemon handles signals
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
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
    """One listening socket and one uvicorn server task on the running loop. Use from the loop thread only.

    The socket is bound in :meth:`start` (so a port can be chosen before it is free) and is listening when
    ``start`` returns. ``lifespan="on"`` runs the app's lifespan (the receiver closes its backend there).
    Also an async context manager; :meth:`stop` is idempotent.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        lifespan: Literal["auto", "on", "off"] = "off",
        log_level: str = "warning",
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
    ) -> None:
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        self.app = app
        self.host = host
        self._requested_port = port
        self.name = name
        self._config = uvicorn.Config(
            app,
            lifespan=lifespan,
            ws="none",
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(ssl_certfile) if ssl_certfile is not None else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile is not None else None,
        )
        self.tls = ssl_certfile is not None
        self._sock: socket.socket | None = None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError(f"{self.name} server not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        self._sock = bind_socket(self.host, self._requested_port)
        self._server = _QuietServer(self._config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=f"asgi-{self.name}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
                raise RuntimeError(f"{self.name} server stopped during startup")
            await asyncio.sleep(0.01)
        logging.getLogger(__name__).debug("%s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Ask uvicorn to finish (graceful, bounded) and wait for it. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

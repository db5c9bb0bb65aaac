"""A fault-injecting TCP proxy for loopback tests: put it between a client and a server and break the link on cue.

``FaultProxy(listen_host, listen_port, target_host, target_port)`` listens on ``listen_host:listen_port`` (port 0
picks a free one; the port is then kept for the proxy's whole life, whatever the mode) and forwards every
connection to ``target_host:target_port``. The mode can be switched at run time with :meth:`FaultProxy.set_mode`:

============  =========================================================================================================
mode          what a client sees
============  =========================================================================================================
``pass``      a plain TCP forward (the default).
``latency``   every chunk, each way, delayed by ``latency_ms`` (pipelined: the delay does not cap the throughput),
              optionally paced to ``bandwidth_bps`` bytes/s each way. ``latency_ms``/``bandwidth_bps`` also apply to
              ``pass`` and ``tls`` when given.
``refuse``    ``connect()`` fails with ECONNREFUSED: the listening socket is closed and the port is held by a bound
              socket that does not listen, so the kernel answers SYNs with RST. Open connections are reset.
``blackhole`` ``connect()`` hangs until the client's own timeout: the port is held by a socket listening with backlog 0
              whose accept queue is filled by a loopback connection of the proxy's own and never accepted, so the kernel
              drops further SYNs (the client retransmits them, as across a dead route). Open connections stop moving
              data both ways (nothing is read or forwarded; kernel buffers fill); when the link comes back they carry
              on where they stopped, as TCP does after an outage that its peers outlived.
``reset``     open connections are reset (RST: ``SO_LINGER`` 0), and so is every new one, at once after the handshake,
              or, with ``after_bytes=N``, once N bytes of it reached the target (a reset in the middle of a request).
``tls``       the proxy terminates TLS with the ``tls`` context (a good certificate from a test CA, see
              :mod:`hil_tests.testpki`) and forwards plaintext to the target: clients use ``https://`` to the proxy.
``tls_fail``  the proxy answers TLS with the ``tls_untrusted`` context (a certificate of a CA the client does not
              trust): a verifying client fails the handshake (``CERTIFICATE_VERIFY_FAILED``). Open connections are
              closed.
============  =========================================================================================================

Counters (:meth:`FaultProxy.stats`): ``connections`` accepted, ``active`` now, ``bytes_up`` (client → target) and
``bytes_down`` (target → client) forwarded, ``resets`` sent, ``tls_handshakes`` completed, ``tls_failures``,
``upstream_failures`` (the target refused or did not answer the proxy's connect).

Use it as an async context manager on a running loop (``async with FaultProxy(...) as proxy: await
proxy.set_mode("refuse")``), or from synchronous code in a thread of its own (``with FaultProxy(...).in_thread() as
proxy: proxy.set_mode("blackhole")``). Threads: a :class:`FaultProxy`'s coroutines run on its loop's thread only;
:class:`ThreadedFaultProxy`'s methods may be called from any thread; :meth:`FaultProxy.stats` from any thread.
Loopback addresses only: this is a test rig.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Final, Self

__all__ = ["MODES", "FaultProxy", "ProxyStats", "ThreadedFaultProxy"]

log = logging.getLogger(__name__)

MODES: Final = ("pass", "latency", "refuse", "blackhole", "reset", "tls", "tls_fail")
CHUNK: Final = 65536  # most bytes read at once from one side
CONNECT_TIMEOUT_S: Final = 5.0  # the proxy's own connect to the target
HANDSHAKE_TIMEOUT_S: Final = 5.0  # TLS handshake with a client
_PACE_SLICE_S: Final = 0.05  # with a bandwidth limit, chunks are cut so that each takes at most this long
_LISTEN_BACKLOG: Final = 128
_HOLE_PROBE_S: Final = 0.05  # a probe connect to the black hole that has not completed after this is hanging
_HOLE_MAX_FILLERS: Final = 16

_ACCEPTING: Final = frozenset({"pass", "latency", "reset", "tls", "tls_fail"})
_BREAKS_OPEN: Final = frozenset({"refuse", "reset", "tls_fail"})  # entering these drops open connections
_RST: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(slots=True)
class ProxyStats:
    """Counters since the proxy was created (see the module docstring)."""

    connections: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    resets: int = 0
    tls_handshakes: int = 0
    tls_failures: int = 0
    upstream_failures: int = 0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _rst_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    sock.close()


def _rst_writer(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()


class _Conn:
    """One proxied connection: two pipes (client → target, target → client). Proxy loop only."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        reset_after: int | None,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.target = target
        self.reset_after = reset_after  # reset once this many bytes reached the target (None: never)
        self.up_bytes = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    async def run(self) -> None:
        self.tasks = [
            asyncio.create_task(self._pipe(self.client[0], self.target[1], up=True), name="faultproxy-up"),
            asyncio.create_task(self._pipe(self.target[0], self.client[1], up=False), name="faultproxy-down"),
        ]
        try:
            await asyncio.gather(*self.tasks)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            self.close(rst=True)
        except asyncio.CancelledError:
            if not self.closed:
                raise
        finally:
            self.close(rst=False)

    def close(self, *, rst: bool) -> None:
        """Close both sides (RST with ``rst``) and end the pipes. Idempotent."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        for _, w in (self.client, self.target):
            if rst:
                _rst_writer(w)
            else:
                w.close()
        if rst:
            self.proxy._stats.resets += 1

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy ``src`` to ``dst``: a reader that stops while the link is black-holed, a writer that applies the
        latency and bandwidth of the moment (a queue between them keeps the delay pipelined)."""
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | Exception]] = asyncio.Queue(maxsize=16)

        async def read_side() -> None:
            while True:
                await proxy._flowing.wait()
                try:
                    data = await src.read(CHUNK)
                except (OSError, ssl.SSLError) as e:
                    await queue.put((loop.time(), e))
                    return
                await queue.put((loop.time(), data))
                if not data:
                    return

        reader = asyncio.create_task(read_side(), name="faultproxy-read")
        try:
            next_free = 0.0
            while True:
                arrived, data = await queue.get()
                if isinstance(data, Exception):
                    raise data
                if not data:  # end of stream: pass it on, or close both sides where it cannot be (TLS)
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    else:
                        self.close(rst=False)
                    return
                view = memoryview(data)
                while view:
                    bw = proxy._bandwidth_bps
                    piece = view if not bw else view[: max(1, int(bw * _PACE_SLICE_S))]
                    if up and self.reset_after is not None:
                        piece = piece[: max(0, self.reset_after - self.up_bytes)]
                    due = max(arrived + proxy._latency_s, next_free)
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    await proxy._flowing.wait()
                    if piece:
                        dst.write(piece)
                        await dst.drain()
                    n = len(piece)
                    view = view[n:]
                    if bw:
                        next_free = max(next_free, loop.time()) + n / bw
                    if up:
                        self.up_bytes += n
                        proxy._stats.bytes_up += n
                        if self.reset_after is not None and self.up_bytes >= self.reset_after:
                            self.close(rst=True)
                            return
                    else:
                        proxy._stats.bytes_down += n
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                await reader


class FaultProxy:
    """See the module docstring. Create it anywhere; ``start()``/``stop()`` (or ``async with``) on the loop that
    will run it. ``tls``: server context of mode ``tls``; ``tls_untrusted``: server context of mode ``tls_fail``.
    """

    def __init__(
        self,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        target_host: str = "127.0.0.1",
        target_port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        tls_untrusted: ssl.SSLContext | None = None,
        mode: str = "pass",
        name: str = "faultproxy",
    ) -> None:
        self.listen_host = listen_host
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self._tls = tls
        self._tls_untrusted = tls_untrusted
        self._port = listen_port
        self._initial_mode = mode
        self._check_mode(mode)
        self._mode = "pass"
        self._latency_s = 0.0
        self._bandwidth_bps = 0.0
        self._after_bytes = 0
        self._stats = ProxyStats()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None  # accepting (modes in _ACCEPTING)
        self._accept_task: asyncio.Task[None] | None = None
        self._reserve: socket.socket | None = None  # bound, not listening (refuse)
        self._hole: socket.socket | None = None  # listening, backlog 0, never accepted (blackhole)
        self._fillers: list[socket.socket] = []  # the proxy's own connections that fill the hole's accept queue
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._started = False
        self._lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------------------------------------ public
    @property
    def port(self) -> int:
        """The port the proxy listens on (fixed once started)."""
        if not self._started:
            raise RuntimeError(f"{self.name} not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def mode(self) -> str:
        return self._mode

    def url(self, scheme: str = "http", path: str = "") -> str:
        """``scheme://host:port/path`` of the proxy (IPv6 hosts in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{self.port}{path}"

    def stats(self) -> dict[str, int]:
        """A copy of the counters. Any thread."""
        return asdict(self._stats)

    async def start(self) -> None:
        """Bind the port and enter the initial mode (``mode=`` of the constructor)."""
        if self._started:
            return
        self._lock = asyncio.Lock()
        # hold the port from the start: a socket bound (not listening) is the 'refuse' state
        self._reserve = self._bind(self._port)
        self._port = int(self._reserve.getsockname()[1])
        self._started = True
        self._mode = "refuse"
        await self.set_mode(self._initial_mode)

    async def stop(self) -> None:
        """Close the port and every connection. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._flowing.set()
        await self._close_listeners()
        for c in list(self._conns):
            c.close(rst=False)
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def in_thread(self) -> ThreadedFaultProxy:
        """Run this proxy on an event loop in a thread of its own (a context manager; see the module docstring)."""
        return ThreadedFaultProxy(self)

    async def set_mode(
        self,
        mode: str,
        *,
        latency_ms: float = 0.0,
        bandwidth_bps: float = 0.0,
        after_bytes: int = 0,
    ) -> None:
        """Switch to ``mode`` (see the module docstring); returns once the new mode is in force.

        ``latency_ms``/``bandwidth_bps`` (0: none) apply to forwarding modes (``pass``, ``latency``, ``tls``);
        ``after_bytes`` to ``reset``. Parameters not given are reset to their defaults.
        """
        self._check_mode(mode)
        if mode == "latency" and latency_ms <= 0 and bandwidth_bps <= 0:
            raise ValueError("mode 'latency' needs latency_ms > 0 or bandwidth_bps > 0")
        if latency_ms < 0 or bandwidth_bps < 0 or after_bytes < 0:
            raise ValueError("latency_ms, bandwidth_bps and after_bytes must be >= 0")
        if not self._started or self._lock is None:
            raise RuntimeError(f"{self.name} not started")
        async with self._lock:
            old, self._mode = self._mode, mode
            self._latency_s = latency_ms / 1000.0
            self._bandwidth_bps = float(bandwidth_bps)
            self._after_bytes = int(after_bytes)
            if mode == "blackhole":
                self._flowing.clear()
            if mode in _BREAKS_OPEN:
                for c in list(self._conns):
                    c.close(rst=mode != "tls_fail")
            kind = self._listener_kind(mode)
            if kind != self._listener_kind(old):
                await self._close_listeners()
                if kind == "accept":
                    self._open_listener()
                elif kind == "hole":
                    await self._open_hole()
                else:
                    self._reserve = self._bind(self._port)
            if mode != "blackhole":
                self._flowing.set()
        log.debug("%s: %s -> %s", self.name, old, mode)

    # ------------------------------------------------------------------------------------------------ listeners
    @staticmethod
    def _listener_kind(mode: str) -> str:
        return "accept" if mode in _ACCEPTING else "hole" if mode == "blackhole" else "none"

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "tls" and self._tls is None:
            raise ValueError("mode 'tls' needs FaultProxy(tls=<server SSLContext>)")
        if mode == "tls_fail" and self._tls_untrusted is None:
            raise ValueError("mode 'tls_fail' needs FaultProxy(tls_untrusted=<server SSLContext>)")

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(_family(self.listen_host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _open_listener(self) -> None:
        sock = self._bind(self._port)
        sock.listen(_LISTEN_BACKLOG)
        self._listener = sock
        self._accept_task = asyncio.create_task(self._accept_loop(sock), name=f"{self.name}-accept")

    async def _open_hole(self) -> None:
        """Listen with backlog 0 and fill the accept queue with our own connections until a connect hangs."""
        sock = self._bind(self._port)
        sock.listen(0)
        self._hole = sock
        loop = asyncio.get_running_loop()
        for _ in range(_HOLE_MAX_FILLERS):
            probe = socket.socket(_family(self.listen_host), socket.SOCK_STREAM)
            probe.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(probe, (self.listen_host, self._port)), _HOLE_PROBE_S)
            except TimeoutError:
                probe.close()  # its SYN was dropped: the queue is full, connects now hang
                return
            self._fillers.append(probe)
        raise RuntimeError(f"{self.name}: could not fill the accept queue of the black hole")

    async def _close_listeners(self) -> None:
        if self._accept_task is not None:
            task, self._accept_task = self._accept_task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for attr in ("_listener", "_reserve", "_hole"):
            sock = getattr(self, attr)
            if sock is not None:
                sock.close()
                setattr(self, attr, None)
        for f in self._fillers:
            f.close()
        self._fillers.clear()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(sock)
            self._stats.connections += 1
            task = asyncio.create_task(self._handle(client), name=f"{self.name}-conn")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    # ------------------------------------------------------------------------------------------------ connections
    async def _handle(self, client: socket.socket) -> None:
        mode = self._mode
        if mode == "reset" and self._after_bytes <= 0:
            _rst_socket(client)
            self._stats.resets += 1
            return
        loop = asyncio.get_running_loop()
        ctx = self._tls if mode == "tls" else self._tls_untrusted if mode == "tls_fail" else None
        reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, client, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if ctx else None
            )
        except (OSError, ssl.SSLError, TimeoutError):
            if ctx is not None:
                self._stats.tls_failures += 1
            client.close()
            return
        if ctx is not None:
            self._stats.tls_handshakes += 1
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            target = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self._stats.upstream_failures += 1
            _rst_writer(writer)
            return
        except BaseException:  # cancelled (stop) before the connection was handed over
            writer.close()
            raise
        conn = _Conn(self, (reader, writer), target, self._after_bytes if mode == "reset" else None)
        self._conns.add(conn)
        self._stats.active += 1
        try:
            await conn.run()
        finally:
            self._stats.active -= 1
            self._conns.discard(conn)
            conn.close(rst=False)


class ThreadedFaultProxy:
    """A :class:`FaultProxy` running on its own event loop in thread ``<name>``, for synchronous code.

    ``with FaultProxy(...).in_thread() as p:`` starts it (the port is bound when ``__enter__`` returns);
    :meth:`set_mode` blocks until the mode is in force. Any thread.
    """

    def __init__(self, proxy: FaultProxy, timeout_s: float = 10.0) -> None:
        self.proxy = proxy
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.proxy.port

    def url(self, scheme: str = "http", path: str = "") -> str:
        return self.proxy.url(scheme, path)

    def stats(self) -> dict[str, int]:
        return self.proxy.stats()

    def set_mode(self, mode: str, **params: Any) -> None:
        """See :meth:`FaultProxy.set_mode`."""
        self._call(self.proxy.set_mode(mode, **params))

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=main, name=self.proxy.name, daemon=True)
        self._thread.start()
        ready.wait(self._timeout_s)
        try:
            self._call(self.proxy.start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the proxy, its loop and its thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                self._call(self.proxy.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout_s)
            self._loop = self._thread = None
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.proxy.name} thread not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)

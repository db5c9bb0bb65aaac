"""A TCP relay between the gateway and the receiver that knows when an upload is in flight, for the power-cut
harness (:mod:`hil_tests.powercut`).

It runs its own asyncio loop in a daemon thread. Bytes are forwarded unchanged in both directions; per
connection it tracks whether request bytes went up and no response byte has come back yet (an upload in
flight). The harness *arms* one trigger at a time:

- ``"request"``: call ``fire()`` once request bytes have been forwarded to the receiver and ``delay_s`` later
  the response has still not come back (0 = at once, right after the first request chunk went up);
- ``"response"``: when the receiver's answer reaches the relay, do NOT forward it (that connection's answer is
  held and later dropped) and call ``fire()``: the batch has landed but the gateway never gets the ack.

``fire()`` runs on the relay's thread (it sends SIGKILL: as close to the moment as this process can get).
``drop_all()`` closes every connection (after a kill, so the receiver sees the client go away).
Test code only: never imported by the product packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

Trigger = Literal["request", "response"]
CHUNK: Final = 65536


@dataclass(eq=False)  # hashed by identity (kept in a set)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    up_writer: asyncio.StreamWriter | None = None
    in_flight: bool = False  # request bytes went up since the last response byte came back
    held: bool = False  # the answer is being held back (trigger "response")
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class RelayStats:
    connections: int = 0
    requests: int = 0  # request starts (first chunk after a response or on a new connection)
    responses: int = 0  # response starts forwarded
    held: int = 0  # answers held back


class Relay:
    """Forward 127.0.0.1:``port`` → 127.0.0.1:``upstream_port``. ``start()`` / ``close()`` from one thread."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream_port = upstream_port
        self.host = host
        self.port = 0
        self.stats = RelayStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()  # guards the trigger
        self._trigger: Trigger | None = None
        self._delay_s = 0.0
        self._fire: Callable[[], None] | None = None
        self._generation = 0  # bumped by arm()/disarm(): a delayed check of an older arming does nothing
        self.fired = threading.Event()  # set when the armed trigger fired

    # ------------------------------------------------------------------------------------------- control
    def start(self) -> int:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, 0, reuse_address=True)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="powercut-relay", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self.port

    def arm(self, trigger: Trigger, fire: Callable[[], None], delay_s: float = 0.0) -> None:
        """Fire once on the next ``trigger`` (see the module docstring). Any thread."""
        with self._lock:
            self.fired.clear()
            self._generation += 1
            self._trigger, self._fire, self._delay_s = trigger, fire, delay_s

    def disarm(self) -> None:
        with self._lock:
            self._generation += 1
            self._trigger, self._fire = None, None

    def drop_all(self) -> None:
        """Close every relayed connection and wait until that is done. Any thread but the relay's."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._drop_all(), loop).result(10.0)

    def close(self) -> None:
        """Stop serving, drop every connection, end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        self._loop = self._thread = None

    # ------------------------------------------------------------------------------------------- relay thread
    def _take_trigger(self, trigger: Trigger) -> tuple[Callable[[], None], float, int] | None:
        """The armed callback, its delay and generation, if ``trigger`` is armed (disarming it)."""
        with self._lock:
            if self._trigger != trigger or self._fire is None:
                return None
            fire, self._fire, self._trigger = self._fire, None, None
            return fire, self._delay_s, self._generation

    def _do_fire(self, fire: Callable[[], None]) -> None:
        fire()
        self.fired.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            self._conns.discard(conn)
            return
        conn.up_writer = up_writer
        up = asyncio.create_task(self._pump_up(conn, up_writer))
        down = asyncio.create_task(self._pump_down(conn, up_reader))
        conn.tasks = [up, down]
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._close_conn(conn)

    async def _pump_up(self, conn: _Conn, up_writer: asyncio.StreamWriter) -> None:
        """gateway → receiver."""
        while True:
            data = await conn.reader.read(CHUNK)
            if not data:
                return
            starting = not conn.in_flight
            conn.in_flight = True
            up_writer.write(data)
            await up_writer.drain()
            if starting:
                self.stats.requests += 1
                armed = self._take_trigger("request")
                if armed is not None:
                    fire, delay_s, generation = armed
                    if delay_s <= 0:
                        self._do_fire(fire)
                    else:
                        asyncio.get_running_loop().call_later(
                            delay_s, self._fire_if_in_flight, conn, fire, generation
                        )

    def _fire_if_in_flight(self, conn: _Conn, fire: Callable[[], None], generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # disarmed or re-armed meanwhile
            if not (conn.in_flight and conn in self._conns):  # answered first: fire on the next request
                self._trigger, self._fire, self._delay_s = "request", fire, 0.0
                return
        self._do_fire(fire)

    async def _pump_down(self, conn: _Conn, up_reader: asyncio.StreamReader) -> None:
        """receiver → gateway."""
        while True:
            data = await up_reader.read(CHUNK)
            if not data:
                return
            if conn.held:
                continue  # the held answer (and anything after it) never reaches the gateway
            if conn.in_flight:
                armed = self._take_trigger("response")
                if armed is not None:
                    conn.held = True
                    self.stats.held += 1
                    self._do_fire(armed[0])
                    continue
                self.stats.responses += 1
            conn.in_flight = False
            conn.writer.write(data)
            await conn.writer.drain()

    async def _close_conn(self, conn: _Conn) -> None:
        for t in conn.tasks:
            t.cancel()
        for t in conn.tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await t
        for w in (conn.writer, conn.up_writer):
            if w is not None:
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()
        self._conns.discard(conn)

    async def _drop_all(self) -> None:
        await asyncio.gather(*(self._close_conn(c) for c in list(self._conns)), return_exceptions=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()
        if self._server is not None:
            await self._server.wait_closed()

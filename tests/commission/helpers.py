"""Shared by the commissioning tests: run a command through a ``gateway``-like parser, and a Modbus simulator
served from its own thread (so a test can call the synchronous CLI, which runs its own event loop)."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType

from gateway.commission.cli import COMMANDS, add_commands, run
from hil_tests.modbus_sim import SimServer, SimUnit
from tests.waiting import wait_until


def cli(argv: Sequence[str]) -> int:
    """Parse and run like ``gateway.cli.main`` does once the lead wires ``add_commands``/``run`` in."""
    parser = argparse.ArgumentParser(prog="gateway")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return 2 if e.code not in (0, None) else 0
    assert args.command in COMMANDS
    return run(args)


class ThreadedModbusSim:
    """A :class:`SimServer` on 127.0.0.1 running on its own loop in a thread; ``port`` once entered."""

    def __init__(self, units: Sequence[SimUnit]) -> None:
        self.units = list(units)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="modbus-sim", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with SimServer(self.units, tcp=("127.0.0.1", 0)) as srv:
            self.port = srv.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedModbusSim:
        self._thread.start()
        wait_until(self._ready.is_set, what="modbus simulator to listen")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)

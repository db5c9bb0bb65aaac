"""Test helpers for the DNP3 driver: a byte-level fake outstation (for malformed input only: garbage, fragments
cut off mid-way, broken objects, silence), a reading sink, and config builders.

The fake frames its answers with dnp3py's link-layer builder (CRCs right) and hand-made transport/application
bytes, so each test decides exactly which layer is broken. Everything is owned by the calling test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import numpy as np
from dnp3.datalink.builder import build_unconfirmed_user_data
from dnp3.datalink.parser import FrameParser

from gateway.config import DeviceConfig, Dnp3Settings, LinkConfig, PointConfig
from gateway.model import ReadingBatch

DEVICE = "rtu"
MASTER, OUTSTATION = 1, 10


def dnp3_link(port: int, points: Sequence[PointConfig], *, timeout_s: float = 2.0, **settings: object) -> LinkConfig:
    """A dnp3_tcp link to 127.0.0.1:``port`` with one device ``rtu`` (outstation 10, master 1)."""
    dnp3 = Dnp3Settings(master_address=MASTER, outstation_address=OUTSTATION, **settings)  # type: ignore[arg-type]
    device = DeviceConfig(name=DEVICE, timeout_s=timeout_s, points=tuple(points), dnp3=dnp3)
    return LinkConfig(name="dnp", protocol="dnp3_tcp", host="127.0.0.1", port=port, connect_timeout_s=2.0,
                      devices=(device,))


def point_ids(points: Sequence[PointConfig]) -> dict[str, int]:
    return {f"{DEVICE}.{p.name}": i + 100 for i, p in enumerate(points)}


class Sink:
    """Collects delivered batches; looks readings up by point name."""

    def __init__(self, points: Sequence[PointConfig]) -> None:
        self.batches: list[ReadingBatch] = []
        self._ids = {p.name: i + 100 for i, p in enumerate(points)}

    def __call__(self, batch: ReadingBatch) -> None:
        assert len(batch) > 0, "the driver must not deliver empty batches"
        self.batches.append(batch)

    def clear(self) -> None:
        self.batches.clear()

    def rows(self, name: str) -> list[tuple[int, float, int]]:
        """Every ``(ts, value, quality)`` of point ``name``, in delivery order."""
        pid = self._ids[name]
        out: list[tuple[int, float, int]] = []
        for b in self.batches:
            sel = np.flatnonzero(b.point_id == pid)
            out.extend(zip(b.ts[sel].tolist(), b.value[sel].tolist(), b.quality[sel].tolist(), strict=True))
        return out

    def last(self, name: str) -> tuple[int, float, int]:
        rows = self.rows(name)
        assert rows, f"no reading of {name}"
        return rows[-1]

    def count(self) -> int:
        return sum(len(b) for b in self.batches)


# ---------------------------------------------------------------------------------------- byte-level fake


def response_apdu(seq: int, objects: bytes = b"", *, iin: int = 0, fir: bool = True, fin: bool = True) -> bytes:
    """A solicited response fragment: control, function 0x81, IIN (little-endian), objects."""
    control = (0x80 if fir else 0) | (0x40 if fin else 0) | (seq & 0x0F)
    return bytes((control, 0x81)) + iin.to_bytes(2, "little") + objects


def link_frames(apdu: bytes, *, segments: int | None = None, tseq: int = 0) -> bytes:
    """``apdu`` as transport segments in link frames from the outstation; ``segments`` cuts after that many."""
    chunks = [apdu[i : i + 249] for i in range(0, len(apdu), 249)] or [b""]
    out = b""
    for n, chunk in enumerate(chunks[:segments] if segments is not None else chunks):
        header = (0x80 if n == len(chunks) - 1 else 0) | (0x40 if n == 0 else 0) | ((tseq + n) & 0x3F)
        frame = build_unconfirmed_user_data(destination=MASTER, source=OUTSTATION, dir_from_master=False,
                                            user_data=bytes((header,)) + chunk)
        out += frame.to_bytes()
    return out


# answer(app_seq, function_code) -> bytes to send (b"" for nothing)
Answer = Callable[[int, int], bytes]


class FakeOutstation:
    """TCP server on 127.0.0.1 that parses each request's link frames and answers with ``answer(seq, fc)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.port = 0
        self.requests: list[tuple[int, int]] = []  # (app seq, function code) of each request received
        self.apdus: list[bytes] = []  # each request's application fragment (single-segment requests)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeOutstation:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        parser = FrameParser()
        try:
            while data := await reader.read(4096):
                for frame in parser.feed(data):
                    if len(frame.user_data) < 3:
                        continue  # link reset / link status: no application data
                    seq, fc = frame.user_data[1] & 0x0F, frame.user_data[2]
                    if fc == 0x00:  # CONFIRM
                        continue
                    self.requests.append((seq, fc))
                    self.apdus.append(bytes(frame.user_data[1:]))
                    reply = self.answer(seq, fc)
                    if reply:
                        writer.write(reply)
                        await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

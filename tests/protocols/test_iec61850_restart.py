"""Exactly once across a gateway restart: a new IEC 61850 driver seeded with the store's last committed readings
(``committed`` = :meth:`storefwd.store.Store.last_readings`) skips the IED's replay of its buffer and the GI values
the store already has, and delivers what the store never committed and everything newer. Against the real
libiec61850 server of test_iec61850.py; the "restart" is a second driver object (no entry ids) on the same IED.
Also: ``Store.last_readings`` itself, and the replay rule on its own (clock gone backwards, gateway time)."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.model import PointInfo, Q, ReadingBatch
from hil_tests import iec61850_server as sim
from hil_tests.iec61850_server import Iec61850Server
from protocols.iec61850 import Iec61850Session
from storefwd import Store
from storefwd.errors import StoreClosed
from tests.protocols.test_iec61850 import BRCB, ICD, LD, Collector, at, ids_for, link, pump_until, started

# the points the BRCB's data set carries (the others of POINTS are polled: a poll repeats its value by design)
REPORTED = ("Ia", "Ib", "TotW", "Hz", "CB", "Pos1", "Pos2")
Committed = Callable[[list[int]], dict[int, tuple[int, float, int]]]


@pytest.fixture
def server() -> Iterator[Iec61850Server]:
    with Iec61850Server(ICD) as srv:
        yield srv
    assert not sim.DIRECTOR_ERRORS, sim.DIRECTOR_ERRORS


def _rows(batches: list[ReadingBatch]) -> list[tuple[int, int, float, int]]:
    return [(int(b.point_id[k]), int(b.ts[k]), float(b.value[k]), int(b.quality[k]))
            for b in batches for k in range(len(b))]


async def _before_and_after_restart(
    server: Iec61850Server, tmp_path: Path, make_committed: Callable[[Store], Committed | None],
    stop_marks: bool = False,
) -> tuple[list[tuple[int, int, float, int]], Collector, Iec61850Session, dict[str, int]]:
    """Driver A runs, delivers, is "killed" with its last two Ia readings not yet committed; the IED changes
    while nobody is connected; driver B (a restarted gateway) starts with ``make_committed(store)``.
    Returns (rows the store committed, B's collector, B, ids); B is started and has seen a change made after its
    GI (so the replay and the GI are all processed), and is closed by the caller."""
    # every reported point gets a source time (a t of 0 would be stamped with gateway time: never seeded)
    for k, (ref, da, v) in enumerate([("MMXU1.A.phsA", "cVal.mag.f", 10.0), ("MMXU1.A.phsB", "cVal.mag.f", 11.0),
                                      ("MMXU1.TotW", "mag.f", 12.0), ("MMXU1.Hz", "mag.f", 50.0),
                                      ("XCBR1.Pos", "stVal", 2), ("CSWI1.Pos", "stVal", 1),
                                      ("CSWI2.Pos", "stVal", 1)]):
        server.update(f"{LD}/{ref}", da, v, t=at(1 + k))
    lk = link(server.port, reports=(BRCB,))
    ids = ids_for(lk)
    async with started(lk) as (drv_a, col_a):
        await pump_until(drv_a, lambda: all(col_a.of(n) for n in REPORTED), "A: the GI")
        for k in range(5):
            server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 1.0 + k, t=at(20 + k))
        await pump_until(drv_a, lambda: col_a.values("Ia")[-1:] == [5.0], "A: the changes")
    # the kill: A's last two Ia readings (4.0, 5.0) were still in memory, never committed
    ia = ids["ied1.Ia"]
    rows = _rows(col_a.batches)
    ia_at = [i for i, r in enumerate(rows) if r[0] == ia]
    committed_rows = [r for i, r in enumerate(rows) if i not in ia_at[-2:]]
    assert [r[2] for r in committed_rows if r[0] == ia][-1] == 3.0
    # changes while the gateway is down: the BRCB buffers them
    server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 100.0, t=at(40))
    server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 101.0, t=at(41))
    server.update(f"{LD}/XCBR1.Pos", "stVal", 1, t=at(42))

    if stop_marks:  # a graceful stop: the runner marked every point OLD_DATA, stamped with gateway time
        mark_q = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.GATEWAY_TIME)
        last = {r[0]: r for r in committed_rows}
        mark_ts = max(r[1] for r in committed_rows) + 10**9
        committed_rows += [(p, mark_ts, r[2], mark_q) for p, r in last.items()]
    store = Store(tmp_path / "store.duckdb")
    try:
        pid = np.array([r[0] for r in committed_rows], dtype=np.int32)
        store.put(ReadingBatch.of([r[1] for r in committed_rows], pid, [r[2] for r in committed_rows],
                                  [r[3] for r in committed_rows]))
        await asyncio.to_thread(store.flush)
        col_b = Collector(ids)
        drv_b = Iec61850Session(lk, ids, col_b, committed=make_committed(store))
        await drv_b.connect()
        try:
            await drv_b.start_session()
            # a change after B's GI was queued: once it arrives, the replay and the GI before it are processed
            server.update(f"{LD}/MMXU1.TotW", "mag.f", 77.0, t=at(60))
            await pump_until(drv_b, lambda: 77.0 in col_b.values("TotW"), "B: the replay, the GI, a new change")
        except BaseException:
            drv_b.close()
            raise
    finally:
        store.close()
    return committed_rows, col_b, drv_b, ids


async def test_restart_with_committed_readings_skips_the_replay_and_delivers_the_rest(
    server: Iec61850Server, tmp_path: Path
) -> None:
    committed, col, drv, ids = await _before_and_after_restart(server, tmp_path, lambda s: s.last_readings)
    try:
        st = drv.status()
        assert st["seeded_points"] == len(REPORTED)
        skipped = st["replayed_skipped"]
        assert isinstance(skipped, int) and skipped >= 3 + len(REPORTED)  # Ia 1..3 and the old GI, the new GI
        # Ia: what the store never committed (4, 5), then the changes made while the gateway was down
        ia = col.of("Ia")
        assert [v for _, v, _ in ia] == [4.0, 5.0, 100.0, 101.0]
        assert [t for t, _, _ in ia] == sorted(t for t, _, _ in ia)
        assert col.values("CB") == [1.0]  # changed while down
        assert col.values("TotW") == [77.0]  # its GI value was committed: only the new change
        for name in ("Hz", "Ib", "Pos1", "Pos2"):  # unchanged: the replay and the GI repeat the committed value
            assert col.of(name) == [], name
        # no reading stored twice (same point, time, value and quality), none lost
        reported = {ids[f"ied1.{n}"] for n in REPORTED}
        all_rows = [r for r in committed + _rows(col.batches) if r[0] in reported]
        assert len(all_rows) == len(set(all_rows))
    finally:
        drv.close()


async def test_restart_after_a_graceful_stop_skips_the_replay_too(server: Iec61850Server, tmp_path: Path) -> None:
    """After a graceful stop the store's last reading of every point is a gateway-time OLD_DATA mark; the gateway
    asks for the IED's own last readings (exclude_quality=GATEWAY_TIME), so the replay is still recognised."""
    committed, col, drv, ids = await _before_and_after_restart(
        server, tmp_path, lambda s: functools.partial(s.last_readings, exclude_quality=int(Q.GATEWAY_TIME)),
        stop_marks=True)
    try:
        assert drv.status()["seeded_points"] == len(REPORTED)
        assert [v for _, v, _ in col.of("Ia")] == [4.0, 5.0, 100.0, 101.0]
        for name in ("Hz", "Ib", "Pos1", "Pos2"):
            assert col.of(name) == [], name
        reported = {ids[f"ied1.{n}"] for n in REPORTED}
        device_rows = [r for r in committed + _rows(col.batches) if r[0] in reported and not r[3] & int(Q.GATEWAY_TIME)]
        assert len(device_rows) == len(set(device_rows))  # no IED reading stored twice
    finally:
        drv.close()


async def test_restart_without_committed_readings_is_at_least_once(server: Iec61850Server, tmp_path: Path) -> None:
    """committed=None (no store): unchanged behaviour, the IED's whole buffer is delivered again."""
    committed, col, drv, ids = await _before_and_after_restart(server, tmp_path, lambda s: None)
    try:
        st = drv.status()
        assert "seeded_points" not in st and "replayed_skipped" not in st
        ia = col.values("Ia")
        assert {1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 101.0} <= set(ia)  # the committed ones again, and the rest
        assert col.of("Hz")  # the replayed GI (and/or the new one) again
        reported = {ids[f"ied1.{n}"] for n in REPORTED}
        all_rows = [r for r in committed + _rows(col.batches) if r[0] in reported]
        assert len(all_rows) > len(set(all_rows))  # stored twice: at-least-once
    finally:
        drv.close()


async def test_store_that_cannot_answer_leaves_the_session_unseeded(server: Iec61850Server) -> None:
    def broken(_ids: list[int]) -> dict[int, tuple[int, float, int]]:
        raise StoreClosed("store is closed")

    lk = link(server.port, reports=(BRCB,))
    ids = ids_for(lk)
    col = Collector(ids)
    drv = Iec61850Session(lk, ids, col, committed=broken)
    await drv.connect()
    try:
        await drv.start_session()
        await pump_until(drv, lambda: bool(col.of("Ia")), "the GI")
        st = drv.status()
        assert st["seed_errors"] == 1
        assert "store is closed" in str(st["last_error"])
    finally:
        drv.close()


# ----------------------------------------------------------------------------------------------------
# The replay rule on its own (no server)
# ----------------------------------------------------------------------------------------------------


async def test_seeding_and_the_replay_rule() -> None:
    lk = link(1, reports=(BRCB,))
    ids = ids_for(lk)
    asked: list[list[int]] = []

    def committed(point_ids: list[int]) -> dict[int, tuple[int, float, int]]:
        asked.append(point_ids)
        return {ids["ied1.Ia"]: (1_000, 5.0, int(Q.GOOD)),
                ids["ied1.Hz"]: (2_000, math.nan, int(Q.INVALID)),
                ids["ied1.CB"]: (3_000, 1.0, int(Q.QUESTIONABLE | Q.OLD_DATA | Q.GATEWAY_TIME))}  # a loss mark

    drv = Iec61850Session(lk, ids, Collector(ids), committed=committed)
    await drv._load_seed(committed)
    assert sorted(asked[0]) == sorted(ids.values())
    ia, hz = (drv._by_name[n].index for n in ("Ia", "Hz"))
    assert set(drv._seed) == {ia, hz}  # a gateway-time reading is no IED time: not seeded
    assert drv.status()["seeded_points"] == 2
    good = int(Q.GOOD)
    assert drv._replayed(ia, 4.0, good, 900)  # older than the store's last: a replay
    assert not drv._replayed(ia, 5.0, good | int(Q.GATEWAY_TIME), 900)  # gateway time: never skipped
    assert not drv._replayed(ia, 6.0, good, 1_000)  # same t, other value: new
    assert not drv._replayed(ia, 5.0, int(Q.QUESTIONABLE), 1_000)  # same t, other quality: new
    assert not drv._replayed(ia, 5.0, good, 1_001)  # newer
    assert drv._replayed(ia, 5.0, good, 1_000)  # the store's last reading itself
    # once the replay reached it, older values are new data (an IED clock gone backwards), but the GI's
    # repetition of the last reading is still skipped
    assert not drv._replayed(ia, 3.0, good, 500)
    assert drv._replayed(ia, 5.0, good, 1_000)
    assert drv._replayed(hz, math.nan, int(Q.INVALID), 2_000)  # NaN equals NaN here
    # a delivered reading ends the point's seed
    drv._add(ia, 7.0, good, 1_500, [], [], [], [])
    assert ia not in drv._seed and hz in drv._seed


# ----------------------------------------------------------------------------------------------------
# Store.last_readings
# ----------------------------------------------------------------------------------------------------


def test_store_last_readings_latest_per_point(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        a, b, c, d = (int(i) for i in store.register_points(
            [PointInfo(name=f"dev.p{k}", device="dev", point=f"p{k}") for k in range(4)]))
        assert store.last_readings([a, b]) == {}  # nothing stored yet
        store.put(ReadingBatch.of([10, 30, 20], [a, a, a], [1.0, 3.0, 2.0], [0, 64, 0]))  # not in ts order
        store.put(ReadingBatch.of([50, 50, 40], [b, b, b], [5.0, 6.0, 4.0], [0, 1, 0]))  # a tie on ts 50
        store.put(ReadingBatch.of([70], [c], [math.nan], [int(Q.INVALID)]))
        store.put(ReadingBatch.of([60], [a], [9.0], [0]))
        store.flush()
        got = store.last_readings([a, b, c, d, 999])
        assert got[a] == (60, 9.0, 0)
        assert got[b] == (50, 6.0, 1)  # equal ts: the last stored (highest seq)
        assert got[c][0] == 70 and math.isnan(got[c][1]) and got[c][2] == int(Q.INVALID)
        assert d not in got and 999 not in got  # no reading / unknown id: absent
        assert store.last_readings([b, b]) == {b: (50, 6.0, 1)}
        # a stop's gateway-time marks after the IED's last reading: excluded on request
        gt = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.GATEWAY_TIME)
        store.put(ReadingBatch.of([80], [a], [9.0], [gt]))
        store.flush()
        assert store.last_readings([a])[a] == (80, 9.0, gt)
        assert store.last_readings([a], exclude_quality=int(Q.GATEWAY_TIME)) == {a: (60, 9.0, 0)}
        assert store.last_readings([]) == {}

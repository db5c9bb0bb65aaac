"""Disk budget: downsampling, eviction, gap records, priorities, backlog accounting (storefwd/retention.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from gateway.model import Event, PointInfo, ReadingBatch
from storefwd import Store, schema
from storefwd.retention import AVG_QUALITY, AVG_SUFFIX, MINUTE_NS, RetentionPolicy
from tests.storefwd.helpers import T0

NOW = T0 + 3600 * 10**9  # the store's clock: one hour after the data starts
MINUTES = 6
POINTS = 3


def quiet_policy(**kw: float) -> RetentionPolicy:
    """A budget the writer never reaches by itself: the tests drive reclaim_step()."""
    base: dict[str, float] = {"budget_bytes": 1 << 40, "downsample_min_age_s": 600.0, "chunk_rows": 1000}
    base.update(kw)
    return RetentionPolicy(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "gw.duckdb", commit_interval_ms=5, retention_policy=quiet_policy(),
               clock_ns=lambda: NOW) as s:  # fmt: skip
        yield s


def one_hz(store: Store, minutes: int = MINUTES, points: int = POINTS) -> tuple[np.ndarray, ReadingBatch]:
    """``points`` points read once a second for ``minutes`` minutes from T0; values are pseudo-random."""
    ids = store.register_points([PointInfo(f"f1.p{i}", "f1", f"p{i}", "A") for i in range(points)])
    n = minutes * 60
    ts = np.repeat(T0 + np.arange(n, dtype=np.int64) * 10**9, points)
    pid = np.tile(ids, n)
    rng = np.random.default_rng(7)
    values = np.round(rng.normal(100.0, 5.0, len(ts)), 1)
    b = ReadingBatch.of(ts, pid, values, 0)
    store.offer(b)
    store.flush()
    return ids, b


def truth(b: ReadingBatch, pid: int) -> dict[int, tuple[float, float, float, float, int]]:
    """Per minute of point ``pid``: min, max, mean, last, count computed with numpy."""
    out = {}
    sel = b.point_id == pid
    ts, v = b.ts[sel], b.value[sel]
    for m in np.unique(ts - ts % MINUTE_NS):
        w = (ts - ts % MINUTE_NS) == m
        out[int(m)] = (float(v[w].min()), float(v[w].max()), float(v[w].mean()), float(v[w][-1]), int(w.sum()))
    return out


def all_rows(store: Store) -> pa.Table:
    return store.read_after("cloud", 0, 10**9)


def test_downsampling_keeps_min_max_last_and_an_average_row_per_minute(store: Store) -> None:
    ids, b = one_hz(store)
    gap = store.reclaim_step()
    assert gap is not None and gap["action"] == "downsampled"
    assert gap["seq_from"] == 1 and gap["seq_to"] == 1000  # one chunk of 1000 rows, by seq
    rows = all_rows(store).to_pydict()
    kept = {s: (t, p, v, q) for s, t, p, v, q in zip(*rows.values(), strict=True)}
    infos = store.point_infos()
    by_seq = {i + 1: (int(b.ts[i]), int(b.point_id[i]), float(b.value[i])) for i in range(len(b))}
    assert len([s for s in kept if s <= 1000]) == gap["rows_after"] < gap["rows_before"] == 1000
    for s, (t, p, v, q) in kept.items():
        if s > 1000:
            assert (t, p, v) == by_seq[s] and q == 0  # outside the chunk: untouched
            continue
        assert t == by_seq[s][0]  # every kept row keeps its seq and ts
        if infos[p].name.endswith(AVG_SUFFIX):  # the average row of its minute
            raw = store.point_ids()[infos[p].name.removesuffix(AVG_SUFFIX)]
            assert by_seq[s][1] == raw and q == AVG_QUALITY
        else:
            assert (p, v, q) == (by_seq[s][1], by_seq[s][2], 0)  # a raw reading, as it was
    # minutes wholly inside the chunk keep exactly 4 rows per point: min, max, last, average
    def in_first_minute(p: int) -> int:
        names = (infos[p].name, infos[p].name + AVG_SUFFIX)
        return sum(1 for t, pp, _, _ in kept.values() if t < T0 + MINUTE_NS and infos[pp].name in names)

    first_minute = {p: in_first_minute(p) for p in ids.tolist()}
    assert set(first_minute.values()) == {4}
    assert store.stats()["downsampled_rows"] == 1000 - gap["rows_after"]


def test_aggregate_is_unchanged_by_downsampling(store: Store) -> None:
    ids, b = one_hz(store)
    before = store.aggregate(None, T0, T0 + MINUTES * MINUTE_NS, MINUTE_NS).to_pylist()
    for _ in range(2):  # 1080 rows in chunks of 1000
        gap = store.reclaim_step()
        assert gap is not None and gap["action"] == "downsampled"
    after = store.aggregate(ids.tolist(), T0, T0 + MINUTES * MINUTE_NS, MINUTE_NS).to_pylist()
    assert store.stats()["downsampled_rows"] > 0
    for row in after:
        mn, mx, mean, last, count = truth(b, row["point_id"])[row["bucket_ns"]]
        assert (row["min"], row["max"], row["last"], row["count"]) == (mn, mx, last, count)
        assert row["avg"] == pytest.approx(mean, rel=1e-12)
    assert [(r["point_id"], r["bucket_ns"], r["count"]) for r in after] == [
        (r["point_id"], r["bucket_ns"], r["count"]) for r in before
    ]
    # 5-minute buckets combine the minute summaries with raw rows the same way
    five = store.aggregate(ids.tolist(), T0, T0 + MINUTES * MINUTE_NS, 5 * MINUTE_NS).to_pylist()
    assert sum(r["count"] for r in five) == len(b)


def test_recent_readings_are_not_downsampled_and_eviction_follows(tmp_path: Path) -> None:
    # the clock says the data is only 2 minutes old: nothing may be downsampled, so the oldest is evicted
    with Store(tmp_path / "gw.duckdb", commit_interval_ms=5, retention_policy=quiet_policy(),
               clock_ns=lambda: T0 + 2 * MINUTE_NS) as s:  # fmt: skip
        one_hz(s, minutes=2, points=1)
        s.add_events([Event(T0, "trip", "51 trip", priority=0), Event(T0, "control", "open CB", priority=1),
                      Event(T0, "comm", "poll slow", priority=2)])  # fmt: skip
        gap = s.reclaim_step()
        assert gap is not None and gap["action"] == "evicted"
        assert (gap["seq_from"], gap["seq_to"], gap["rows_before"]) == (1, 120, 120)
        assert gap["events_evicted"] == 1
        assert s.read_after("cloud", 0, 10).num_rows == 0
        assert s.stats()["first_seq"] == 121 and s.backlog("cloud") == 0
        kinds = s.events_after(0, 100).column("kind").to_pylist()
        assert kinds.count("trip") == 1 and kinds.count("control") == 1 and "comm" not in kinds
        assert kinds.count("gap") == 1
        # nothing left that may go: priority 0/1 events are never evicted
        assert s.reclaim_step() is None
        assert {"trip", "control"} <= set(s.events_after(0, 100).column("kind").to_pylist())


def test_gap_record_is_a_priority_0_event_naming_unsynced_sinks(store: Store) -> None:
    store.set_sinks(["cloud", "mqtt"])
    one_hz(store)
    store.ack("cloud", 500)
    gap = store.reclaim_step()
    assert gap is not None and gap["unacked_sinks"] == ["cloud", "mqtt"]
    ev = store.events_after(0, 10).to_pylist()[-1]
    assert (ev["kind"], ev["priority"]) == ("gap", 0)
    data = json.loads(ev["data"])
    assert data == gap
    assert data["ts_from"] == T0 and data["ts_to"] <= T0 + MINUTES * MINUTE_NS
    assert "not yet synced to cloud, mqtt" in ev["message"]
    assert store.stats()["gap_records"] == 1


def test_backlog_counts_the_rows_left_after_downsampling(store: Store) -> None:
    one_hz(store)
    store.ack("cloud", 700)
    store.reclaim_step()
    store.reclaim_step()
    left = store.read_after("cloud", store.watermark("cloud"), 10**9).num_rows
    assert 0 < left < 1080 - 700
    assert store.backlog("cloud") == left
    assert store.backlog("never-acked") == all_rows(store).num_rows
    st = store.sink_stats("cloud")
    assert st["backlog_rows"] == left and st["acked_seq"] == 700
    assert st["oldest_ts"] == int(store.read_after("cloud", 700, 1).column("ts")[0].as_py())
    assert st["oldest_age_s"] == pytest.approx((NOW - st["oldest_ts"]) / 1e9)
    assert st["backlog_bytes"] > 0


def test_uploader_reads_every_remaining_row_in_seq_order(store: Store) -> None:
    one_hz(store)
    store.reclaim_step()
    expected = all_rows(store).column("seq").to_pylist()
    got: list[int] = []
    after = 0
    while (page := store.read_after("cloud", after, 137)).num_rows:
        got.extend(page.column("seq").to_pylist())
        after = got[-1]
    assert got == expected == sorted(expected)


def test_reclaim_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    with Store(path, retention_policy=quiet_policy(), clock_ns=lambda: NOW) as s:
        ids, _ = one_hz(s)
        s.reclaim_step()
        agg = s.aggregate(ids.tolist(), T0, T0 + MINUTES * MINUTE_NS, MINUTE_NS)
        st = s.stats()
        backlog = s.backlog("cloud")
    with Store(path, retention_policy=quiet_policy(), clock_ns=lambda: NOW) as s:
        assert s.aggregate(ids.tolist(), T0, T0 + MINUTES * MINUTE_NS, MINUTE_NS).equals(agg)
        again = s.stats()
        for k in ("rows", "downsampled_rows", "gap_records", "downsampled_seq", "last_seq"):
            assert again[k] == st[k], k
        assert s.backlog("cloud") == backlog
        gap = s.reclaim_step()  # continues after the range already done
        assert gap is not None and gap["seq_from"] == 1001


def test_writer_enforces_the_budget_by_itself(tmp_path: Path) -> None:
    policy = RetentionPolicy(budget_bytes=3 * 1024 * 1024, reserve_free_bytes=0, downsample_min_age_s=0,
                             check_interval_s=0.0, chunk_rows=100_000)  # fmt: skip
    with Store(tmp_path / "gw.duckdb", retention_policy=policy, clock_ns=lambda: NOW) as s:
        ids = s.register_points([PointInfo(f"d.p{i}", "d", f"p{i}") for i in range(100)])
        s.add_event(Event(T0, "trip", "trip kept", priority=0))
        rng = np.random.default_rng(1)
        for k in range(12):  # 1.2M readings ≈ 10 MB raw: three times the budget
            n = 100_000
            ts = T0 + (k * n + np.arange(n, dtype=np.int64)) * 10**7
            s.offer(ReadingBatch.of(ts, np.tile(ids, n // 100), rng.random(n), 0))
            s.flush()
        s.flush()
        st = s.stats()
        assert st["reclaim_steps"] > 0 and st["gap_records"] == st["reclaim_steps"]
        assert st["downsampled_rows"] > 0 and st["evicted_rows"] > 0
        assert st["used_bytes"] <= policy.budget_bytes
        assert st["last_seq"] == 1_200_000  # seqs are never reused
        events = s.events_after(0, 10_000).to_pylist()
        assert any(e["kind"] == "trip" for e in events)
        gaps = [json.loads(e["data"]) for e in events if e["kind"] == "gap"]
        assert gaps[0]["action"] == "downsampled"
        # oldest first: the ranges follow each other
        ends = [g["seq_to"] for g in gaps]
        assert ends == sorted(ends)


def test_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    with Store(path) as s:
        s.offer(ReadingBatch.of(np.array([T0], np.int64), np.array([1], np.int32), np.array([1.0]), 0))
        s.flush()
    with duckdb.connect(str(path), config={"storage_compatibility_version": "v1.2.0"}) as con:
        con.execute("DROP TABLE readings_1m")
        con.execute("DROP TABLE reclaim_log")
        con.execute("DELETE FROM meta WHERE key IN ('downsampled_seq', 'commit_no')")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(path, retention_policy=quiet_policy(), clock_ns=lambda: NOW) as s:
        assert s.last_seq() == 1
        assert s.reclaim_step() is not None
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(schema.SCHEMA_VERSION),)


def test_a_file_with_mostly_free_blocks_is_compacted_at_open(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    policy = quiet_policy(chunk_rows=400_000, compact_min_free_bytes=1024 * 1024)
    with Store(path, retention_policy=policy, clock_ns=lambda: T0 + 2 * MINUTE_NS) as s:
        rng = np.random.default_rng(3)
        for k in range(5):
            n = 200_000
            s.offer(ReadingBatch.of(T0 + np.arange(k * n, (k + 1) * n, dtype=np.int64), np.ones(n, np.int32),
                                    rng.random(n), 0))  # fmt: skip
        s.flush()
        s.add_event(Event(T0, "trip", "kept", priority=0))
        assert s.reclaim_step() is not None and s.reclaim_step() is not None  # evicts 800k of 1M
        kept = all_rows(s)
        big = path.stat().st_size
    with Store(path, retention_policy=policy) as s:
        assert s.compacted is not None and s.compacted.before_bytes == big
        assert path.stat().st_size == s.compacted.after_bytes < big / 2
        assert all_rows(s).equals(kept)
        assert [e["kind"] for e in s.events_after(0, 10).to_pylist()] == ["trip", "gap", "gap"]
        s.offer(ReadingBatch.of(np.array([T0], np.int64), np.array([1], np.int32), np.array([1.0]), 0))
        assert s.flush() == 1_000_001  # seqs go on
    with Store(path, retention_policy=policy) as s:
        assert s.compacted is None  # nothing worth it any more

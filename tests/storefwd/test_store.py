"""Store API on real DuckDB files: ids, ordering, seqs, watermarks, back-pressure, events, errors."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from gateway.model import Event, PointInfo, ReadingBatch
from storefwd import (
    Store,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreVersionError,
    StoreWriteError,
)
from storefwd import schema as sch
from tests.waiting import wait_until

from .helpers import T0, WriterGate, batch, threads


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gw.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db, commit_interval_ms=10) as s:
        yield s


def all_rows(store: Store) -> pa.Table:
    return store.read_after("test", 0, 10**9)


def pts(*names: str, unit: str = "A") -> list[PointInfo]:
    return [PointInfo(n, n.split(".")[0], n.split(".")[1], unit) for n in names]


# ---- points
def test_point_ids_stable_across_reopen(db: Path) -> None:
    with Store(db) as s:
        ids = s.register_points(pts("f1.Ia", "f1.Ib", "f2.P"))
        assert ids.dtype == np.int32
        assert ids.tolist() == [1, 2, 3]
        # already known: same ids, in input order, duplicates allowed
        assert s.register_points(pts("f2.P", "f1.Ia", "f2.P")).tolist() == [3, 1, 3]
    with Store(db) as s:
        assert s.point_infos()[2] == PointInfo("f1.Ib", "f1", "Ib", "A")
        assert s.register_points(pts("f3.Q", "f1.Ib", "f1.Ia")).tolist() == [4, 2, 1]
        assert s.point_ids() == {"f1.Ia": 1, "f1.Ib": 2, "f2.P": 3, "f3.Q": 4}
    with Store(db) as s:
        assert sorted(s.point_infos()) == [1, 2, 3, 4]
        assert s.stats()["points"] == 4


def test_changed_point_info_is_updated_keeping_its_id(db: Path) -> None:
    with Store(db) as s:
        s.register_points(pts("f1.U", unit="V"))
        assert s.register_points(pts("f1.U", unit="kV")).tolist() == [1]
        assert s.point_infos()[1].unit == "kV"
    with Store(db) as s:
        assert s.point_infos()[1].unit == "kV"


def test_register_points_concurrently_gives_one_id_per_name(store: Store) -> None:
    names = [f"d{i}.p" for i in range(50)]
    results: list[list[int]] = []

    def reg() -> None:
        results.append(store.register_points(pts(*names)).tolist())

    with threads([reg] * 4):
        pass
    assert all(r == results[0] for r in results)
    assert sorted(results[0]) == list(range(1, 51))


def test_register_points_rejects_non_pointinfo(store: Store) -> None:
    with pytest.raises(TypeError):
        store.register_points(["f1.Ia"])  # type: ignore[list-item]


# ---- readings
def test_empty_store(store: Store) -> None:
    assert store.last_seq() == 0
    assert store.flush() == 0
    t = all_rows(store)
    assert t.num_rows == 0
    assert t.schema.names == ["seq", "ts", "point_id", "value", "quality"]
    assert store.backlog("cloud") == 0
    assert store.watermark("cloud") == 0


def test_offer_flush_read_after_order_and_gap_free_seqs(store: Store) -> None:
    n = 0
    for size in (1, 7, 1000, 3, 25_000, 2):
        assert store.offer(batch(n, size, point_id=size % 5))
        n += size
    assert store.flush() == n
    assert store.last_seq() == n
    t = all_rows(store)
    assert t.schema.field("seq").type == pa.int64()
    assert t.schema.field("ts").type == pa.int64()
    assert t.schema.field("point_id").type == pa.int32()
    assert t.schema.field("value").type == pa.float64()
    assert t.schema.field("quality").type == pa.uint16()
    seq = t.column("seq").to_numpy()
    np.testing.assert_array_equal(seq, np.arange(1, n + 1))
    np.testing.assert_array_equal(t.column("value").to_numpy(), np.arange(n, dtype=np.float64))
    np.testing.assert_array_equal(t.column("ts").to_numpy(), T0 + np.arange(n) * 1000)


def test_read_after_pages(store: Store) -> None:
    store.offer(batch(0, 10_000))
    store.offer(batch(10_000, 5))
    store.flush()
    got = []
    after = 0
    while True:
        page = store.read_after("cloud", after, 3001)
        if page.num_rows == 0:
            break
        assert page.num_rows <= 3001
        got.append(page.column("seq").to_numpy())
        after = int(page.column("seq")[-1].as_py())
    np.testing.assert_array_equal(np.concatenate(got), np.arange(1, 10_006))
    assert store.read_after("cloud", 10_005, 10).num_rows == 0
    assert store.read_after("cloud", 5, 0).num_rows == 0
    assert store.read_after("cloud", 9_999, 100).column("seq").to_pylist() == list(range(10_000, 10_006))


def test_concurrent_producers_gap_free_and_per_producer_order(store: Store) -> None:
    per, size = 40, 250

    def producer(k: int) -> None:
        for i in range(per):
            b = batch(k * 1_000_000 + i * size, size)
            store.put(b, timeout=30.0)

    with threads([lambda k=k: producer(k) for k in range(4)]):  # type: ignore[misc]
        pass
    total = 4 * per * size
    assert store.flush() == total
    t = all_rows(store)
    np.testing.assert_array_equal(t.column("seq").to_numpy(), np.arange(1, total + 1))
    values = t.column("value").to_numpy()
    for k in range(4):
        mine = values[(values >= k * 1_000_000) & (values < (k + 1) * 1_000_000)]
        np.testing.assert_array_equal(mine, k * 1_000_000 + np.arange(per * size))


def test_rows_survive_close_without_flush(db: Path) -> None:
    with Store(db, commit_interval_ms=60_000) as s:
        s.offer(batch(0, 100))
        s.offer(batch(100, 100))
    with Store(db) as s:
        assert s.last_seq() == 200
        s.offer(batch(200, 1))
        assert s.flush() == 201  # seqs continue after reopen
        np.testing.assert_array_equal(all_rows(s).column("seq").to_numpy(), np.arange(1, 202))


def test_offer_rejects_wrong_dtypes(store: Store) -> None:
    bad = ReadingBatch(
        np.zeros(3, dtype=np.int64),
        np.zeros(3, dtype=np.int64),  # wrong: point_id must be int32
        np.zeros(3),
        np.zeros(3, dtype=np.uint16),
    )
    with pytest.raises(TypeError):
        store.offer(bad)
    with pytest.raises(TypeError):
        store.offer("not a batch")  # type: ignore[arg-type]
    assert store.offer(ReadingBatch.empty())
    assert store.flush() == 0


def test_group_commit_takes_everything_queued_in_one_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = WriterGate(store, monkeypatch)
    before = store.stats()["commits"]
    store.offer(batch(0, 10))
    assert gate.entered.wait(10.0)  # the writer holds the first batch
    for i in range(1, 10):
        assert store.offer(batch(i * 10, 10))
    gate.open()
    assert store.flush() == 100
    # first transaction: the first batch; second: the nine queued batches (+ the flush) together
    assert store.stats()["commits"] - before == 2


# ---- back-pressure
def test_backpressure_offer_false_when_full_and_nothing_lost(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db, queue_rows=100, commit_interval_ms=0) as s:
        gate = WriterGate(s, monkeypatch)
        assert s.offer(batch(0, 60))
        assert gate.entered.wait(10.0)  # taken by the writer but not committed: still counts
        assert s.stats()["queued_rows"] == 60
        assert s.offer(batch(60, 40))  # exactly fills the bound
        assert not s.offer(batch(100, 1))  # full: rejected, never blocks
        assert not s.offer(batch(100, 1))
        assert s.stats()["rejected_offers"] == 2
        with pytest.raises(StoreFull):
            s.put(batch(100, 1), timeout=0.01)
        gate.open()
        s.put(batch(100, 1), timeout=30.0)  # space frees once the writer commits
        wait_until(lambda: s.offer(batch(101, 50)), what="queue space")
        assert s.flush() == 151
        np.testing.assert_array_equal(all_rows(s).column("value").to_numpy(), np.arange(151.0))


def test_oversized_batch_accepted_into_empty_queue(db: Path) -> None:
    with Store(db, queue_rows=10) as s:
        assert s.offer(batch(0, 25))
        assert s.flush() == 25


def test_put_waits_for_space(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(db, queue_rows=10, commit_interval_ms=0) as s:
        gate = WriterGate(s, monkeypatch)
        s.offer(batch(0, 10))
        assert gate.entered.wait(10.0)
        done: list[bool] = []

        def blocked_put() -> None:
            s.put(batch(10, 5), timeout=30.0)
            done.append(True)

        with threads([blocked_put]):
            assert not done  # the gate is closed: the put cannot have returned yet
            gate.open()
        assert done == [True]
        assert s.flush() == 15


# ---- watermarks
def test_ack_durable_across_reopen_and_never_backwards(db: Path) -> None:
    with Store(db) as s:
        s.offer(batch(0, 500))
        s.flush()
        s.ack("cloud", 300)
        s.ack("cloud", 100)  # lower: ignored
        assert s.watermark("cloud") == 300
        assert s.backlog("cloud") == 200
        assert s.backlog("other") == 500
        s.ack("other", 500)
        assert s.backlog("other") == 0
        with pytest.raises(ValueError):
            s.ack("cloud", 501)  # beyond the last committed seq
        with pytest.raises(ValueError):
            s.ack("cloud", -1)
        with pytest.raises(ValueError):
            s.ack("", 1)
    with Store(db) as s:
        assert s.watermark("cloud") == 300
        assert s.watermarks() == {"cloud": 300, "other": 500}
        s.ack("cloud", 200)
        assert s.watermark("cloud") == 300
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT acked_seq FROM outbox WHERE sink = 'cloud'").fetchall() == [(300,)]


def test_concurrent_acks_keep_the_maximum(store: Store) -> None:
    store.offer(batch(0, 1000))
    store.flush()

    def acker(k: int) -> None:
        for seq in range(k, 1001, 7):
            store.ack("cloud", seq)

    with threads([lambda k=k: acker(k) for k in range(1, 5)]):  # type: ignore[misc]
        pass
    assert store.watermark("cloud") == max(max(range(k, 1001, 7)) for k in range(1, 5))


# ---- events
def test_events_with_priority_in_order_and_across_reopen(db: Path) -> None:
    with Store(db) as s:
        s.add_event(Event(ts=T0 + 1, kind="trip", message="51 trip", priority=0, device="f1", point="XCBR1"))
        s.add_event(Event(ts=T0 + 2, kind="alarm", message="high temp", data='{"t": 91}'))
        assert (
            s.add_events([Event(ts=T0 + 3, kind="audit", message=f"m{i}", priority=3) for i in range(5)]) == 7
        )
    with Store(db) as s:
        assert s.last_event_seq() == 7
        s.add_event(Event(ts=T0 + 4, kind="comm", message="link down", priority=1))
        t = s.events_after(0, 100)
        assert t.column("seq").to_pylist() == list(range(1, 9))
        assert t.column("priority").to_pylist() == [0, 2, 3, 3, 3, 3, 3, 1]
        assert t.column("priority").type == pa.int16()
        first = t.to_pylist()[0]
        assert first == {
            "seq": 1,
            "ts": T0 + 1,
            "priority": 0,
            "kind": "trip",
            "device": "f1",
            "point": "XCBR1",
            "message": "51 trip",
            "data": "",
        }
        assert t.to_pylist()[1]["data"] == '{"t": 91}'
        assert s.events_after(6, 1).column("seq").to_pylist() == [7]
        assert s.events_after(8, 10).num_rows == 0
        assert s.stats()["events"] == 8


# ---- aggregate
def _reference(
    ts: np.ndarray,
    pid: np.ndarray,
    val: np.ndarray,
    q: np.ndarray,
    ids: list[int],
    start: int,
    end: int,
    b: int,
) -> dict[tuple[int, int], tuple[float, float, float, float, int]]:
    ok = (ts >= start) & (ts < end) & np.isin(pid, ids) & ((q & 3) != 1) & ((q & 3) != 2) & ~np.isnan(val)
    out: dict[tuple[int, int], tuple[float, float, float, float, int]] = {}
    bucket = (ts // b) * b
    for p in ids:
        for bk in np.unique(bucket[ok & (pid == p)]):
            m = ok & (pid == p) & (bucket == bk)
            v, t = val[m], ts[m]
            out[(p, int(bk))] = (v.min(), v.max(), v.mean(), v[np.argmax(t)], int(m.sum()))
    return out


def test_aggregate_matches_numpy_reference(store: Store) -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    pid = rng.integers(1, 6, n).astype(np.int32)
    # unique ts per row (so "last" is well defined), shuffled arrival order
    ts = T0 + rng.permutation(n).astype(np.int64) * 37_000_000 + rng.integers(0, 1000, n)
    val = rng.normal(230.0, 5.0, n)
    val[rng.random(n) < 0.01] = np.nan
    q = rng.choice(np.array([0x0000, 0x0001, 0x0003, 0x0041, 0x0083, 0x4000, 0x0002], dtype=np.uint16), n)
    for s in range(0, n, 3000):
        store.offer(ReadingBatch.of(ts[s : s + 3000], pid[s : s + 3000], val[s : s + 3000], q[s : s + 3000]))
    store.flush()

    bucket = 60 * 10**9
    start, end = T0 + 90 * 10**9, T0 + 500 * 10**9  # not bucket-aligned: partial first bucket
    ids = [1, 3, 4]
    got = store.aggregate(ids, start, end, bucket)
    assert got.schema.names == ["point_id", "bucket_ns", "min", "max", "avg", "last", "count"]
    assert got.schema.field("point_id").type == pa.int32()
    assert got.schema.field("count").type == pa.int64()
    ref = _reference(ts, pid, val, q, ids, start, end, bucket)
    rows = got.to_pylist()
    assert [(r["point_id"], r["bucket_ns"]) for r in rows] == sorted(ref)  # ordered by point, bucket
    for r in rows:
        mn, mx, avg, last, count = ref[(r["point_id"], r["bucket_ns"])]
        assert r["count"] == count
        assert r["min"] == mn
        assert r["max"] == mx
        assert r["last"] == last
        assert r["avg"] == pytest.approx(avg, rel=1e-12)
    assert all(r["bucket_ns"] % bucket == 0 for r in rows)  # epoch-aligned

    everything = store.aggregate(None, T0, T0 + 10**15, bucket)
    assert sum(everything.column("count").to_pylist()) == sum(
        v[4] for v in _reference(ts, pid, val, q, [1, 2, 3, 4, 5], T0, T0 + 10**15, bucket).values()
    )
    assert store.aggregate([], start, end, bucket).num_rows == 0
    assert store.aggregate(ids, end, start, bucket).num_rows == 0
    with pytest.raises(ValueError):
        store.aggregate(ids, start, end, 0)


# ---- file, lifecycle
def test_storage_version_is_pinned(db: Path) -> None:
    with Store(db) as s:
        s.offer(batch(0, 50_000))  # big enough to be checkpointed straight into the file
        s.flush()
    with Store(db) as s:
        s.offer(batch(50_000, 10))
        s.flush()
    header = db.read_bytes()[:20]
    assert header[8:12] == b"DUCK"
    assert struct.unpack("<Q", header[12:20])[0] == sch.STORAGE_VERSION_NUMBER == 65
    with duckdb.connect(str(db), read_only=True) as con:
        tags = con.execute("SELECT tags FROM duckdb_databases() WHERE NOT internal").fetchone()
        assert tags is not None and tags[0]["storage_version"] == "v1.2.0+"
        assert con.execute("SELECT value FROM meta WHERE key = 'storage_version'").fetchone() == ("v1.2.0",)


def test_close_is_idempotent_and_closed_store_refuses(db: Path) -> None:
    s = Store(db)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(StoreClosed):
        s.offer(batch(0, 1))
    with pytest.raises(StoreClosed):
        s.put(batch(0, 1))
    with pytest.raises(StoreClosed):
        s.flush()
    with pytest.raises(StoreClosed):
        s.read_after("x", 0, 10)
    with pytest.raises(StoreClosed):
        s.add_event(Event(ts=1, kind="audit", message="x"))
    assert issubclass(StoreClosed, StoreError)


def test_open_classmethod_and_stats(db: Path) -> None:
    with Store.open(db, disk_budget_mb=64) as s:
        s.offer(batch(0, 10))
        s.flush()
        st = s.stats()
        assert st["rows"] == 10
        assert st["last_seq"] == 10
        assert st["queued_rows"] == 0
        assert st["commits"] >= 1
        assert st["last_commit_ns"] > 0
        assert st["file_bytes"] == s.file_bytes() > 0
        assert 0 < st["used_bytes"] <= st["file_bytes"]
        assert st["disk_budget_bytes"] <= 64 * 1024 * 1024
        assert st["over_budget"] == 0
        assert st["downsampled_rows"] == st["evicted_rows"] == st["gap_records"] == 0
        assert st["disk_full"] == 0


def test_corrupt_file_raises_store_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a duckdb file" * 1000)
    with pytest.raises(StoreCorrupt) as ei:
        Store(bad)
    assert str(bad) in str(ei.value)
    assert ei.value.path == bad
    assert bad.exists()  # never deleted or moved by the store


def test_newer_schema_version_refused(db: Path) -> None:
    with Store(db):
        pass
    with duckdb.connect(str(db), config=dict(sch.DUCKDB_CONFIG)) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="99"):
        Store(db)


def test_failed_commit_keeps_readings_and_retries(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    original = store._execute
    disk_broken = [True]

    def flaky(work: Any) -> None:
        if disk_broken and work.rows:
            raise duckdb.IOException("simulated disk error")
        original(work)

    monkeypatch.setattr(store, "_execute", flaky)
    store.offer(batch(0, 100))
    with pytest.raises(StoreWriteError, match="simulated disk error"):
        store.flush()  # the transaction holding the rows failed: not durable
    assert store.last_seq() == 0
    assert store.stats()["write_errors"] >= 1
    assert store.stats()["queued_rows"] == 100  # kept, still counted against the bound
    # commands without readings still commit while readings fail
    store.add_event(Event(ts=T0, kind="comm", message="disk error"))
    disk_broken.clear()
    wait_until(lambda: store.last_seq() == 100, what="retried commit")
    assert store.flush() == 100
    np.testing.assert_array_equal(all_rows(store).column("value").to_numpy(), np.arange(100.0))


def test_reads_while_writing_see_only_committed_contiguous_rows(store: Store) -> None:
    total = 200 * 500
    problems: list[str] = []

    def producer() -> None:
        for i in range(200):
            store.put(batch(i * 500, 500), timeout=30.0)
        store.flush()

    def reader() -> None:
        after = 0
        while after < total:
            page = store.read_after("cloud", after, 7000)
            seq = page.column("seq").to_numpy()
            if len(seq) and not np.array_equal(seq, np.arange(after + 1, after + 1 + len(seq))):
                problems.append(f"page after {after} not contiguous")
                return
            if len(seq) and seq[-1] > store.last_seq():
                problems.append("read a row beyond last_seq")
            store.aggregate([1], T0, T0 + 10**12, 10**9)
            after += len(seq)
            if len(seq):
                store.ack("cloud", after)

    with threads([producer, reader, reader]):
        pass
    assert not problems
    assert store.watermark("cloud") == total
    assert store.backlog("cloud") == 0

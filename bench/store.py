"""Benchmark of the storefwd Store. Run from the repo root: ``.venv/bin/python -m bench.store``.

Measures, on a fresh file in a temporary directory:
- ``ingest_rows_per_s``: readings through the real API (offer() of 10k-row batches, retrying while the queue
  is full, then flush()), i.e. including group commit, seq assignment and the fsync'd commits.
- ``baseline_rows_per_s``: the naive way, ``executemany`` of an INSERT per row (a small sample).
- ``agg_1m_rows_ms``: median time of ``Store.aggregate`` with 1-minute buckets over a window holding 1M rows.
- ``read_after_50k_ms``: median time of one ``read_after`` page of 50k rows (what the uploader does).
- ``ingest_small_queue_rows_per_s``: like ingest, with ``queue_rows=20_000`` (many small fsync'd commits).
- ``disk_bytes_per_reading``: file size after close (checkpointed) divided by the rows stored.
The last line printed is a JSON object with these keys (and a few more for context).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from gateway.model import PointInfo, ReadingBatch
from storefwd import Store
from storefwd.schema import DDL, DUCKDB_CONFIG

T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def make_batches(rows: int, points: int, batch_rows: int, seed: int = 1) -> list[ReadingBatch]:
    """Readings of ``points`` points sampled once per second each, values like measurements (2 decimals)."""
    rng = np.random.default_rng(seed)
    i = np.arange(rows, dtype=np.int64)
    ts = T0_NS + (i // points) * 1_000_000_000 + (i % points) * 1000
    pid = (i % points + 1).astype(np.int32)
    base = 100.0 + (pid % 50).astype(np.float64) * 10.0
    value = np.round(base + rng.normal(0.0, 1.0, rows), 2)
    quality = np.where(rng.random(rows) < 0.001, 0x0041, 0).astype(np.uint16)  # 0.1 % invalid+failure
    return [
        ReadingBatch(
            ts[s : s + batch_rows],
            pid[s : s + batch_rows],
            value[s : s + batch_rows],
            quality[s : s + batch_rows],
        )
        for s in range(0, rows, batch_rows)
    ]


def bench_ingest(store: Store, batches: list[ReadingBatch]) -> tuple[float, int]:
    rows = sum(len(b) for b in batches)
    retries = 0
    t = time.perf_counter()
    for b in batches:
        while not store.offer(b):
            retries += 1
            time.sleep(0.0005)  # back-pressure: the writer is busy
    store.flush(timeout=120.0)
    return rows / (time.perf_counter() - t), retries


def bench_baseline(path: Path, batch: ReadingBatch) -> float:
    con = duckdb.connect(str(path), config=dict(DUCKDB_CONFIG))
    for ddl in DDL:
        con.execute(ddl)
    ts, pid, value, quality = (c.tolist() for c in (batch.ts, batch.point_id, batch.value, batch.quality))
    rows = [(i + 1, ts[i], pid[i], value[i], quality[i]) for i in range(len(batch))]
    t = time.perf_counter()
    con.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - t
    con.close()
    return len(rows) / elapsed


def median_ms(fn: object, repeat: int) -> float:
    assert callable(fn)
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=5_000_000, help="readings to ingest")
    ap.add_argument("--points", type=int, default=1000, help="distinct points")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per offered batch")
    ap.add_argument("--baseline-rows", type=int, default=2000, help="rows for the executemany baseline")
    args = ap.parse_args()

    batches = make_batches(args.rows, args.points, args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as d:
        path = Path(d) / "bench.duckdb"
        with Store(path) as store:
            store.register_points(
                [PointInfo(f"dev{p // 100}.p{p}", f"dev{p // 100}", f"p{p}") for p in range(args.points)]
            )
            ingest, retries = bench_ingest(store, batches)
            stats = store.stats()
            print(
                f"ingest: {ingest:,.0f} rows/s ({args.rows:,} rows, {stats['commits']} commits, "
                f"{retries} offer retries)"
            )

            # window holding 1M rows: args.points rows per second of data
            secs = 1_000_000 // args.points
            start = T0_NS + 60 * 10**9
            end = start + secs * 10**9
            agg = store.aggregate(None, start, end, 60 * 10**9)
            agg_ms = median_ms(lambda: store.aggregate(None, start, end, 60 * 10**9), 7)
            print(
                f"aggregate 1M rows -> {agg.num_rows} buckets: {agg_ms:.1f} ms (rows counted "
                f"{int(np.sum(agg.column('count').to_numpy()))})"
            )

            mid = args.rows // 2
            read_ms = median_ms(lambda: store.read_after("bench", mid, 50_000), 7)
            print(f"read_after 50k rows: {read_ms:.1f} ms")
        # the same API with a small queue (20k rows): many small commits, each fsync'd
        with Store(Path(d) / "small.duckdb", queue_rows=20_000) as small:
            small_ingest, _ = bench_ingest(small, batches[: max(1, len(batches) // 5)])
            small_commits = small.stats()["commits"]
        print(f"ingest, 20k-row queue: {small_ingest:,.0f} rows/s ({small_commits} commits)")

        file_bytes = path.stat().st_size
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            file_bytes += wal.stat().st_size
        per_reading = file_bytes / args.rows
        print(f"disk: {file_bytes:,} bytes, {per_reading:.2f} bytes/reading")

        baseline = bench_baseline(Path(d) / "baseline.duckdb", _head(batches[0], args.baseline_rows))
        print(f"baseline executemany: {baseline:,.0f} rows/s")

    result = {
        "ingest_rows_per_s": round(ingest),
        "baseline_rows_per_s": round(baseline),
        "agg_1m_rows_ms": round(agg_ms, 2),
        "disk_bytes_per_reading": round(per_reading, 3),
        "read_after_50k_ms": round(read_ms, 2),
        "ingest_small_queue_rows_per_s": round(small_ingest),
        "rows": args.rows,
        "batch_rows": args.batch,
        "commits": stats["commits"],
        "duckdb": duckdb.__version__,
    }
    print(json.dumps(result))


def _head(batch: ReadingBatch, n: int) -> ReadingBatch:
    return ReadingBatch(batch.ts[:n], batch.point_id[:n], batch.value[:n], batch.quality[:n])


if __name__ == "__main__":
    main()

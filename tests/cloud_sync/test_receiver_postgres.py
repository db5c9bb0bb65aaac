"""The PostgreSQL receiver at scale, against the real server: day partitions created on demand (race-safe),
the DEFAULT partition, refusing an unpartitioned legacy table, and several receiver processes behind one port
landing concurrent, overlapping batches exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from cloud_sync.codec import CONTENT_TYPE, READINGS_SCHEMA, encode_batch
from cloud_sync.receiver import PostgresBackend
from cloud_sync.receiver.backends import DAY_NS, LegacyReadingsTable, partition_name
from hil_tests.net import free_port
from tests.cloud_sync.conftest import PG_URL, TOKENS, point_infos, rows_table
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = list(TOKENS)  # two gateways, each with its own token


def pg_rows(backend_schema: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One query on a fresh connection with ``search_path`` set to the test schema."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'SET search_path TO "{backend_schema}"')
        return [tuple(r) for r in con.execute(sql, params).fetchall()]


def days_table(days_ago: list[float], first_seq: int = 1) -> pa.Table:
    """One reading per entry, ``days_ago`` before now, consecutive seqs."""
    now = time.time_ns()
    n = len(days_ago)
    return pa.table(
        [
            pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
            pa.array([now - int(d * DAY_NS) for d in days_ago], pa.int64()),
            pa.array(np.ones(n, np.int32)),
            pa.array(np.arange(n, dtype=np.float64)),
            pa.array(np.zeros(n, np.uint16)),
        ],
        schema=READINGS_SCHEMA,
    )


async def land(backend: PostgresBackend, gateway: str, key: str, rows: pa.Table) -> tuple[int, int]:
    from cloud_sync.codec import decode_batch
    from cloud_sync.receiver.validate import split_rows

    decoded = decode_batch(encode_batch(rows, gateway, point_infos()))
    now = time.time_ns()
    split = split_rows(decoded.rows, decoded.points, now)
    result = await backend.land(gateway, key, split.valid, split.quarantine, decoded.points, now)
    return result.accepted, result.duplicates


async def test_readings_land_in_day_partitions_and_old_rows_in_default(pg_schema: str) -> None:
    backend = PostgresBackend(PG_URL, schema=pg_schema, partition_horizon_days=30)
    try:
        rows = days_table([2.0, 1.0, 0.0, 0.0, 45.0])  # the 45-day-old row is beyond the horizon
        assert await land(backend, GATEWAYS[0], "k1", rows) == (5, 0)
        assert await land(backend, GATEWAYS[0], "k2", rows) == (0, 5)  # re-sent: conflicts in its partition
        assert (await backend.stats(GATEWAYS[0]))["rows"] == 5
    finally:
        await backend.aclose()
    kinds = pg_rows(pg_schema, "SELECT relkind::text FROM pg_class WHERE relname = 'readings' "
                               "AND relnamespace = %s::regnamespace", (pg_schema,))  # fmt: skip
    assert kinds == [("p",)]
    where = dict(pg_rows(pg_schema, "SELECT tableoid::regclass::text, count(*) FROM readings GROUP BY 1"))
    ts = rows.column("ts").to_numpy()
    expected: dict[object, int] = {"readings_default": 1}
    for t in ts[:4]:
        name = partition_name(int(t) // DAY_NS)
        expected[name] = expected.get(name, 0) + 1
    assert {str(k).split(".")[-1].strip('"'): v for k, v in where.items()} == expected
    pk = pg_rows(pg_schema, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                            "'readings'::regclass AND contype = 'p'")  # fmt: skip
    assert pk == [("PRIMARY KEY (gw, seq, ts)",)]


async def test_concurrent_receivers_create_partitions_and_schema_race_free(pg_schema: str) -> None:
    backends = [PostgresBackend(PG_URL, schema=pg_schema) for _ in range(4)]
    try:
        await asyncio.gather(*(b.ping() for b in backends))  # four processes creating the schema at once
        rows = days_table([3.0, 2.0, 1.0, 0.5, 0.0])  # days nobody created yet
        results = await asyncio.gather(
            *(land(b, GATEWAYS[i % 2], f"k{i}", rows) for i, b in enumerate(backends))
        )
    finally:
        for b in backends:
            await b.aclose()
    per_gateway = {g: sum(a for (a, _), i in zip(results, range(4), strict=True) if i % 2 == j)
                   for j, g in enumerate(GATEWAYS)}  # fmt: skip
    assert per_gateway == {GATEWAYS[0]: 5, GATEWAYS[1]: 5}  # each gateway's rows landed once
    assert sum(d for _, d in results) == 10
    parts = pg_rows(pg_schema, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass")
    days = {int(t) // DAY_NS for t in rows.column("ts").to_numpy()}
    assert parts[0][0] >= len(days) + 1  # every day once (+ default; today ± 1 may exist too)


async def test_unpartitioned_legacy_readings_table_is_refused(pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{pg_schema}"')
        con.execute(
            f'CREATE TABLE "{pg_schema}".readings (gw INTEGER NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, '
            "point_id INTEGER NOT NULL, value DOUBLE PRECISION NOT NULL, quality INTEGER NOT NULL, "
            "PRIMARY KEY (gw, seq))"
        )
    backend = PostgresBackend(PG_URL, schema=pg_schema)
    try:
        with pytest.raises(LegacyReadingsTable, match=r"not partitioned.*receiver-fleet\.md"):
            await backend.ping()
    finally:
        await backend.aclose()
    from cloud_sync.receiver import main

    argv = ["--db", PG_URL, "--db-schema", pg_schema, "--port", "0"]
    assert await asyncio.to_thread(main, argv) == 4  # refuses before serving


# ----------------------------------------------------------------------------------------------- workers
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmd:  # uvicorn workers (not the resource tracker)
            out.append(int(entry))
    return out


@pytest.fixture
def workers(pg_schema: str) -> Iterator[str]:
    """``python -m cloud_sync.receiver --workers 3`` on one port (PostgreSQL, the test schema)."""
    port = free_port()
    argv = [sys.executable, "-m", "cloud_sync.receiver", "--db", PG_URL, "--db-schema", pg_schema,
            "--workers", "3", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    for gw, tok in TOKENS.items():
        argv += ["--token", f"{gw}={tok}"]
    proc = subprocess.Popen(argv, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "receiver exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and len(_children(proc.pid)) == 3
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "3 receiver workers answering on one port")
        yield url
        assert len(_children(proc.pid)) == 3, "a worker died under load"
    finally:
        proc.terminate()
        proc.wait(30)


async def test_three_workers_land_overlapping_batches_exactly_once(workers: str, pg_schema: str) -> None:
    from tests.cloud_sync.test_codec import events_table

    n_rows, n_events = 12_000, 300
    t0 = (time.time_ns() // DAY_NS) * DAY_NS - 500 * 10**9  # spans midnight: two day partitions made meanwhile
    full = {gw: rows_table(n_rows, seed=i, t0=t0) for i, gw in enumerate(GATEWAYS)}
    events = {gw: events_table(list(range(1, n_events + 1))) for gw in GATEWAYS}
    sent_rows: dict[str, set[int]] = {gw: set() for gw in GATEWAYS}
    sent_events: dict[str, set[int]] = {gw: set() for gw in GATEWAYS}
    accepted = {gw: 0 for gw in GATEWAYS}
    events_accepted = {gw: 0 for gw in GATEWAYS}

    async def client(task: int) -> None:
        rng = random.Random(task)
        async with httpx.AsyncClient(base_url=workers, timeout=60) as c:
            for i in range(12):
                gw = GATEWAYS[(task + i) % 2]
                start = rng.randrange(0, n_rows - 1500)
                rows = full[gw].slice(start, rng.randrange(500, 1500))  # overlapping seq ranges
                e0 = rng.randrange(0, n_events - 20)
                evs = events[gw].slice(e0, 20)
                body = encode_batch(rows, gw, point_infos(), events=evs)
                for _ in range(1 + (i % 3 == 0)):  # some batches twice (a lost answer)
                    headers = {"Authorization": f"Bearer {TOKENS[gw]}", "Content-Type": CONTENT_TYPE}
                    r = await c.post("/v1/batches", content=body, headers=headers)
                    assert r.status_code == 200, r.text
                    accepted[gw] += r.json()["accepted"]
                    events_accepted[gw] += r.json()["events_accepted"]
                sent_rows[gw].update(rows.column("seq").to_pylist())
                sent_events[gw].update(evs.column("seq").to_pylist())

    await asyncio.gather(*(client(t) for t in range(8)))
    for gw in GATEWAYS:
        landed = pg_rows(
            pg_schema,
            "SELECT r.seq, r.ts FROM readings r JOIN gateways g USING (gw) WHERE g.gateway_id = %s ORDER BY r.seq",
            (gw,),
        )
        seqs = [int(s) for s, _ in landed]
        assert len(seqs) == len(set(seqs)), f"{gw}: a reading landed twice"
        assert set(seqs) == sent_rows[gw]
        ts_by_seq = dict(zip(full[gw].column("seq").to_pylist(), full[gw].column("ts").to_pylist(), strict=True))
        assert all(ts_by_seq[int(s)] == t for s, t in landed)
        ev = [int(s) for (s,) in pg_rows(pg_schema, "SELECT e.seq FROM events e JOIN gateways g USING (gw) "
                                                    "WHERE g.gateway_id = %s", (gw,))]  # fmt: skip
        assert sorted(ev) == sorted(sent_events[gw])
        async with httpx.AsyncClient(base_url=workers) as c:
            st = (await c.get(f"/v1/gateways/{gw}/stats", headers={"Authorization": f"Bearer {TOKENS[gw]}"})).json()
        assert (st["rows"], st["last_seq"]) == (len(seqs), max(seqs))
        assert (st["events"], accepted[gw], events_accepted[gw]) == (len(ev), len(seqs), len(ev))


async def test_role_without_ddl_rights_uses_existing_partitions_and_the_default(pg_schema: str) -> None:
    """Managed PostgreSQL where the receiver's role may not create tables: the operator's partitions are
    used, days without one land in readings_default, nothing fails."""
    import uuid

    import psycopg

    rows = days_table([0.0, 3.0])  # today: the operator's partition; 3 days ago: no partition, no right
    today = int(rows.column("ts")[0].as_py()) // DAY_NS
    owner = PostgresBackend(PG_URL, schema=pg_schema)
    try:
        await owner.ping()  # the operator creates the schema, and below one partition (today's)
    finally:
        await owner.aclose()
    role = f"cs_lander_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'SET search_path TO "{pg_schema}"')
        con.execute(
            f"CREATE TABLE {partition_name(today)} PARTITION OF readings "
            f"FOR VALUES FROM ({today * DAY_NS}) TO ({(today + 1) * DAY_NS})"
        )
        con.execute(f"CREATE ROLE {role} LOGIN")
        con.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {role}')
        con.execute(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{pg_schema}" TO {role}')
        con.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{pg_schema}" TO {role}')
    lander = PostgresBackend(PG_URL.replace("postgres@", f"{role}@"), schema=pg_schema)
    try:
        assert await land(lander, GATEWAYS[0], "k1", rows) == (2, 0)
        assert await land(lander, GATEWAYS[0], "k1", rows) == (0, 2)
    finally:
        await lander.aclose()
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE {role}")
    where = pg_rows(pg_schema, "SELECT tableoid::regclass::text, count(*) FROM readings GROUP BY 1 ORDER BY 1")
    assert [(str(t).split(".")[-1], n) for t, n in where] == [(partition_name(today), 1), ("readings_default", 1)]

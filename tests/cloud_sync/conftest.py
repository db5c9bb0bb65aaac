"""Fixtures for cloud_sync: real DuckDB files, the real PostgreSQL (one schema per test, dropped after), a
real store, the receiver served by uvicorn on 127.0.0.1 (port 0), and realistic data."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cloud_sync.codec import READINGS_SCHEMA
from cloud_sync.receiver import Backend, DuckDBBackend, PostgresBackend
from gateway.model import PointInfo, Q, ReadingBatch

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
GATEWAY = "sub-north-01"
TOKEN = "tok-north"
TOKENS = {GATEWAY: TOKEN, "sub-south-02": "tok-south"}


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=2):
            return True
    except Exception:
        return False


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name in the test database; dropped (CASCADE) afterwards."""
    if not pg_available():
        pytest.fail(
            f"PostgreSQL not reachable at {PG_URL}: the receiver's PostgreSQL backend is tested against a real "
            "server (start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
        )
    import psycopg

    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["duckdb", "postgres"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend(
    backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Backend]:
    b: Backend
    if backend_kind == "duckdb":
        b = DuckDBBackend(tmp_path / "receiver.duckdb")
    else:
        schema = request.getfixturevalue("pg_schema")
        b = PostgresBackend(PG_URL, schema=schema)
    try:
        yield b
    finally:
        await b.aclose()


def point_infos(n_devices: int = 3, n_points: int = 4) -> dict[int, PointInfo]:
    """ids 1.. for ``dev{d}.p{p}`` (the store assigns ids the same way: registration order from 1)."""
    out: dict[int, PointInfo] = {}
    i = 1
    for d in range(n_devices):
        for p in range(n_points):
            dev = f"dev{d}"
            out[i] = PointInfo(f"{dev}.p{p}", dev, f"p{p}", ["A", "kV", "Hz", ""][p % 4])
            i += 1
    return out


def rows_table(
    n: int,
    *,
    first_seq: int = 1,
    n_points: int = 12,
    t0: int | None = None,
    seed: int = 0,
) -> pa.Table:
    """``n`` store rows: scaled int16 registers moving slowly, 1 s period, ids 1..n_points, seq order."""
    rng = np.random.default_rng(seed)
    t0 = time.time_ns() - 3600 * 10**9 if t0 is None else t0
    idx = np.arange(n)
    pid = (idx % n_points + 1).astype(np.int32)
    tick = idx // n_points
    raw = rng.integers(-500, 500, size=n_points)[pid - 1] + np.cumsum(rng.integers(-1, 2, size=n)) // n_points
    value = raw * np.array([0.1, 0.01, 1.0, 0.5])[pid % 4]
    ts = t0 + tick * 1_000_000_000 + rng.integers(0, 1_000_000, size=n)
    quality = np.full(n, int(Q.GATEWAY_TIME), dtype=np.uint16)
    return pa.table(
        [
            pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
            pa.array(ts.astype(np.int64)),
            pa.array(pid),
            pa.array(value.astype(np.float64)),
            pa.array(quality),
        ],
        schema=READINGS_SCHEMA,
    )


def as_batch(rows: pa.Table) -> ReadingBatch:
    return ReadingBatch.of(
        rows.column("ts").to_numpy(),
        rows.column("point_id").to_numpy(),
        rows.column("value").to_numpy(),
        rows.column("quality").to_numpy(),
    )

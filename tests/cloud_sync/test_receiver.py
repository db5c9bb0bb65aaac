"""The reference receiver over loopback HTTP (uvicorn, port 0), on both backends (DuckDB file, PostgreSQL)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from cloud_sync.codec import CONTENT_TYPE, READINGS_SCHEMA, encode_batch
from cloud_sync.receiver import (
    Backend,
    DuckDBBackend,
    ReceiverServer,
    build_app,
    load_tokens,
    openapi_document,
)
from cloud_sync.receiver.backends import copy_binary_rows
from cloud_sync.receiver.validate import REASONS, TS_MIN_NS
from gateway.model import PointInfo
from tests.cloud_sync.conftest import GATEWAY, TOKEN, TOKENS, point_infos, rows_table

MAX_BODY = 256 * 1024
MAX_DECOMPRESSED = 4 * 1024 * 1024


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(backend, TOKENS, max_body_bytes=MAX_BODY, max_decompressed_bytes=MAX_DECOMPRESSED)
    async with ReceiverServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


def headers(token: str = TOKEN, key: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}
    if key:
        h["Idempotency-Key"] = key
    return h


async def post(c: httpx.AsyncClient, body: bytes, **kw: str) -> httpx.Response:
    return await c.post("/v1/batches", content=body, headers=headers(**kw))


async def stats(c: httpx.AsyncClient, gateway: str = GATEWAY) -> dict[str, int]:
    r = await c.get(f"/v1/gateways/{gateway}/stats", headers=headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_batch_lands_and_stats_count_it(client: httpx.AsyncClient) -> None:
    rows = rows_table(1000)
    r = await post(client, encode_batch(rows, GATEWAY, point_infos()), key=f"{GATEWAY}:1-1000")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["quarantined"], body["replay"]) == (1000, 0, 0, False)
    assert await stats(client) == {
        "gateway_id": GATEWAY,
        "rows": 1000,
        "last_seq": 1000,
        "quarantined": 0,
        "batches": 1,
        "events": 0,
        "last_event_seq": 0,
    }
    assert (body["events"], body["events_accepted"], body["events_duplicates"]) == (0, 0, 0)


async def test_same_batch_twice_lands_once(client: httpx.AsyncClient) -> None:
    full = rows_table(600)  # a gateway's seq always carries the same ts: slices of one table
    body = encode_batch(full.slice(0, 500), GATEWAY, point_infos())
    first = (await post(client, body, key=f"{GATEWAY}:1-500")).json()
    again = (await post(client, body, key=f"{GATEWAY}:1-500")).json()
    assert first["accepted"] == 500
    assert (again["accepted"], again["duplicates"], again["replay"]) == (0, 500, True)
    # an overlapping batch under another key: only the new rows land
    overlap = (await post(client, encode_batch(full, GATEWAY, point_infos()))).json()
    assert (overlap["accepted"], overlap["duplicates"]) == (100, 500)
    assert (await stats(client))["rows"] == 600
    assert (await stats(client))["batches"] == 2


async def test_missing_or_unknown_token_is_401(client: httpx.AsyncClient) -> None:
    body = encode_batch(rows_table(10), GATEWAY, point_infos())
    r = await client.post("/v1/batches", content=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"
    assert (await post(client, body, token="nope")).status_code == 401
    r = await client.post("/v1/batches", content=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401


async def test_token_of_another_gateway_is_403(client: httpx.AsyncClient) -> None:
    body = encode_batch(rows_table(10), GATEWAY, point_infos())
    r = await post(client, body, token=TOKENS["sub-south-02"])
    assert r.status_code == 403 and GATEWAY in r.json()["message"]
    r = await client.get(f"/v1/gateways/{GATEWAY}/stats", headers=headers(TOKENS["sub-south-02"]))
    assert r.status_code == 403
    assert (await stats(client))["rows"] == 0


async def test_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    noise = np.random.default_rng(1).integers(0, 2**63, size=40_000, dtype=np.int64).view(np.float64)
    rows = rows_table(40_000)
    rows = rows.set_column(3, "value", pa.array(noise))
    body = encode_batch(rows, GATEWAY, point_infos())
    assert len(body) > MAX_BODY
    r = await post(client, body)
    assert r.status_code == 413 and r.json()["error"] == "too-large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the streamed size is checked
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = await client.post("/v1/batches", content=chunks(), headers=headers())
    assert r.status_code == 413


async def test_decompressed_size_over_limit_is_413(client: httpx.AsyncClient) -> None:
    n = 200_000  # compresses far below MAX_BODY, decompresses above MAX_DECOMPRESSED
    rows = pa.table(
        [pa.array(np.arange(1, n + 1)), pa.array(np.full(n, time.time_ns())), pa.array(np.ones(n, np.int32)),
         pa.array(np.zeros(n)), pa.array(np.zeros(n, np.uint16))],
        schema=READINGS_SCHEMA,
    )  # fmt: skip
    body = encode_batch(rows, GATEWAY, point_infos())
    assert len(body) < MAX_BODY
    r = await post(client, body)
    assert r.status_code == 413 and "decompresses" in r.json()["message"]


@pytest.mark.parametrize(
    "body", [b"", b"garbage", b"\xff\xff\xff\xff" + b"\x00" * 64], ids=["empty", "garbage", "bad-ipc"]
)
async def test_malformed_payload_is_400_json(client: httpx.AsyncClient, body: bytes) -> None:
    r = await post(client, body)
    assert r.status_code == 400
    assert r.json()["error"] == "malformed"


async def test_truncated_payload_is_400(client: httpx.AsyncClient) -> None:
    body = encode_batch(rows_table(1000), GATEWAY, point_infos())
    r = await post(client, body[: len(body) - 200])
    assert r.status_code == 400, r.text
    assert (await stats(client))["rows"] == 0


async def test_invalid_rows_are_quarantined_with_reasons(client: httpx.AsyncClient, backend: Backend) -> None:
    now = time.time_ns()
    ts = [now, now, TS_MIN_NS - 1, now + 2 * 86_400 * 10**9, now, now, now, now]
    seq = [1, 0, 3, 4, 5, 6, 7, 8]
    pid = [1, 1, 1, 1, 1, 77, 2, 2]  # 77 has no name
    quality = [0, 0, 0, 0, 0b10, 0, 0, 0]
    rows = pa.table(
        [pa.array(seq, pa.int64()), pa.array(ts, pa.int64()), pa.array(pid, pa.int32()),
         pa.array([1.0] * 8), pa.array(quality, pa.uint16())],
        schema=READINGS_SCHEMA,
    )  # fmt: skip
    body = encode_batch(rows, GATEWAY, point_infos())
    r = (await post(client, body, key="k-1")).json()
    assert (r["accepted"], r["quarantined"]) == (3, 5)
    assert r["quarantine_reasons"] == {
        "seq-not-positive": 1,
        "ts-out-of-range": 2,
        "quality-reserved": 1,
        "point-unnamed": 1,
    }
    again = (await post(client, body, key="k-1")).json()  # a retry does not quarantine twice
    assert (again["accepted"], again["quarantined"], again["replay"]) == (0, 5, True)
    s = await stats(client)
    assert (s["rows"], s["quarantined"], s["last_seq"]) == (3, 5, 8)
    assert set(r["quarantine_reasons"]) <= set(REASONS)


async def test_duplicate_seq_inside_a_batch_is_quarantined(client: httpx.AsyncClient) -> None:
    rows = rows_table(4)
    rows = pa.concat_tables([rows, rows.slice(1, 1)])  # seq 2 twice
    r = (await post(client, encode_batch(rows, GATEWAY, point_infos()))).json()
    assert (r["accepted"], r["quarantined"], r["quarantine_reasons"]) == (4, 1, {"duplicate-seq-in-batch": 1})


async def test_health_and_openapi(client: httpx.AsyncClient, backend: Backend) -> None:
    r = await client.get("/healthz")
    assert r.json() == {"status": "ok", "backend": backend.kind, "pid": os.getpid()}
    doc = (await client.get("/openapi.json")).json()
    assert doc == openapi_document(MAX_BODY, MAX_DECOMPRESSED)
    assert set(doc["paths"]) == {
        "/v1/enrol",
        "/v1/batches",
        "/v1/gateways/{gateway_id}/stats",
        "/healthz",
        "/openapi.json",
    }
    assert {"200", "400", "401", "403", "413", "422", "503"} <= set(doc["paths"]["/v1/batches"]["post"]["responses"])


async def test_points_are_recorded_and_renamed(client: httpx.AsyncClient, backend: Backend) -> None:
    infos = point_infos(1, 2)
    await post(client, encode_batch(rows_table(4, n_points=2), GATEWAY, infos))
    infos[2] = PointInfo("dev0.p1", "dev0", "p1", "MW")
    await post(client, encode_batch(rows_table(4, first_seq=5, n_points=2), GATEWAY, infos))
    assert await _points(backend) == {1: ("dev0.p0", "A"), 2: ("dev0.p1", "MW")}


async def _points(backend: Backend) -> dict[int, tuple[str, str]]:
    rows = await backend.query("SELECT point_id, name, unit FROM points ORDER BY point_id")
    return {int(p): (n, u) for p, n, u in rows}


async def test_database_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    for first_seq in (1, 101):
        app = build_app(DuckDBBackend(path), TOKENS)
        async with ReceiverServer(app) as server, httpx.AsyncClient(base_url=server.url) as c:
            r = await post(c, encode_batch(rows_table(100, first_seq=first_seq), GATEWAY, point_infos()))
            assert r.json()["accepted"] == 100
            assert (await stats(c))["rows"] == first_seq + 99


def test_copy_binary_layout() -> None:
    rows = rows_table(3)
    payload = copy_binary_rows(7, rows)
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00") and payload.endswith(b"\xff\xff")
    assert len(payload) == 19 + 3 * (2 + 6 * 4 + 4 + 8 + 8 + 4 + 8 + 4) + 2


def test_tokens_from_env_file_and_options(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# comment\ngw-b=from-file\n\ngw-c=file-c\n")
    env = {"GATEWAY_RECEIVER_TOKENS": "gw-a=from-env,gw-b=env-b"}
    tokens = load_tokens(["gw-c=from-option"], f, env)
    assert tokens == {"gw-a": "from-env", "gw-b": "from-file", "gw-c": "from-option"}
    with pytest.raises(ValueError, match="GATEWAY_ID=TOKEN"):
        load_tokens(["no-equals-sign"], None, {})


def test_docs_match_the_openapi_document() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ingestion.md").read_text(encoding="utf-8")
    api = openapi_document(1, 1)
    for path, ops in api["paths"].items():
        assert path in doc, path
        for op in ops.values():
            for code in op["responses"]:
                assert f"| {code} |" in doc, code
    for reason in REASONS:
        assert f"`{reason}`" in doc, reason
    for header in ("Authorization", "Idempotency-Key", "Content-Type", "Retry-After", "WWW-Authenticate"):
        assert header in doc, header
    for field in api["components"]["schemas"]["BatchResult"]["properties"]:
        assert f'"{field}"' in doc, field
    for word in ("--workers", "--db-schema", "receiver-token", "sha256:", "`events`"):
        assert word in doc, word


def test_cli_parser_defaults_and_tokens() -> None:
    from cloud_sync.receiver import build_parser

    args = build_parser().parse_args(["--db", "postgresql://u@h/db", "--port", "0", "--token", "a=b"])
    assert (args.db, args.port, args.token, args.max_body_mb) == ("postgresql://u@h/db", 0, ["a=b"], 64.0)
    assert (args.workers, args.db_schema) == (1, None)
    args = build_parser().parse_args(["--workers", "3", "--db-schema", "fleet"])
    assert (args.workers, args.db_schema) == (3, "fleet")


def test_workers_need_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud_sync.receiver import main

    assert main(["--db", str(tmp_path / "r.duckdb"), "--workers", "2", "--port", "0"]) == 2
    assert "needs a postgresql:// database" in capsys.readouterr().err
    assert not (tmp_path / "r.duckdb").exists()  # refused before opening anything


def test_run_from_args_merges_tokens_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.receiver.server as server_mod

    seen: dict[str, object] = {}

    def fake_serve(db: str, host: str, port: int, tokens: dict[str, str], **kw: object) -> None:
        seen.update(db=db, host=host, port=port, tokens=tokens, **kw)

    monkeypatch.setattr(server_mod, "serve", fake_serve)
    monkeypatch.setenv("GATEWAY_RECEIVER_TOKENS", "gw-env=t-env")
    f = tmp_path / "tokens"
    f.write_text("gw-file=t-file\n")
    argv = ["--db", "x.duckdb", "--port", "9", "--token", "gw-opt=t-opt", "--token-file", str(f),
            "--max-body-mb", "1", "--max-decompressed-mb", "2"]  # fmt: skip
    assert server_mod.main(argv) == 0
    assert seen["tokens"] == {"gw-env": "t-env", "gw-file": "t-file", "gw-opt": "t-opt"}
    assert (seen["db"], seen["port"], seen["max_body_bytes"], seen["max_decompressed_bytes"]) == (
        "x.duckdb",
        9,
        2**20,
        2 * 2**20,
    )
    assert server_mod.main(["--token", "broken"]) == 2


async def test_duckdb_file_is_readable_by_duckdb_1_2(tmp_path: Path) -> None:
    backend = DuckDBBackend(tmp_path / "r.duckdb")
    await backend.ping()
    backend.close()
    header = (tmp_path / "r.duckdb").read_bytes()[:20]
    assert int.from_bytes(header[12:20], "little") == 65  # storage format v1.2.0


# ----------------------------------------------------------------------------------------------- 422, 413
async def test_wrong_schema_or_format_is_422_naming_the_problem(client: httpx.AsyncClient) -> None:
    import pyarrow.ipc as ipc

    good = encode_batch(rows_table(20), GATEWAY, point_infos())
    batch = next(iter(ipc.open_stream(pa.py_buffer(good))))

    def stream(b: pa.RecordBatch, meta: dict[str, str]) -> bytes:
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, b.schema.with_metadata(meta)) as w:
            w.write_batch(b)
        return sink.getvalue().to_pybytes()

    meta = {"format": "gwsync/1", "gateway_id": GATEWAY}
    r = await post(client, stream(batch.drop_columns(["ts_delta"]), meta))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "unprocessable" and "missing column(s) ts_delta" in r.json()["message"]
    r = await post(client, stream(batch, {**meta, "format": "gwsync/0"}))
    assert r.status_code == 422 and "'format' must be 'gwsync/1'" in r.json()["message"]
    assert (await stats(client))["rows"] == 0


async def test_crafted_zstd_bomb_is_413_before_decompressing(client: httpx.AsyncClient) -> None:
    """A small, valid-looking stream whose buffers declare terabytes of decompressed data: refused from the
    8-byte length prefixes alone (decompressing it would need 1 TiB)."""
    import struct

    body = bytearray(encode_batch(rows_table(1000), GATEWAY, point_infos()))
    needle = struct.pack("<q", 8000)  # the seq_delta buffer's declared size (1000 int64)
    pos = bytes(body).find(needle)
    assert pos > 0
    body[pos : pos + 8] = struct.pack("<q", 2**40)
    r = await post(client, bytes(body))
    assert r.status_code == 413 and r.json()["error"] == "too-large"
    assert "decompresses to" in r.json()["message"]
    assert (await stats(client))["rows"] == 0


# ----------------------------------------------------------------------------------------------- events
def events_table(seqs: list[int], priority: int = 0) -> pa.Table:
    now = time.time_ns()
    n = len(seqs)
    return pa.table(
        {
            "seq": pa.array(seqs, pa.int64()),
            "ts": pa.array([now - 10**9 * (n - i) for i in range(n)], pa.int64()),
            "priority": pa.array([priority] * n, pa.int16()),
            "kind": ["trip"] * n,
            "device": ["feeder1"] * n,
            "point": ["XCBR1"] * n,
            "message": [f"trip {s}" for s in seqs],
            "data": ['{"phase":"B"}'] * n,
        }
    )


async def test_events_land_once_with_the_readings(client: httpx.AsyncClient, backend: Backend) -> None:
    from cloud_sync.codec import READINGS_SCHEMA as EMPTY

    body = encode_batch(rows_table(100), GATEWAY, point_infos(), events=events_table([1, 2, 3]))
    r = (await post(client, body, key=f"{GATEWAY}:1-100")).json()
    assert (r["accepted"], r["events"], r["events_accepted"], r["events_duplicates"]) == (100, 3, 3, 0)
    again = (await post(client, body, key=f"{GATEWAY}:1-100")).json()
    assert (again["accepted"], again["events_accepted"], again["events_duplicates"]) == (0, 0, 3)
    # an events-only batch overlapping the first; no Idempotency-Key: the receiver derives gw:e<first>-<last>
    only = (await post(client, encode_batch(EMPTY.empty_table(), GATEWAY, {}, events=events_table([3, 4])))).json()
    assert (only["rows"], only["events_accepted"], only["events_duplicates"]) == (0, 1, 1)
    assert only["batch_key"] == f"{GATEWAY}:e3-4"
    s = await stats(client)
    assert (s["rows"], s["events"], s["last_event_seq"], s["batches"]) == (100, 4, 4, 2)
    mark = "?" if backend.kind == "duckdb" else "%s"
    landed = await backend.query(
        "SELECT e.seq, e.priority, e.kind, e.device, e.point, e.message, e.data FROM events e "
        f"JOIN gateways g USING (gw) WHERE g.gateway_id = {mark} ORDER BY e.seq",
        [GATEWAY],
    )
    assert [row[0] for row in landed] == [1, 2, 3, 4]
    assert landed[0][1:] == (0, "trip", "feeder1", "XCBR1", "trip 1", '{"phase":"B"}')


# ----------------------------------------------------------------------------------------------- tokens
def test_token_table_hashes_plain_tokens_and_accepts_hashes() -> None:
    from cloud_sync.receiver.tokens import TokenTable, hash_token

    table = TokenTable({"gw-a": "plain-secret", "gw-b": hash_token("other-secret")})
    assert table.hashed() == {"gw-a": hash_token("plain-secret"), "gw-b": hash_token("other-secret")}
    assert table.known("plain-secret") and table.known("other-secret")
    assert not table.known(hash_token("other-secret"))  # the hash itself is not a token
    assert table.valid_for("gw-b", "other-secret") and not table.valid_for("gw-a", "other-secret")
    assert not table.valid_for("gw-unknown", "plain-secret")
    assert hash_token("x") == "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


async def test_hashed_token_file_authenticates_over_http(tmp_path: Path, backend: Backend) -> None:
    from cloud_sync.receiver.tokens import hash_token

    f = tmp_path / "tokens"
    f.write_text(f"# minted\n{GATEWAY}={hash_token('s3cret-north')}\nsub-south-02=plain-south\n")
    app = build_app(backend, load_tokens([], f, {}))
    async with ReceiverServer(app) as server, httpx.AsyncClient(base_url=server.url) as c:
        body = encode_batch(rows_table(10), GATEWAY, point_infos())
        assert (await post(c, body, token="s3cret-north")).status_code == 200
        assert (await post(c, body, token=hash_token("s3cret-north"))).status_code == 401
        assert (await post(c, body, token="plain-south")).status_code == 403


def test_token_command_appends_the_hash_and_prints_the_token_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cloud_sync.receiver.tokens import hash_token

    f = tmp_path / "receiver.tokens"
    f.write_text("old-gw=sha256:" + "0" * 64)  # no trailing newline: the command adds one
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "cloud_sync.receiver", "token", "gw-new", "--token-file", str(f)],
                         cwd=root, capture_output=True, text=True, check=True)  # fmt: skip
    token = out.stdout.strip()
    assert len(token) >= 43 and token not in f.read_text()  # 256 bits; only the hash is stored
    assert f.read_text().splitlines()[-1] == f"gw-new={hash_token(token)}"
    assert load_tokens([], f, {})["gw-new"] == hash_token(token)
    assert f.read_text().startswith("old-gw=sha256:")  # appended, never rewritten

    from gateway.cli import main as gateway_main

    g = tmp_path / "fresh.tokens"
    assert gateway_main(["receiver-token", "gw-2", "--token-file", str(g)]) == 0
    assert g.read_text().startswith("gw-2=sha256:") and g.stat().st_mode & 0o777 == 0o600
    assert gateway_main(["receiver-token", "bad=id", "--token-file", str(g)]) == 2

"""Wire codec: bit-exact roundtrip, self-contained point names, size on realistic data, malformed input."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from cloud_sync.codec import (
    READINGS_SCHEMA,
    WIRE_SCHEMA,
    PointCatalog,
    decode_batch,
    decompressed_size,
    encode_batch,
    peek_gateway_id,
)
from cloud_sync.errors import CodecError, PayloadTooLarge, SyncError
from gateway.model import PointInfo
from tests.cloud_sync.conftest import point_infos, rows_table

I64 = np.iinfo(np.int64)
F64 = np.finfo(np.float64)


def table(seq: list[int], ts: list[int], pid: list[int], value: list[float], quality: list[int]) -> pa.Table:
    return pa.table(
        [
            pa.array(np.array(seq, np.int64)),
            pa.array(np.array(ts, np.int64)),
            pa.array(np.array(pid, np.int32)),
            pa.array(np.array(value, np.float64)),
            pa.array(np.array(quality, np.uint16)),
        ],
        schema=READINGS_SCHEMA,
    )


def bits(t: pa.Table) -> dict[str, np.ndarray]:
    out = {c: t.column(c).to_numpy() for c in t.column_names}
    out["value"] = out["value"].view(np.uint64)  # compare floats bit for bit (NaN payloads, -0.0)
    return out


def assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.schema.equals(b.schema)
    ba, bb = bits(a), bits(b)
    for c in ba:
        np.testing.assert_array_equal(ba[c], bb[c], err_msg=c)


SPECIAL_VALUES = [
    0.0,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    F64.max,
    F64.min,
    F64.tiny,
    5e-324,
    -5e-324,
    0.1,
    0.30000000000000004,
    2.0**53,
    2.0**53 + 2,
    -(2.0**63),
    1e300,
    123.456,
    -32768 * 0.1,
    32767 * 0.001,
]

CASES = {
    "specials": table(
        list(range(1, len(SPECIAL_VALUES) + 1)),
        [10**18 + i for i in range(len(SPECIAL_VALUES))],
        [1 + i % 3 for i in range(len(SPECIAL_VALUES))],
        SPECIAL_VALUES,
        [0, 1, 2, 3, 0xFFFF] + [0x4000] * (len(SPECIAL_VALUES) - 5),
    ),
    "int64-extremes": table(
        [1, I64.max, 2, I64.min, 0, -1],
        [I64.min, I64.max, 0, -1, I64.max, I64.min],
        [1, 1, 2, 2, 3, 3],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [0] * 6,
    ),
    "pid-extremes": table(
        [1, 2, 3], [1, 2, 3], [np.iinfo(np.int32).max, 0, np.iinfo(np.int32).min], [1, 2, 3], [0] * 3
    ),
    "nan-payloads": pa.table(
        [
            pa.array(np.arange(1, 5, dtype=np.int64)),
            pa.array(np.arange(4, dtype=np.int64)),
            pa.array(np.ones(4, np.int32)),
            pa.array(
                np.array([0x7FF8000000000001, 0xFFF8000000000000, 0x7FF0000000000001, 1], np.uint64).view(
                    np.float64
                )
            ),
            pa.array(np.zeros(4, np.uint16)),
        ],
        schema=READINGS_SCHEMA,
    ),
    "single": table([7], [1_700_000_000_000_000_000], [2], [230.1], [0]),
    "empty": READINGS_SCHEMA.empty_table(),
    "realistic": rows_table(5000, n_points=12),
    "duplicate-seq": table([5, 5, 6], [1, 1, 2], [1, 2, 1], [1.5, 2.5, 3.5], [0, 0, 0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip_bit_exact(name: str) -> None:
    rows = CASES[name]
    infos = {
        i: PointInfo(f"d.p{i}", "d", f"p{i}", "A") for i in np.unique(rows.column("point_id").to_numpy())
    }
    body = encode_batch(rows, "gw-1", infos)
    out = decode_batch(body, max_decompressed_bytes=10**8)
    assert out.gateway_id == "gw-1"
    expect = rows.take(pa.array(np.argsort(rows.column("seq").to_numpy(), kind="stable")))
    if name != "duplicate-seq":  # equal seqs come back ordered by point id, not input order
        assert_same(out.rows, expect)
    else:
        assert sorted(out.rows.column("value").to_pylist()) == [1.5, 2.5, 3.5]


@pytest.mark.parametrize("seed", range(8))
def test_roundtrip_random_doubles_and_shuffled_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    values = rng.integers(0, 2**64, size=n, dtype=np.uint64).view(np.float64)  # any bit pattern
    mixed = np.where(rng.random(n) < 0.5, values, np.round(rng.normal(0, 1000, n), rng.integers(0, 7)))
    seq = rng.permutation(np.arange(1, n + 1, dtype=np.int64))
    rows = pa.table(
        [
            pa.array(seq),
            pa.array(rng.integers(I64.min, I64.max, size=n, dtype=np.int64)),
            pa.array(rng.integers(1, 50, size=n).astype(np.int32)),
            pa.array(mixed),
            pa.array(rng.integers(0, 2**16, size=n).astype(np.uint16)),
        ],
        schema=READINGS_SCHEMA,
    )
    out = decode_batch(encode_batch(rows, "gw", {}))
    assert_same(out.rows, rows.take(pa.array(np.argsort(seq))))


def test_points_travel_with_the_batch() -> None:
    infos = point_infos(2, 3)
    infos[4] = PointInfo("custom-name", "dev1", "p0", "kV")  # name that is not device.point
    rows = table([1, 2, 3, 4], [1, 2, 3, 4], [1, 4, 4, 99], [1, 2, 3, 4], [0] * 4)
    out = decode_batch(encode_batch(rows, "gw", infos))
    pts = {r["point_id"]: r for r in out.points.to_pylist()}
    assert set(pts) == {1, 4}  # exactly the named ids present (99 has no name)
    assert pts[1] == {"point_id": 1, "name": "dev0.p0", "device": "dev0", "point": "p0", "unit": "A"}
    assert pts[4]["name"] == "custom-name" and pts[4]["unit"] == "kV"
    assert out.rows.column("point_id").to_pylist() == [1, 4, 4, 99]


def test_catalog_reports_missing_ids() -> None:
    cat = PointCatalog(point_infos(1, 3))
    assert cat.missing(np.array([1, 2, 3, 3, 7, 5], np.int32)).tolist() == [5, 7]
    assert len(cat) == 3


def test_metadata_and_peek() -> None:
    body = encode_batch(rows_table(100, first_seq=41), "sub-9", point_infos())
    assert peek_gateway_id(body) == "sub-9"
    meta = decode_batch(body).meta
    assert meta["format"] == "gwsync/1"
    assert (meta["first_seq"], meta["last_seq"], meta["rows"]) == ("41", "140", "100")


def test_encoding_is_deterministic() -> None:
    rows = rows_table(2000)
    assert encode_batch(rows, "gw", point_infos()) == encode_batch(rows, "gw", point_infos())


def test_realistic_data_is_under_8_bytes_per_reading() -> None:
    """200 points x 60 s of slowly moving scaled registers: well under the 8 bytes/reading target."""
    rows = rows_table(12_000, n_points=200)
    infos = {
        i: PointInfo(f"feeder{i // 20}.m{i % 20}", f"feeder{i // 20}", f"m{i % 20}", "A")
        for i in range(1, 201)
    }
    body = encode_batch(rows, "gw", infos)
    assert len(body) / rows.num_rows < 8


def test_decompressed_size_reads_the_prefixes() -> None:
    body = encode_batch(rows_table(10_000), "gw", point_infos())
    size = decompressed_size(body)
    assert size > len(body)
    decode_batch(body, max_decompressed_bytes=size)
    with pytest.raises(PayloadTooLarge):
        decode_batch(body, max_decompressed_bytes=size - 1)


def _stream(batch: pa.RecordBatch, meta: dict[str, str]) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema.with_metadata(meta)) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_malformed_payloads_raise_codec_error() -> None:
    good = encode_batch(rows_table(50), "gw", point_infos())
    wrong_schema = _stream(
        pa.record_batch([pa.array([1, 2])], names=["x"]), {"format": "gwsync/1", "gateway_id": "g"}
    )
    bad_meta = good.replace(b"gwsync/1", b"gwsync/9")
    cases = [b"", b"not arrow at all", good[: len(good) // 2], wrong_schema, bad_meta]
    for body in cases:
        with pytest.raises(CodecError):
            decode_batch(body, max_decompressed_bytes=10**8)
    assert issubclass(CodecError, SyncError)


def test_unknown_value_code_is_rejected() -> None:
    body = encode_batch(rows_table(10), "gw", point_infos())
    batch = next(iter(ipc.open_stream(pa.py_buffer(body))))
    cols = list(batch.columns)
    cols[WIRE_SCHEMA.get_field_index("value_code")] = pa.array(np.full(10, 99, np.int8))
    forged = _stream(
        pa.RecordBatch.from_arrays(cols, schema=WIRE_SCHEMA), {"format": "gwsync/1", "gateway_id": "g"}
    )
    with pytest.raises(CodecError, match="value_code"):
        decode_batch(forged)


def test_lying_length_prefix_is_caught_before_decompressing() -> None:
    """A buffer claiming a huge uncompressed size is refused from its prefix alone."""
    body = bytearray(encode_batch(rows_table(1000), "gw", point_infos()))
    size = decompressed_size(bytes(body))
    # patch the first compressed-buffer prefix equal to a plausible small size into an enormous one
    needle = struct.pack("<q", 8000)  # seq_delta of 1000 rows: 8000 bytes
    pos = bytes(body).find(needle)
    assert pos > 0
    body[pos : pos + 8] = struct.pack("<q", 2**40)
    assert decompressed_size(bytes(body)) > size
    with pytest.raises(PayloadTooLarge):
        decode_batch(bytes(body), max_decompressed_bytes=10**8)


# ----------------------------------------------------------------------------------------------- events
def events_table(seqs: list[int], t0: int = 1_750_000_000_000_000_000) -> pa.Table:
    """Store events (storefwd EVENTS_SCHEMA layout) with the given seqs."""
    n = len(seqs)
    return pa.table(
        {
            "seq": pa.array(seqs, pa.int64()),
            "ts": pa.array([t0 + i for i in range(n)], pa.int64()),
            "priority": pa.array([i % 3 for i in range(n)], pa.int16()),
            "kind": [["trip", "alarm", "gap"][i % 3] for i in range(n)],
            "device": [f"feeder{i % 2}" for i in range(n)],
            "point": ["" if i % 2 else "XCBR1" for i in range(n)],
            "message": [f"event {s}" for s in seqs],
            "data": ['{"phase":"A","amps":1234.5}' if i == 0 else "" for i in range(n)],
        }
    )


def test_events_travel_with_readings_and_alone() -> None:
    from cloud_sync.codec import EVENTS_SCHEMA

    events = events_table([7, 5, 6])  # any order in, seq order out
    body = encode_batch(rows_table(100), "gw", point_infos(), events=events)
    out = decode_batch(body, max_decompressed_bytes=10**8)
    assert out.rows.num_rows == 100
    assert out.events.schema.equals(EVENTS_SCHEMA)
    assert out.events.column("seq").to_pylist() == [5, 6, 7]
    by_seq = {e["seq"]: e for e in out.events.to_pylist()}
    assert by_seq[7]["data"] == '{"phase":"A","amps":1234.5}' and by_seq[7]["point"] == "XCBR1"
    assert (out.meta["events_count"], out.meta["first_event_seq"], out.meta["last_event_seq"]) == ("3", "5", "7")

    alone = decode_batch(encode_batch(READINGS_SCHEMA.empty_table(), "gw", {}, events=events))
    assert alone.rows.num_rows == 0 and alone.events.column("seq").to_pylist() == [5, 6, 7]
    assert decode_batch(encode_batch(rows_table(5), "gw", point_infos())).events.num_rows == 0


def test_decompressed_size_counts_the_events_stream() -> None:
    rows = rows_table(10)
    plain = encode_batch(rows, "gw", point_infos())
    events = events_table(list(range(1, 2001)))
    with_events = encode_batch(rows, "gw", point_infos(), events=events)
    size = decompressed_size(with_events)
    assert size > decompressed_size(plain) + 2000 * 8  # at least the seq column of the events
    decode_batch(with_events, max_decompressed_bytes=size)
    with pytest.raises(PayloadTooLarge):
        decode_batch(with_events, max_decompressed_bytes=size - 1)


def test_encoder_refuses_repeated_event_seqs() -> None:
    with pytest.raises(ValueError, match="event seqs"):
        encode_batch(READINGS_SCHEMA.empty_table(), "gw", {}, events=events_table([1, 1]))


def _with_meta(body: bytes, **changes: str) -> bytes:
    """Re-frame ``body``'s record batch under changed schema metadata (values are UTF-8 text)."""
    reader = ipc.open_stream(pa.py_buffer(body))
    meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
    meta.update(changes)
    return _stream(reader.read_next_batch(), meta)


def _nested_stream(table: pa.Table) -> str:
    import base64

    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode()


def test_schema_problems_are_schema_mismatch_naming_the_problem() -> None:
    from cloud_sync.codec import EVENTS_WIRE_SCHEMA
    from cloud_sync.errors import SchemaMismatch

    good = encode_batch(rows_table(20), "gw", point_infos())
    batch = next(iter(ipc.open_stream(pa.py_buffer(good))))
    meta = {"format": "gwsync/1", "gateway_id": "gw"}
    dropped = _stream(batch.drop_columns(["quality"]), meta)
    retyped = _stream(batch.set_column(1, "seq_delta", batch.column(1).cast(pa.int32())), meta)
    bad_seq = pa.table(
        [pa.array([3, 2], pa.int64()), pa.array([1, 2], pa.int64()), pa.array([0, 0], pa.int16()),
         *[pa.array(["a", "b"]).dictionary_encode() for _ in range(3)], pa.array(["m", "m"]),
         pa.array(["", ""])],
        schema=EVENTS_WIRE_SCHEMA,
    )  # fmt: skip
    cases = {
        "missing column(s) quality": dropped,
        "column seq_delta is int32, expected int64": retyped,
        "'format' must be 'gwsync/1'": _with_meta(good, format="gwsync/2"),
        "'gateway_id' missing or invalid": _with_meta(good, gateway_id=""),
        "'events' is not base64": _with_meta(good, events="%%%"),
        "events schema does not match": _with_meta(good, events=_nested_stream(pa.table({"x": [1]}))),
        "seq must be positive and strictly increasing": _with_meta(good, events=_nested_stream(bad_seq)),
    }
    for message, body in cases.items():
        with pytest.raises(SchemaMismatch, match=message.replace("(", r"\(").replace(")", r"\)")):
            decode_batch(body, max_decompressed_bytes=10**8)
    for unreadable in (b"", b"garbage", good[: len(good) - 100]):  # not an Arrow stream: plain CodecError
        with pytest.raises(CodecError) as info:
            decode_batch(unreadable)
        assert not isinstance(info.value, SchemaMismatch)

"""Wire format of one upload: an Arrow IPC stream (zstd-compressed buffers), lossless and self-contained.

Format ``gwsync/1`` (documented for receivers in ``docs/ingestion.md``):

- Schema metadata: ``format`` = ``gwsync/1``, ``gateway_id``, ``points`` (below), optionally ``events``
  (below) and informational ``rows``/``first_seq``/``last_seq`` (``events_count``/``first_event_seq``/
  ``last_event_seq`` when events travel).
- ``points``: base64 of a nested Arrow IPC stream (zstd) of :data:`POINTS_WIRE_SCHEMA`, one row per named
  point present, sorted by id: ``id_delta`` int32 (``id[i] - id[i-1]``, ``id[-1]`` = 0), ``name`` (null
  when it is ``device + "." + point``), ``device``/``point``/``unit`` (dictionary-encoded strings).
- ``events`` (optional): base64 of a nested Arrow IPC stream (zstd) of :data:`EVENTS_WIRE_SCHEMA`, the store's
  events (gap records, alarms, trips, SOE, control audit) in seq order: ``seq`` int64 (> 0, strictly
  increasing), ``ts`` int64 UTC ns, ``priority`` int16, ``kind``/``device``/``point`` (dictionary-encoded
  strings), ``message`` and ``data`` (JSON text) strings. A batch may carry events and no readings.
- Record batches of the fixed schema :data:`WIRE_SCHEMA`. Rows are sorted by ``(point_id, seq)`` so a point's
  successive values and timestamps are adjacent; the receiver gets them back ordered by seq. Every ``*_delta``
  column holds ``x[i] - x[i-1]`` (``x[-1]`` = 0) in two's-complement wrapping arithmetic:

  ====================  =====================================================================================
  ``point_id_delta``    int32: the row's point id, delta-coded.
  ``seq_delta``         int64: the store's sequence number, delta-coded.
  ``ts_delta``          int64: UTC epoch ns, delta-coded.
  ``value_code``        int8: how to rebuild ``value`` from ``k`` (below): 0..6: ``k * 1e-c`` (multiplication
                        by the float64 nearest 10^-c); 16..22: ``k / 1e(c-16)``; 127: the raw bits in
                        ``value_raw_b*``.
  ``value_int_b0..b7``  uint8: byte plane j (little-endian) of ``zigzag(k[i] - k[i-1])`` where ``k[i-1]`` is
                        the previous row of the same point (0 for a point's first row); rows with code 127
                        repeat the previous ``k``. zigzag(x) = (x << 1) ^ (x >> 63).
  ``value_raw_b0..b7``  uint8: byte plane j (little-endian) of the float64 bits of code-127 rows, else 0
                        (byte-stream split: the planes compress separately).
  ``quality``           uint16: the quality word.
  ====================  =====================================================================================

Values from scaled integer registers (``raw * 0.1``) become small integers ``k`` that compress to 1-2 bytes;
everything else (NaN, ±inf, -0.0, arbitrary doubles) travels as raw bits. The encoder checks every row's
rebuilt bits, so decoding is bit-exact by construction. A row whose point id is not in ``points`` has no name
(the receiver quarantines it).

Errors: bytes that are not a readable Arrow IPC stream (empty, garbage, truncated, broken framing) raise
:class:`CodecError`; a readable stream that is not ``gwsync/1`` (format metadata, schema, nulls, value codes,
nested points/events) raises its subclass :class:`SchemaMismatch` with a message naming what is wrong.

Thread-safety: every function here is pure (CPU only, no I/O) and may run in any thread; the uploader and
the receiver call them via ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cloud_sync.errors import CodecError, PayloadTooLarge, SchemaMismatch
from gateway.model import PointInfo

FORMAT: Final = "gwsync/1"
CONTENT_TYPE: Final = "application/vnd.apache.arrow.stream"
MAX_GATEWAY_ID_LEN: Final = 128

# The store's row layout, which is also what decode_batch() returns.
READINGS_SCHEMA: Final = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("point_id", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("quality", pa.uint16(), nullable=False),
    ]
)

# Points of a decoded batch: name is filled in (device.point) unless the gateway sent no name at all.
POINTS_SCHEMA: Final = pa.schema(
    [
        pa.field("point_id", pa.int32(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("device", pa.string()),
        pa.field("point", pa.string()),
        pa.field("unit", pa.string()),
    ]
)

# Events of a decoded batch (the store's EVENTS_SCHEMA, with non-null seq/ts/priority), ordered by seq.
EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),  # UTC epoch ns
        pa.field("priority", pa.int16(), nullable=False),  # 0 = most vital (never evicted)
        pa.field("kind", pa.string()),
        pa.field("device", pa.string()),
        pa.field("point", pa.string()),
        pa.field("message", pa.string()),
        pa.field("data", pa.string()),  # JSON text (may be empty)
    ]
)

_STR_DICT: Final = pa.dictionary(pa.int32(), pa.string())
EVENTS_WIRE_SCHEMA: Final = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("priority", pa.int16(), nullable=False),
        pa.field("kind", _STR_DICT),
        pa.field("device", _STR_DICT),
        pa.field("point", _STR_DICT),
        pa.field("message", pa.string()),
        pa.field("data", pa.string()),
    ]
)
MAX_EVENTS_PER_BATCH: Final = 100_000  # the decoder refuses more (422); the uploader sends far fewer
POINTS_WIRE_SCHEMA: Final = pa.schema(
    [
        pa.field("id_delta", pa.int32(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("device", _STR_DICT),
        pa.field("point", _STR_DICT),
        pa.field("unit", _STR_DICT),
    ]
)
_RAW_PLANES: Final = [f"value_raw_b{j}" for j in range(8)]
_INT_PLANES: Final = [f"value_int_b{j}" for j in range(8)]
WIRE_SCHEMA: Final = pa.schema(
    [
        pa.field("point_id_delta", pa.int32(), nullable=False),
        pa.field("seq_delta", pa.int64(), nullable=False),
        pa.field("ts_delta", pa.int64(), nullable=False),
        pa.field("value_code", pa.int8(), nullable=False),
        *[pa.field(n, pa.uint8(), nullable=False) for n in _INT_PLANES],
        *[pa.field(n, pa.uint8(), nullable=False) for n in _RAW_PLANES],
        pa.field("quality", pa.uint16(), nullable=False),
    ]
)

MAX_EXP: Final = 6
CODE_RAW: Final = 127
_DIV_BASE: Final = 16
# float64 constants, parsed (correctly rounded) so encoder and decoder use bit-identical factors
_MUL: Final = np.array([float(f"1e-{e}") for e in range(MAX_EXP + 1)], dtype=np.float64)
_DIV: Final = np.array([float(f"1e{e}") for e in range(MAX_EXP + 1)], dtype=np.float64)
# candidate codes, in order of preference (ties go to the earlier one)
_CODES: Final = [0, *[c for e in range(1, MAX_EXP + 1) for c in (e, _DIV_BASE + e)]]
_EXACT_INT: Final = float(2**53)

_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------- points
class PointCatalog:
    """The gateway's point names prepared for encoding (built once, reused for every batch).

    Immutable after construction; safe to share between threads.
    """

    def __init__(self, infos: Mapping[int, PointInfo]) -> None:
        ids = sorted(int(i) for i in infos)
        self.ids: npt.NDArray[np.int32] = np.array(ids, dtype=np.int32)
        rows = [infos[i] for i in ids]
        self._name = pa.array(
            [None if p.name == f"{p.device}.{p.point}" else p.name for p in rows], type=pa.string()
        )
        self._device = pa.array([p.device for p in rows], type=pa.string()).dictionary_encode()
        self._point = pa.array([p.point for p in rows], type=pa.string()).dictionary_encode()
        self._unit = pa.array([p.unit for p in rows], type=pa.string()).dictionary_encode()

    def __len__(self) -> int:
        return len(self.ids)

    def missing(self, ids: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """The ids (sorted, unique) that the catalog has no name for."""
        u = np.unique(ids)
        return u[~np.isin(u, self.ids)]

    def points_stream(self, ids: npt.NDArray[np.int32], level: int = 3) -> bytes:
        """The nested ``points`` IPC stream for sorted unique ``ids`` (ids without a name are left out)."""
        pos = np.searchsorted(self.ids, ids)
        found = pos < len(self.ids)
        found[found] = self.ids[pos[found]] == ids[found]
        take = pa.array(pos[found].astype(np.int32))
        known = ids[found].astype(np.int32)
        id_delta = np.diff(known, prepend=np.int32(0)).astype(np.int32) if len(known) else known
        table = pa.table(
            [
                pa.array(id_delta, type=pa.int32()),
                self._name.take(take),
                self._device.take(take),
                self._point.take(take),
                self._unit.take(take),
            ],
            schema=POINTS_WIRE_SCHEMA,
        )
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, POINTS_WIRE_SCHEMA, options=_ipc_options(level)) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()


def _ipc_options(level: int) -> ipc.IpcWriteOptions:
    return ipc.IpcWriteOptions(compression=pa.Codec("zstd", level))


def events_stream(events: pa.Table, level: int = 3) -> bytes:
    """The nested ``events`` IPC stream of store events (:data:`EVENTS_SCHEMA` columns, any order of rows:
    they are sorted by seq). ValueError when a seq is missing, not positive or repeated."""
    seq = events.column("seq").to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(seq, kind="stable")
    seq = seq[order]
    if events.column("seq").null_count or (len(seq) and (seq[0] <= 0 or (np.diff(seq) <= 0).any())):
        raise ValueError("event seqs must be positive and unique")
    t = events.take(pa.array(order))

    def text(name: str) -> pa.ChunkedArray:
        return t.column(name).cast(pa.string())

    table = pa.table(
        [
            pa.array(seq),
            t.column("ts").cast(pa.int64()),
            t.column("priority").cast(pa.int16()),
            *[text(c).dictionary_encode() for c in ("kind", "device", "point")],
            text("message"),
            text("data"),
        ],
        schema=EVENTS_WIRE_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, EVENTS_WIRE_SCHEMA, options=_ipc_options(level)) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()


def _schema_problems(got: pa.Schema, expected: pa.Schema) -> str:
    """Human-readable difference of two schemas: missing, unexpected and mistyped columns."""
    got = got.remove_metadata()
    names = set(got.names)
    parts = []
    missing = [n for n in expected.names if n not in names]
    extra = [n for n in got.names if n not in set(expected.names)]
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected column(s) {', '.join(extra)}")
    for f in expected:
        if f.name in names:
            g = got.field(f.name)
            if not g.type.equals(f.type):
                parts.append(f"column {f.name} is {g.type}, expected {f.type}")
            elif g.nullable and not f.nullable:
                parts.append(f"column {f.name} must be declared non-nullable")
    if not parts and got.names != expected.names:
        parts.append(f"columns out of order: {', '.join(got.names)}")
    return "; ".join(parts) or "schema differs"


# --------------------------------------------------------------------------------------------- helpers
def _delta(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Wrapping first difference with a[-1] = 0, same signed dtype (exactly inverted by :func:`_undelta`)."""
    a = np.ascontiguousarray(a)
    udt = np.dtype(f"u{a.dtype.itemsize}")
    u = a.view(udt)
    d = np.empty_like(u)
    if len(u):
        d[0] = u[0]
        np.subtract(u[1:], u[:-1], out=d[1:])
    return d.view(a.dtype)


def _planes(a: npt.NDArray[np.uint64]) -> list[pa.Array]:
    """Byte-stream split: 8 uint8 arrays, plane j holding byte j (little-endian) of every value."""
    b = np.ascontiguousarray(a, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return [pa.array(np.ascontiguousarray(b[:, j])) for j in range(8)]


def _unplanes(batch: pa.RecordBatch, names: list[str]) -> npt.NDArray[np.uint64]:
    planes = np.stack([batch.column(n).to_numpy() for n in names], axis=1)
    out: npt.NDArray[np.uint64] = np.ascontiguousarray(planes).view("<u8").reshape(-1).astype(np.uint64)
    return out


def _undelta(d: npt.NDArray[Any]) -> npt.NDArray[Any]:
    udt = np.dtype(f"u{d.dtype.itemsize}")
    out = np.cumsum(d.view(udt), dtype=udt)
    return out.view(d.dtype)


def _encode_values(
    values: npt.NDArray[np.float64], starts: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.int8], _I64, npt.NDArray[np.uint64]]:
    """Choose a decimal code per point run; returns (code per row, k per row, raw bits per row)."""
    n = len(values)
    bits = values.view(np.uint64)
    ks = np.zeros((len(_CODES), n), dtype=np.int64)
    ok = np.zeros((len(_CODES), n), dtype=bool)
    with np.errstate(all="ignore"):
        for ci, code in enumerate(_CODES):
            e = code - _DIV_BASE if code >= _DIV_BASE else code
            x = values * _DIV[e]
            fits = np.abs(x) <= _EXACT_INT  # False for NaN/inf
            k = np.where(fits, np.rint(x), 0.0).astype(np.int64)
            kf = k.astype(np.float64)
            rebuilt = kf / _DIV[e] if code >= _DIV_BASE else kf * _MUL[e]
            ok[ci] = fits & (rebuilt.view(np.uint64) == bits)
            ks[ci] = k
    rows = np.arange(n)
    if n:
        counts = np.add.reduceat(ok.astype(np.int32), starts, axis=1)  # (codes, runs)
        best_run = counts.argmax(axis=0)
        run_len = np.diff(np.append(starts, n))
        best = np.repeat(best_run, run_len)
    else:
        best = np.zeros(0, dtype=np.intp)
    matched = ok[best, rows]
    k_row = np.where(matched, ks[best, rows], 0)
    # raw rows repeat the previous k so their delta is 0
    last = np.maximum.accumulate(np.where(matched, rows, 0)) if n else rows
    k_row = k_row[last]
    codes = np.array(_CODES, dtype=np.int8)[best]
    codes[~matched] = CODE_RAW
    raw = np.where(matched, np.uint64(0), bits)
    return codes, k_row, raw


def _decode_values(
    codes: npt.NDArray[np.int8], k: _I64, raw: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]:
    out = raw.view(np.float64).copy()
    kf = k.astype(np.float64)
    valid = codes == CODE_RAW
    for e in range(MAX_EXP + 1):
        m = codes == e
        if m.any():
            out[m] = kf[m] * _MUL[e]
            valid |= m
        if e:
            m = codes == _DIV_BASE + e
            if m.any():
                out[m] = kf[m] / _DIV[e]
                valid |= m
    if not valid.all():
        raise SchemaMismatch(f"unknown value_code {int(codes[~valid][0])}")
    return out


# --------------------------------------------------------------------------------------------- encode
def encode_batch(
    rows: pa.Table | pa.RecordBatch,
    gateway_id: str,
    points: PointCatalog | Mapping[int, PointInfo],
    *,
    level: int = 3,
    events: pa.Table | None = None,
) -> bytes:
    """Encode store rows (:data:`READINGS_SCHEMA` columns, any order) as one ``gwsync/1`` body.

    ``points`` must name every point id present (ids it lacks travel without a name, and the receiver
    quarantines their rows). ``level`` is the zstd level. ``events``: store events (``Store.events_after``,
    :data:`EVENTS_SCHEMA` columns) to carry in the optional events section; ``rows`` may then be empty.
    """
    if not gateway_id or len(gateway_id) > MAX_GATEWAY_ID_LEN:
        raise ValueError(f"gateway_id must be 1..{MAX_GATEWAY_ID_LEN} characters")
    cat = points if isinstance(points, PointCatalog) else PointCatalog(points)
    seq = rows.column("seq").to_numpy().astype(np.int64, copy=False)
    ts = rows.column("ts").to_numpy().astype(np.int64, copy=False)
    pid = rows.column("point_id").to_numpy().astype(np.int32, copy=False)
    val = rows.column("value").to_numpy().astype(np.float64, copy=False)
    qual = rows.column("quality").to_numpy().astype(np.uint16, copy=False)
    order = np.lexsort((seq, pid))
    seq, ts, pid, val, qual = seq[order], ts[order], pid[order], val[order], qual[order]
    n = len(seq)
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]]) if n else np.zeros(0, np.intp)
    uniq = pid[starts]
    points_b64 = base64.b64encode(cat.points_stream(uniq, level)).decode("ascii")
    codes, k, raw = _encode_values(np.ascontiguousarray(val), starts)
    kd = _delta(k)
    kd[starts] = k[starts]  # each point's chain starts from 0
    zigzag = ((kd << 1) ^ (kd >> 63)).view(np.uint64)
    arrays = [
        pa.array(_delta(pid), type=pa.int32()),
        pa.array(_delta(seq)),
        pa.array(_delta(ts)),
        pa.array(codes, type=pa.int8()),
        *_planes(zigzag),
        *_planes(raw),
        pa.array(qual, type=pa.uint16()),
    ]
    meta = {
        "format": FORMAT,
        "gateway_id": gateway_id,
        "rows": str(n),
        "first_seq": str(int(seq.min())) if n else "0",
        "last_seq": str(int(seq.max())) if n else "0",
        "points": points_b64,
    }
    if events is not None and events.num_rows:
        eseq = events.column("seq")
        meta["events"] = base64.b64encode(events_stream(events, level)).decode("ascii")
        meta["events_count"] = str(events.num_rows)
        meta["first_event_seq"] = str(pc.min(eseq).as_py())
        meta["last_event_seq"] = str(pc.max(eseq).as_py())
    schema = WIRE_SCHEMA.with_metadata(meta)
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, schema, options=_ipc_options(level)) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


# --------------------------------------------------------------------------------------------- decode
@dataclass(frozen=True, slots=True)
class DecodedBatch:
    gateway_id: str
    rows: pa.Table  # READINGS_SCHEMA, ordered by seq (stable)
    points: pa.Table  # POINTS_SCHEMA, one row per named point present, sorted by point_id
    meta: dict[str, str]  # all schema metadata, decoded as UTF-8
    events: pa.Table = field(default_factory=EVENTS_SCHEMA.empty_table)  # EVENTS_SCHEMA, ordered by seq


def peek_gateway_id(body: bytes) -> str:
    """Read only the schema metadata (cheap, no decompression) and return the gateway id (CodecError)."""
    try:
        reader = ipc.open_stream(pa.py_buffer(body))
        meta = reader.schema.metadata or {}
    except (pa.ArrowException, ValueError, OSError) as e:
        raise CodecError(f"not an Arrow IPC stream: {e}") from e
    return _gateway_from_meta(
        {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in meta.items()}
    )


def _gateway_from_meta(meta: Mapping[str, str]) -> str:
    if meta.get("format") != FORMAT:
        raise SchemaMismatch(f"schema metadata 'format' must be {FORMAT!r}, got {meta.get('format')!r}")
    gw = meta.get("gateway_id", "")
    if not gw or len(gw) > MAX_GATEWAY_ID_LEN or not gw.isprintable():
        raise SchemaMismatch(
            f"schema metadata 'gateway_id' missing or invalid (1..{MAX_GATEWAY_ID_LEN} printable characters)"
        )
    return gw


def decode_batch(body: bytes, *, max_decompressed_bytes: int | None = None) -> DecodedBatch:
    """Decode a ``gwsync/1`` body. Raises CodecError when the bytes are not a readable Arrow IPC stream,
    SchemaMismatch (a CodecError) when the stream is not ``gwsync/1``, PayloadTooLarge when its buffers (and
    the nested points/events streams) would decompress to more than ``max_decompressed_bytes``: checked from
    the IPC metadata before anything is decompressed. Delta chains restart in every record batch.
    """
    try:
        reader = ipc.open_stream(pa.py_buffer(body))
        schema = reader.schema
    except (pa.ArrowException, ValueError, OSError) as e:
        raise CodecError(f"not a valid Arrow IPC stream: {e}") from e
    meta = _meta(schema)
    gateway_id = _gateway_from_meta(meta)
    if not schema.remove_metadata().equals(WIRE_SCHEMA):
        raise SchemaMismatch(
            f"schema does not match {FORMAT}: {_schema_problems(schema, WIRE_SCHEMA)}"
        )
    points_ipc = _nested(meta, "points")
    events_ipc = _nested(meta, "events")
    if max_decompressed_bytes is not None:
        size = sum(_stream_decompressed_size(b) for b in (body, points_ipc, events_ipc))
        if size > max_decompressed_bytes:
            raise PayloadTooLarge(f"payload decompresses to {size} bytes, limit {max_decompressed_bytes}")
    points = _decode_points(points_ipc)
    events = _decode_events(events_ipc)
    try:
        batches = list(reader)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise CodecError(f"not a valid Arrow IPC stream: {e}") from e
    parts = [_decode_record_batch(b) for b in batches]
    if not parts:
        rows = READINGS_SCHEMA.empty_table()
    elif len(parts) == 1:
        rows = parts[0]
    else:
        rows = pa.concat_tables(parts)
        rows = rows.take(pa.array(np.argsort(rows.column("seq").to_numpy(), kind="stable")))
    return DecodedBatch(gateway_id, rows, points, meta, events)


def _nested(meta: Mapping[str, str], key: str) -> bytes:
    try:
        return base64.b64decode(meta.get(key, ""), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SchemaMismatch(f"schema metadata {key!r} is not base64: {e}") from e


def _meta(schema: pa.Schema) -> dict[str, str]:
    raw = schema.metadata or {}
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}


def _decode_points(data: bytes) -> pa.Table:
    if not data:
        return POINTS_SCHEMA.empty_table()
    table = _read_nested(data, "points", POINTS_WIRE_SCHEMA)
    if table.column("id_delta").null_count:
        raise SchemaMismatch("points: null id_delta")
    ids = _undelta(table.column("id_delta").to_numpy().astype(np.int32))
    if len(ids) > 1 and not (np.diff(ids.astype(np.int64)) > 0).all():
        raise SchemaMismatch("points: ids must be strictly increasing")
    device = table.column("device").cast(pa.string())
    point = table.column("point").cast(pa.string())
    unit = table.column("unit").cast(pa.string())
    full_name = pc.coalesce(table.column("name"), pc.binary_join_element_wise(device, point, "."))
    return pa.table([pa.array(ids, type=pa.int32()), full_name, device, point, unit], schema=POINTS_SCHEMA)


def _read_nested(data: bytes, what: str, expected: pa.Schema) -> pa.Table:
    """Read a nested IPC stream from the metadata (SchemaMismatch: it is part of a readable outer stream)."""
    try:
        reader = ipc.open_stream(pa.py_buffer(data))
        if not reader.schema.remove_metadata().equals(expected):
            raise SchemaMismatch(
                f"{what} schema does not match {FORMAT}: {_schema_problems(reader.schema, expected)}"
            )
        table = reader.read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise SchemaMismatch(f"invalid {what} stream: {e}") from e
    return table


def _decode_events(data: bytes) -> pa.Table:
    if not data:
        return EVENTS_SCHEMA.empty_table()
    table = _read_nested(data, "events", EVENTS_WIRE_SCHEMA)
    if table.num_rows > MAX_EVENTS_PER_BATCH:
        raise SchemaMismatch(f"events: {table.num_rows} events, at most {MAX_EVENTS_PER_BATCH} per batch")
    for name in ("seq", "ts", "priority"):
        if table.column(name).null_count:
            raise SchemaMismatch(f"events: column {name} has nulls")
    seq = table.column("seq").to_numpy()
    if len(seq) and (seq[0] <= 0 or (np.diff(seq) <= 0).any()):
        raise SchemaMismatch("events: seq must be positive and strictly increasing")
    cols = [table.column(n) if n in ("seq", "ts", "priority") else table.column(n).cast(pa.string())
            for n in EVENTS_SCHEMA.names]  # fmt: skip
    return pa.table(cols, schema=EVENTS_SCHEMA).combine_chunks()


def _decode_record_batch(batch: pa.RecordBatch) -> pa.Table:
    try:
        batch.validate(full=True)
    except pa.ArrowException as e:
        raise CodecError(f"invalid record batch: {e}") from e
    for name in WIRE_SCHEMA.names:
        if batch.column(name).null_count:
            raise SchemaMismatch(f"column {name!r} has nulls")
    pid = _undelta(batch.column("point_id_delta").to_numpy())
    seq = _undelta(batch.column("seq_delta").to_numpy())
    ts = _undelta(batch.column("ts_delta").to_numpy())
    z = _unplanes(batch, _INT_PLANES)
    kd = (z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))  # un-zigzag (wrapping)
    c = np.cumsum(kd, dtype=np.uint64)
    starts = np.flatnonzero(np.r_[True, batch.column("point_id_delta").to_numpy()[1:] != 0])
    base = np.r_[np.uint64(0), c[starts[1:] - 1]].astype(np.uint64)  # running sum before each point's chain
    k = (
        (c - np.repeat(base, np.diff(np.append(starts, len(c))))).view(np.int64)
        if len(c)
        else c.view(np.int64)
    )
    codes = batch.column("value_code").to_numpy()
    value = _decode_values(codes, k, _unplanes(batch, _RAW_PLANES))
    quality = batch.column("quality").to_numpy()
    order = np.argsort(seq, kind="stable")
    return pa.table(
        [
            pa.array(seq[order]),
            pa.array(ts[order]),
            pa.array(pid[order]),
            pa.array(value[order]),
            pa.array(quality[order], type=pa.uint16()),
        ],
        schema=READINGS_SCHEMA,
    )


# --------------------------------------------------------------------------------------------- size bound
def decompressed_size(body: bytes) -> int:
    """Bytes a ``gwsync/1`` body decompresses to (its buffers plus the nested points and events streams'),
    computed from the IPC metadata without decompressing anything. CodecError when the framing is broken."""
    try:
        meta = _meta(ipc.open_stream(pa.py_buffer(body)).schema)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise CodecError(f"not a valid Arrow IPC stream: {e}") from e
    nested = [_nested(meta, "points"), _nested(meta, "events")]
    return sum(_stream_decompressed_size(b) for b in (body, *nested))


def _stream_decompressed_size(body: bytes) -> int:
    """Sum of every IPC buffer's uncompressed size, read from the message metadata without decompressing.

    Walks the stream's flatbuffer headers (Message -> RecordBatch/DictionaryBatch -> buffers) and reads the
    8-byte uncompressed-length prefix of each compressed buffer. CodecError when the framing is broken.
    """
    total = 0
    if not body:
        return 0
    try:
        reader = ipc.MessageReader.open_stream(pa.py_buffer(body))
        while True:
            try:
                msg = reader.read_next_message()
            except StopIteration:
                break
            meta = msg.metadata.to_pybytes()
            msg_body = msg.body.to_pybytes() if msg.body is not None else b""
            total += _message_uncompressed(meta, msg_body)
    except (pa.ArrowException, ValueError, OSError, struct.error, IndexError) as e:
        raise CodecError(f"broken Arrow IPC framing: {e}") from e
    return total


def _fb_field(buf: bytes, table: int, field: int) -> int | None:
    """Absolute position of ``field`` in the flatbuffer table at ``table``, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    if slot + 2 > vt_size:
        return None
    off = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + off if off else None


def _fb_deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _message_uncompressed(meta: bytes, body: bytes) -> int:
    root = _fb_deref(meta, 0)
    htype_pos = _fb_field(meta, root, 1)
    header_pos = _fb_field(meta, root, 2)
    if htype_pos is None or header_pos is None:
        return 0
    htype = meta[htype_pos]
    header = _fb_deref(meta, header_pos)
    if htype == 2:  # DictionaryBatch: its RecordBatch is field 1
        data = _fb_field(meta, header, 1)
        if data is None:
            return 0
        header = _fb_deref(meta, data)
    elif htype != 3:  # Schema (1) carries no buffers; tensors are not part of this format
        if htype == 1:
            return 0
        raise CodecError(f"unexpected IPC message type {htype}")
    buffers_pos = _fb_field(meta, header, 2)
    compressed = _fb_field(meta, header, 3) is not None
    if buffers_pos is None:
        return 0
    vec = _fb_deref(meta, buffers_pos)
    count = struct.unpack_from("<I", meta, vec)[0]
    total = 0
    for i in range(count):
        offset, length = struct.unpack_from("<qq", meta, vec + 4 + 16 * i)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise CodecError("IPC buffer outside the message body")
        if not compressed or length == 0:
            total += length
            continue
        if length < 8:
            raise CodecError("compressed IPC buffer shorter than its length prefix")
        (uncompressed,) = struct.unpack_from("<q", body, offset)
        total += length - 8 if uncompressed == -1 else uncompressed
        if uncompressed < -1:
            raise CodecError("negative uncompressed buffer length")
    return total

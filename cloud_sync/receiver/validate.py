"""Row validation for the receiver: split a decoded batch into rows to land and rows to quarantine.

Pure numpy/Arrow, no I/O; any thread. A row failing several checks is quarantined with the first reason in
:data:`REASONS` order. Nothing is ever dropped: every input row is either valid or quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from cloud_sync.codec import READINGS_SCHEMA
from gateway.model import VALIDITY_MASK

TS_MIN_NS: Final = 946_684_800_000_000_000  # 2000-01-01T00:00:00Z
TS_MAX_AHEAD_NS: Final = 86_400_000_000_000  # one day ahead of the receiver's clock
_RESERVED_VALIDITY: Final = 0b10

# reason codes stored in quarantine.reason (stable strings: dashboards and docs/ingestion.md use them)
REASONS: Final = (
    "seq-not-positive",  # seq <= 0
    "duplicate-seq-in-batch",  # a seq seen earlier in the same batch (the first occurrence is judged alone)
    "ts-out-of-range",  # ts before 2000-01-01 or more than a day after the receiver's clock
    "quality-reserved",  # quality validity bits are 0b10 (reserved in IEC 61850-7-3)
    "point-unnamed",  # the batch carries no device/point name for the point id
)

QUARANTINE_SCHEMA: Final = pa.schema(
    [
        pa.field(
            "row_index", pa.int32(), nullable=False
        ),  # index of the row in the decoded batch (seq order)
        *READINGS_SCHEMA,
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class Split:
    valid: pa.Table  # READINGS_SCHEMA, seq order, seqs unique
    quarantine: pa.Table  # QUARANTINE_SCHEMA


def split_rows(rows: pa.Table, points: pa.Table, now_ns: int) -> Split:
    """Validate ``rows`` (decoded, seq order) against ``points`` (the batch's point table) and ``now_ns``."""
    seq = rows.column("seq").to_numpy()
    ts = rows.column("ts").to_numpy()
    pid = rows.column("point_id").to_numpy()
    quality = rows.column("quality").to_numpy()
    n = len(seq)
    named_mask = ~(
        np.asarray(points.column("device").is_null().to_numpy(zero_copy_only=False))
        | np.asarray(points.column("point").is_null().to_numpy(zero_copy_only=False))
    )
    named_ids = points.column("point_id").to_numpy()[named_mask]

    dup = np.zeros(n, dtype=bool)
    if n:
        order = np.argsort(seq, kind="stable")
        s = seq[order]
        dup[order[1:]] = s[1:] == s[:-1]
    checks = (
        seq <= 0,
        dup,
        (ts < TS_MIN_NS) | (ts > now_ns + TS_MAX_AHEAD_NS),
        (quality & VALIDITY_MASK) == _RESERVED_VALIDITY,
        ~np.isin(pid, named_ids),
    )
    reason_idx = np.full(n, -1, dtype=np.int8)
    for i in range(len(checks) - 1, -1, -1):  # first reason wins: assign in reverse
        reason_idx[checks[i]] = i
    bad = reason_idx >= 0
    if not bad.any():
        return Split(rows, QUARANTINE_SCHEMA.empty_table())
    bad_idx = np.flatnonzero(bad)
    q = rows.take(pa.array(bad_idx))
    reasons = pa.array(np.array(REASONS, dtype=object)[reason_idx[bad_idx]], type=pa.string())
    quarantine = pa.table([pa.array(bad_idx.astype(np.int32)), *q.columns, reasons], schema=QUARANTINE_SCHEMA)
    valid = rows.filter(pa.array(~bad))
    return Split(valid, quarantine)

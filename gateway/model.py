"""The point model shared by every package: quality bits and columnar reading batches.

A *Reading* is ``(ts, point_id, value, quality)`` where ``point_id`` is the store's small integer id for a
``device.point`` name. Readings never exist as one Python object each: drivers, runners, the store and the
uploader pass :class:`ReadingBatch` objects holding four equally long numpy columns.

Units and types (the contract every package relies on):
- ``ts``: int64, UTC epoch **nanoseconds**; source time where the protocol carries one, else gateway receive
  time with :data:`Q.GATEWAY_TIME` set.
- ``point_id``: int32, ids assigned by ``storefwd`` (stable across restarts for the same name).
- ``value``: float64; booleans and enums as numbers.
- ``quality``: uint16 laid out like IEC 61850-7-3 Quality, plus two gateway bits (see :class:`Q`).

This module has no import-time side effects and imports nothing from other project packages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt


class Q(enum.IntFlag):
    """Quality bits (uint16). Bits 0-1 are the validity field, as in IEC 61850-7-3.

    validity: 00 good, 01 invalid, 11 questionable (10 is reserved and never produced).
    """

    GOOD = 0x0000
    INVALID = 0x0001
    QUESTIONABLE = 0x0003  # both validity bits set
    OVERFLOW = 1 << 2
    OUT_OF_RANGE = 1 << 3
    BAD_REFERENCE = 1 << 4
    OSCILLATORY = 1 << 5
    FAILURE = 1 << 6
    OLD_DATA = 1 << 7
    INCONSISTENT = 1 << 8
    INACCURATE = 1 << 9
    SUBSTITUTED = 1 << 10  # source = substituted
    TEST = 1 << 11
    OPERATOR_BLOCKED = 1 << 12
    CLOCK_NOT_SYNCHRONISED = 1 << 13  # gateway bit: source clock not synchronised
    GATEWAY_TIME = 1 << 14  # gateway bit: ts is the gateway's receive time, not the source's


VALIDITY_MASK: Final = 0x0003

_DETAIL_NAMES: Final = [
    (Q.OVERFLOW, "overflow"),
    (Q.OUT_OF_RANGE, "out-of-range"),
    (Q.BAD_REFERENCE, "bad-reference"),
    (Q.OSCILLATORY, "oscillatory"),
    (Q.FAILURE, "failure"),
    (Q.OLD_DATA, "old-data"),
    (Q.INCONSISTENT, "inconsistent"),
    (Q.INACCURATE, "inaccurate"),
    (Q.SUBSTITUTED, "substituted"),
    (Q.TEST, "test"),
    (Q.OPERATOR_BLOCKED, "operator-blocked"),
    (Q.CLOCK_NOT_SYNCHRONISED, "clock-not-synchronised"),
    (Q.GATEWAY_TIME, "gateway-time"),
]


def validity(quality: int) -> str:
    """Return ``good``, ``invalid``, ``questionable`` or ``reserved`` for a quality word."""
    return {0: "good", 1: "invalid", 3: "questionable"}.get(quality & VALIDITY_MASK, "reserved")


def describe_quality(quality: int) -> str:
    """Human-readable quality, e.g. ``questionable: failure, old-data``. Gateway-time alone reads ``good``."""
    details = [name for bit, name in _DETAIL_NAMES if quality & bit and bit != Q.GATEWAY_TIME]
    v = validity(quality)
    return f"{v}: {', '.join(details)}" if details else v


TS_DTYPE: Final = np.dtype(np.int64)
ID_DTYPE: Final = np.dtype(np.int32)
VALUE_DTYPE: Final = np.dtype(np.float64)
QUALITY_DTYPE: Final = np.dtype(np.uint16)


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Equally long columns of readings. Arrays are owned by the batch once built: never mutate them.

    Build with :meth:`of` (copies/casts as needed) or the constructor when the dtypes are already right.
    """

    ts: npt.NDArray[np.int64]
    point_id: npt.NDArray[np.int32]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint16]

    def __post_init__(self) -> None:
        n = len(self.ts)
        if not (len(self.point_id) == len(self.value) == len(self.quality) == n):
            raise ValueError("ReadingBatch columns must have equal length")

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of(
        cls,
        ts: npt.ArrayLike,
        point_id: npt.ArrayLike,
        value: npt.ArrayLike,
        quality: npt.ArrayLike,
    ) -> ReadingBatch:
        """Build a batch, casting each column to its contract dtype. A scalar ``ts``/``quality`` is broadcast."""
        pid = np.asarray(point_id, dtype=ID_DTYPE)
        n = len(pid)
        ts_arr = np.asarray(ts, dtype=TS_DTYPE)
        q_arr = np.asarray(quality, dtype=QUALITY_DTYPE)
        if ts_arr.ndim == 0:
            ts_arr = np.full(n, ts_arr, dtype=TS_DTYPE)
        if q_arr.ndim == 0:
            q_arr = np.full(n, q_arr, dtype=QUALITY_DTYPE)
        return cls(ts_arr, pid, np.asarray(value, dtype=VALUE_DTYPE), q_arr)

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls.of([], [], [], [])

    @classmethod
    def concat(cls, batches: list[ReadingBatch]) -> ReadingBatch:
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.point_id for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.quality for b in batches]),
        )


@dataclass(frozen=True, slots=True)
class PointInfo:
    """Static description of one point, registered with the store to get its integer id."""

    name: str  # "device.point", unique per gateway
    device: str
    point: str
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One event (trip, alarm, control, SOE, audit, gap). ``priority`` 0 is never evicted; larger = less vital."""

    ts: int  # UTC epoch ns
    kind: str  # "alarm", "control", "comm", "audit", ...
    message: str
    priority: int = 2
    device: str = ""
    point: str = ""
    data: str = ""  # JSON text, optional


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """One input record the gateway refused to store as readings (a sensor message that failed validation).

    Kept verbatim in the store's ``quarantine`` table, never silently dropped (see docs/analytics.md).
    """

    ts: int  # UTC epoch ns when the gateway received it
    device: str  # the device (sensor id) the record names, "" when it names none
    topic: str  # where it came from (MQTT topic)
    reason: str  # short machine-readable cause, e.g. "malformed-json", "out-of-range"
    detail: str  # human-readable detail (field, value, limit)
    payload: bytes  # the raw record as received

"""Pure tests of read planning, vectorised decoding and write encoding (no I/O)."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest

from gateway.config import DTYPE_WORDS, DeviceConfig, PointConfig
from protocols.modbus import (
    MalformedResponse,
    ReadBlock,
    decode_block,
    encode_value,
    exception_quality,
    plan_device,
    plan_reads,
    requests_per_second,
)

REG_TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]
FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
SAMPLES: dict[str, list[float]] = {
    "int16": [-32768, -1, 0, 1234, 32767],
    "uint16": [0, 1, 0xBEEF, 65535],
    "int32": [-(2**31), -123456789, 0, 0x12345678, 2**31 - 1],
    "uint32": [0, 0xDEADBEEF, 2**32 - 1],
    "float32": [-1.5, 0.0, 3.25, 1e10, -2.5e-3],
    "float64": [-1e300, 0.0, math.pi, 123456.789e-9],
}


def words_via_struct(value: float, dtype: str, word_order: str, byte_order: str) -> list[int]:
    """Independent reference encoding with ``struct``: wire words for each order combination."""
    be = struct.pack(">" + FMT[dtype], value)
    words = [be[i:i + 2] for i in range(0, len(be), 2)]  # most significant word first
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def dev(**kw: object) -> DeviceConfig:
    return DeviceConfig(name="d", **kw)  # type: ignore[arg-type]


def hp(name: str, address: int, type: str = "uint16", **kw: object) -> PointConfig:
    return PointConfig(name=name, kind="holding", address=address, type=type, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "word_order", "byte_order"),
    list(itertools.product(REG_TYPES, ["big", "little"], ["big", "little"])),
)
def test_decode_matches_struct(dtype: str, word_order: str, byte_order: str) -> None:
    values = SAMPLES[dtype]
    w = DTYPE_WORDS[dtype]
    points = [hp(f"p{i}", 3 + i * w, dtype, word_order=word_order, byte_order=byte_order)
              for i in range(len(values))]
    (block,) = plan_reads(dev(), points)
    regs = [0xAAAA] * 3 + [x for v in values for x in words_via_struct(v, dtype, word_order, byte_order)]
    got = block.decode(regs[block.address:block.address + block.count])
    expect = [struct.unpack(">" + FMT[dtype], struct.pack(">" + FMT[dtype], v))[0] for v in values]
    np.testing.assert_array_equal(got, np.array(expect, dtype=np.float64))
    # the inverse (writes) produces the same wire words
    for v in values:
        assert encode_value(hp("x", 0, dtype, word_order=word_order, byte_order=byte_order), v) == \
            words_via_struct(v, dtype, word_order, byte_order)


def test_mixed_block_scale_offset_and_bool_registers() -> None:
    pts = [
        hp("a", 0, "int16", scale=0.1),
        hp("b", 1, "float32", word_order="little"),
        hp("c", 3, "bool"),
        hp("d", 4, "uint32", byte_order="little", scale=2.0, offset=-1.0),
        hp("e", 6, "uint16"),
    ]
    (block,) = plan_reads(dev(), pts)
    regs = (words_via_struct(-50, "int16", "big", "big") + words_via_struct(2.5, "float32", "little", "big")
            + [7] + words_via_struct(100000, "uint32", "big", "little") + [42])
    out = dict(zip([p.name for p in block.points], block.decode(regs), strict=True))
    assert out == pytest.approx({"a": -5.0, "b": 2.5, "c": 1.0, "d": 199999.0, "e": 42.0})


def test_decode_bits() -> None:
    pts = [PointConfig(name=f"c{i}", kind="coil", address=a) for i, a in enumerate([5, 7, 8, 20])]
    (block,) = plan_reads(dev(max_gap=20), pts)
    assert (block.address, block.count, block.function_code) == (5, 16, 1)
    bits = [False] * 16
    bits[0] = bits[3] = bits[15] = True
    np.testing.assert_array_equal(block.decode(bits), [1.0, 0.0, 1.0, 1.0])


def test_short_response_is_malformed() -> None:
    (block,) = plan_reads(dev(), [hp("a", 0, "float32")])
    with pytest.raises(MalformedResponse):
        decode_block(block, [1])


def test_plan_contiguous_only_by_default() -> None:
    blocks = plan_reads(dev(), [hp("a", 0), hp("b", 1), hp("c", 3), hp("d", 4, "float32")])
    assert [(b.address, b.count) for b in blocks] == [(0, 2), (3, 3)]


def test_plan_bridges_gaps_up_to_max_gap() -> None:
    pts = [hp("a", 0), hp("b", 5), hp("c", 11)]
    assert [(b.address, b.count) for b in plan_reads(dev(max_gap=4), pts)] == [(0, 6), (11, 1)]
    assert [(b.address, b.count) for b in plan_reads(dev(max_gap=5), pts)] == [(0, 12)]


def test_plan_respects_register_limit_and_never_splits_values() -> None:
    # 40 float64 (4 words each) contiguous = 160 registers: must become 2 requests of whole values
    pts = [hp(f"f{i}", 4 * i, "float64") for i in range(40)]
    blocks = plan_reads(dev(), pts)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 36)]
    assert all(b.count <= 125 for b in blocks)
    for b in blocks:  # every value lies entirely inside its block
        assert all(b.address <= p.address and p.address + 4 <= b.address + b.count for p in b.points)
    assert sum(len(b.points) for b in blocks) == 40
    small = plan_reads(dev(max_registers_per_request=10), [hp(f"x{i}", i) for i in range(25)])
    assert [(b.address, b.count) for b in small] == [(0, 10), (10, 10), (20, 5)]
    # a configured limit above the protocol maximum is clamped to 125
    big = plan_reads(dev(max_registers_per_request=500), [hp(f"x{i}", i) for i in range(300)])
    assert [b.count for b in big] == [125, 125, 50]


def test_plan_bit_limit_and_tables_are_separate() -> None:
    pts = [PointConfig(name=f"c{i}", kind="coil", address=i) for i in range(2500)]
    pts += [PointConfig(name=f"d{i}", kind="discrete", address=i) for i in range(3)]
    pts += [PointConfig(name="i0", kind="input", address=0), hp("h0", 0)]
    blocks = plan_reads(dev(), pts)
    assert [(b.kind, b.address, b.count) for b in blocks] == [
        ("coil", 0, 2000), ("coil", 2000, 500), ("discrete", 0, 3), ("holding", 0, 1), ("input", 0, 1)]
    assert [b.function_code for b in blocks] == [1, 1, 2, 3, 4]
    limited = plan_reads(dev(max_bits_per_request=100), pts[:250])
    assert [b.count for b in limited] == [100, 100, 50]


def test_plan_overlapping_points_share_a_block() -> None:
    blocks = plan_reads(dev(), [hp("both", 0, "uint32"), hp("lo", 1), hp("hi", 0)])
    assert [(b.address, b.count, len(b.points)) for b in blocks] == [(0, 2, 3)]


def test_plan_rejects_value_larger_than_limit() -> None:
    with pytest.raises(ValueError, match="max_registers_per_request"):
        plan_reads(dev(max_registers_per_request=2), [hp("f", 0, "float64")])


def test_plan_device_groups_by_period_and_requests_per_second() -> None:
    d = DeviceConfig(name="d", points=(
        hp("a", 0, period_s=1.0), hp("b", 1, period_s=1.0), hp("c", 50, period_s=1.0),
        hp("s", 10, period_s=10.0),
        PointConfig(name="k", kind="coil", address=0, period_s=0.5),
    ))
    plan = plan_device(d)
    assert sorted(plan) == [0.5, 1.0, 10.0]
    assert [len(plan[p]) for p in sorted(plan)] == [1, 2, 1]
    assert requests_per_second(d) == pytest.approx(1 / 0.5 + 2 / 1.0 + 1 / 10.0)


def test_encode_scaling_rounding_and_range() -> None:
    p = hp("sp", 0, "int16", scale=0.1, writable=True)
    assert encode_value(p, -12.34) == [(-123) & 0xFFFF]
    assert encode_value(hp("b", 0, "bool"), 1.0) == [1]
    with pytest.raises(ValueError):
        encode_value(hp("u", 0, "uint16"), -1)
    with pytest.raises(ValueError):
        encode_value(hp("u", 0, "int32"), 2**31)


def test_exception_quality_mapping() -> None:
    from gateway.model import Q

    assert exception_quality(2) == Q.INVALID | Q.BAD_REFERENCE
    assert exception_quality(3) == Q.INVALID | Q.INCONSISTENT
    assert exception_quality(4) == Q.INVALID | Q.FAILURE
    assert exception_quality(6) == Q.QUESTIONABLE | Q.OLD_DATA
    assert exception_quality(0x0B) == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE


def test_readblock_is_reusable_and_vectorised() -> None:
    pts = [hp(f"p{i}", 2 * i, "float32") for i in range(60)]
    (block,) = plan_reads(dev(), pts)
    assert isinstance(block, ReadBlock) and len(block.groups) == 1  # one gather for all 60 values
    regs = [x for i in range(60) for x in words_via_struct(float(i), "float32", "big", "big")]
    np.testing.assert_array_equal(block.decode(np.array(regs, dtype=np.uint16)), np.arange(60.0))

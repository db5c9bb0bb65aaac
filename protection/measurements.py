"""The measurement frame every protection element reads, and the validity bits that block elements.

One :class:`Measurements` object is owned by the cycle (later: the real-time process) and overwritten in place
each cycle; elements only read it. Units (the contract):

- ``ia``, ``ib``, ``ic``: phase currents, A RMS, primary.
- ``i_n``: residual (neutral) current, A RMS, primary: measured (core-balance CT or residual CT connection).
- ``va``, ``vb``, ``vc``: phase-to-neutral voltages, **kV** RMS, primary (as the feeder relays report them).
- ``f``: system frequency, Hz.
- ``valid``: one bit per quantity (``V_IA`` … ``V_F``); a cleared bit means invalid or stale, and every element
  that needs that quantity is BLOCKED (see ``docs/protection.md``).

No import-time side effects. Nothing here allocates per cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.model import VALIDITY_MASK, Q

V_IA: Final = 1 << 0
V_IB: Final = 1 << 1
V_IC: Final = 1 << 2
V_IN: Final = 1 << 3
V_VA: Final = 1 << 4
V_VB: Final = 1 << 5
V_VC: Final = 1 << 6
V_F: Final = 1 << 7

V_PHASE_I: Final = V_IA | V_IB | V_IC
V_PHASE_V: Final = V_VA | V_VB | V_VC
V_ALL: Final = V_PHASE_I | V_IN | V_PHASE_V | V_F

# Quality bits that make a measurement unusable for protection even when the validity field says "good".
_BLOCKING_DETAIL: Final = int(Q.OLD_DATA | Q.FAILURE | Q.OVERFLOW | Q.OPERATOR_BLOCKED | Q.INCONSISTENT)


def usable(quality: int) -> bool:
    """True when a point with this quality word (``gateway.model.Q`` layout) may feed a protection element.

    Usable means validity *good* and none of old-data, failure, overflow, operator-blocked, inconsistent.
    Questionable values are not usable: protection does not trip on guesses.
    """
    return (quality & VALIDITY_MASK) == 0 and not (quality & _BLOCKING_DETAIL)


class Measurements:
    """One cycle's measurements (units above). Mutable on purpose: the cycle overwrites the fields in place."""

    __slots__ = ("f", "i_n", "ia", "ib", "ic", "sample_ns", "va", "valid", "vb", "vc")

    def __init__(
        self,
        ia: float = 0.0,
        ib: float = 0.0,
        ic: float = 0.0,
        i_n: float = 0.0,
        va: float = 0.0,
        vb: float = 0.0,
        vc: float = 0.0,
        f: float = 50.0,
        valid: int = V_ALL,
    ) -> None:
        self.ia = ia  # A RMS
        self.ib = ib  # A RMS
        self.ic = ic  # A RMS
        self.i_n = i_n  # A RMS, residual
        self.va = va  # kV RMS, phase-to-neutral
        self.vb = vb  # kV RMS, phase-to-neutral
        self.vc = vc  # kV RMS, phase-to-neutral
        self.f = f  # Hz
        self.valid = valid  # V_* bits; cleared bit = invalid/stale -> elements needing it are blocked
        # Monotonic ns the values were measured (set by sources that know it, e.g. a polled IED: when the request
        # went out); -1 = the cycle's own time. The cycle steps the elements at this time (see protection.cycle).
        self.sample_ns = -1

    def set_currents(self, ia: float, ib: float, ic: float, i_n: float = 0.0) -> None:
        self.ia = ia
        self.ib = ib
        self.ic = ic
        self.i_n = i_n

    def set_voltages(self, va: float, vb: float, vc: float) -> None:
        self.va = va
        self.vb = vb
        self.vc = vc

    def set_values(self, v: Sequence[float]) -> None:
        """Copy the 8 quantities in channel order (ia ib ic in va vb vc f), as sources keep them. Allocates nothing."""
        self.ia = v[0]
        self.ib = v[1]
        self.ic = v[2]
        self.i_n = v[3]
        self.va = v[4]
        self.vb = v[5]
        self.vc = v[6]
        self.f = v[7]

    def __repr__(self) -> str:
        return (
            f"Measurements(ia={self.ia}, ib={self.ib}, ic={self.ic}, i_n={self.i_n}, va={self.va}, vb={self.vb}, "
            f"vc={self.vc}, f={self.f}, valid=0x{self.valid:02x})"
        )

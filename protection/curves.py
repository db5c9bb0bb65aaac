"""Inverse-time characteristics (IEC 60255-151 and IEEE C37.112-2018) and their reset (disk emulation).

Operate time at multiple ``M = I / Is`` of the current setting:

- IEC:  ``t(M) = TMS * k / (M**alpha - 1)``
- IEEE: ``t(M) = TD * (A / (M**p - 1) + B)``
- reset (disk emulation, IEEE curves): ``tr(M) = TD * tr / (1 - M**2)`` for ``M < 1``

Both families are one formula ``t = mult * (k / (M**alpha - 1) + b)`` with ``b = 0`` for IEC. Sources and a table
of the constants: ``docs/protection.md``. No import-time side effects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True, slots=True)
class Curve:
    name: str  # setting value, e.g. "IEC_SI"
    family: Literal["IEC", "IEEE"]  # IEC curves take TMS, IEEE curves take TD
    k: float  # IEC k, IEEE A (s)
    alpha: float  # IEC alpha, IEEE p
    b: float  # IEEE B (s); 0 for IEC
    tr: float  # IEEE reset constant tr (s) for disk emulation; 0 = none defined


CURVES: Final[dict[str, Curve]] = {
    c.name: c
    for c in (
        Curve("IEC_SI", "IEC", 0.14, 0.02, 0.0, 0.0),  # standard (normal) inverse, IEC curve A
        Curve("IEC_VI", "IEC", 13.5, 1.0, 0.0, 0.0),  # very inverse, IEC curve B
        Curve("IEC_EI", "IEC", 80.0, 2.0, 0.0, 0.0),  # extremely inverse, IEC curve C
        Curve("IEC_LTI", "IEC", 120.0, 1.0, 0.0, 0.0),  # long-time inverse
        Curve("IEC_STI", "IEC", 0.05, 0.04, 0.0, 0.0),  # short-time inverse (vendor curve, same formula)
        Curve("IEEE_MI", "IEEE", 0.0515, 0.02, 0.1140, 4.85),  # moderately inverse
        Curve("IEEE_VI", "IEEE", 19.61, 2.0, 0.491, 21.6),  # very inverse
        Curve("IEEE_EI", "IEEE", 28.2, 2.0, 0.1217, 29.1),  # extremely inverse
    )
}

CurveName = Literal["IEC_SI", "IEC_VI", "IEC_EI", "IEC_LTI", "IEC_STI", "IEEE_MI", "IEEE_VI", "IEEE_EI"]


def operate_time(curve: Curve, m: float, mult: float) -> float:
    """Operate time in s at constant multiple ``m`` of the setting; ``inf`` for ``m <= 1``."""
    if m <= 1.0:
        return math.inf
    return mult * (curve.k / (m**curve.alpha - 1.0) + curve.b)


def reset_time(curve: Curve, m: float, mult: float) -> float:
    """Disk-emulation time in s to reset from full travel at constant ``m < 1``; ``inf`` for ``m >= 1``."""
    if m >= 1.0 or curve.tr <= 0.0:
        return math.inf
    return mult * curve.tr / (1.0 - m * m)

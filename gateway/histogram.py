"""A fixed-bucket histogram of durations for the Prometheus ``/metrics`` (per-device poll latency).

Bins are fixed (:data:`LATENCY_EDGES_S`), so recording is one ``bisect`` and an integer increment: no object per
observation, bounded memory whatever the poll rate. Owned by one runner, on the event loop thread.
"""

from __future__ import annotations

import bisect
from typing import Any, Final

# Upper bounds in seconds: a fast Modbus TCP answer is ~1 ms, an RTU line at 9600 Bd 20-100 ms, a slow RTU or a
# DNP3 integrity poll up to seconds.
LATENCY_EDGES_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_EDGES_NS: Final = tuple(round(e * 1e9) for e in LATENCY_EDGES_S)


class LatencyHistogram:
    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_EDGES_NS) + 1)  # one bin per edge (<= edge) and one above the last
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect.bisect_left(_EDGES_NS, ns)] += 1
        self.sum_ns += ns

    def snapshot(self) -> dict[str, Any]:
        """For status(): ``{"edges_s": [...], "counts": [per bin], "sum_s": total}`` (JSON-safe)."""
        return {"edges_s": list(LATENCY_EDGES_S), "counts": list(self.counts), "sum_s": self.sum_ns / 1e9}

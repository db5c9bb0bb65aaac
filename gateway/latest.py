"""Latest value of every point, kept in numpy arrays indexed by point id (no object per point).

Written by the event-loop thread (runners' emit); read by the panel on the same thread. Not thread-safe.
"""

from __future__ import annotations

import numpy as np

from gateway.model import ReadingBatch


class LatestTable:
    def __init__(self, max_id: int) -> None:
        n = max_id + 1
        self.ts = np.zeros(n, dtype=np.int64)  # UTC ns of the latest reading (0 = never)
        self.value = np.full(n, np.nan, dtype=np.float64)
        self.quality = np.zeros(n, dtype=np.uint16)
        self.received_ns = np.zeros(n, dtype=np.int64)  # gateway wall time the latest reading was emitted

    def grow(self, max_id: int) -> None:
        """Make room for point ids up to ``max_id`` (a config reload added points); existing entries are kept.
        Loop thread (the only writer)."""
        n = max_id + 1
        if n <= len(self.ts):
            return
        extra = n - len(self.ts)
        self.ts = np.concatenate([self.ts, np.zeros(extra, dtype=np.int64)])
        self.value = np.concatenate([self.value, np.full(extra, np.nan, dtype=np.float64)])
        self.quality = np.concatenate([self.quality, np.zeros(extra, dtype=np.uint16)])
        self.received_ns = np.concatenate([self.received_ns, np.zeros(extra, dtype=np.int64)])

    def update(self, batch: ReadingBatch, now_ns: int) -> None:
        """Take the batch's rows; for a point appearing twice the later row wins."""
        if len(batch) == 0:
            return
        pid = batch.point_id
        ok = (pid >= 0) & (pid < len(self.ts))
        if not ok.all():
            pid = pid[ok]
            batch = ReadingBatch(batch.ts[ok], pid, batch.value[ok], batch.quality[ok])
        self.ts[pid] = batch.ts
        self.value[pid] = batch.value
        self.quality[pid] = batch.quality
        self.received_ns[pid] = now_ns

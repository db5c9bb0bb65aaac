"""What every runner shares: the buffer between a runner and the store, back-off delays, old-data quality.

:class:`EmitBuffer` keeps batches a runner could not hand to the store yet (the store queue was full) and offers
them again in order: nothing is dropped, nothing overtakes. Owned by one runner; used on its event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.model import Q, ReadingBatch

__all__ = ["EMIT_RETRY_S", "STOP_FLUSH_S", "EmitBuffer", "backoff_delay", "old_data_quality"]

EMIT_RETRY_S: Final = 0.02  # delay between attempts to hand a batch to a full store queue
STOP_FLUSH_S: Final = 2.0  # on stop, how long to keep offering the final batches
_OLD: Final = int(Q.OLD_DATA)
_VALIDITY: Final = 0x0003

log = logging.getLogger(__name__)


def old_data_quality(q: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    """``q`` with OLD_DATA set; a good validity becomes questionable (invalid stays invalid)."""
    out = q | np.uint16(_OLD)
    good = (out & np.uint16(_VALIDITY)) == 0
    out[good] |= np.uint16(int(Q.QUESTIONABLE))
    return out


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (1-based): ``min_s·2^(attempt−1)`` capped at ``max_s``, with
    jitter in [50 %, 100 %] so many links that dropped together do not retry together."""
    return min(max_s, min_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


class EmitBuffer:
    """Batches waiting for the store, in order. ``emit`` is the store's non-blocking offer (False = full)."""

    def __init__(self, emit: Callable[[ReadingBatch], bool], name: str) -> None:
        self._emit = emit
        self._name = name
        self._pending: deque[ReadingBatch] = deque()

    def add(self, batch: ReadingBatch | None) -> None:
        if batch is not None and len(batch):
            self._pending.append(batch)

    def __len__(self) -> int:
        return sum(len(b) for b in self._pending)

    def flush(self) -> bool:
        """Offer pending batches in order (merged into one); True when nothing is left pending."""
        if len(self._pending) > 1:
            merged = ReadingBatch.concat(list(self._pending))
            self._pending.clear()
            self._pending.append(merged)
        while self._pending:
            if not self._emit(self._pending[0]):
                return False
            self._pending.popleft()
        return True

    async def drain(self, timeout_s: float = STOP_FLUSH_S) -> None:
        """On stop: keep offering for up to ``timeout_s``; say how many readings the store did not take."""
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            await asyncio.sleep(EMIT_RETRY_S)
        if self._pending:
            log.warning("%s: store did not take the final %d readings", self._name, len(self))

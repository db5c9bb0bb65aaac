"""Child process of test_enospc.py: runs a Store on a small tmpfs that another "program" fills up.

Usage: ``python -m tests.storefwd.enospc_child DIR BATCH`` where DIR is a freshly mounted small tmpfs and
BATCH the rows per batch (small batches go through DuckDB's WAL; large ones are written straight into the
file by a checkpoint, whose failure invalidates the database). Prints one JSON line with what it observed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from gateway.model import ReadingBatch
from storefwd import Store, StoreError
from storefwd.retention import RetentionPolicy

T0 = 1_767_225_600 * 10**9


def rows(start: int, n: int) -> ReadingBatch:
    v = np.arange(start, start + n, dtype=np.float64)
    return ReadingBatch.of(T0 + v.astype(np.int64), np.ones(n, np.int32), v, 0)


def wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(json.dumps({"ok": False, "why": f"timed out waiting for {what}"}))
        time.sleep(0.02)


def main() -> int:
    d = Path(sys.argv[1])
    size = int(sys.argv[2])
    policy = RetentionPolicy(budget_bytes=1 << 40, reserve_free_bytes=0, check_interval_s=3600.0)
    out: dict[str, object] = {}
    with Store(d / "gw.duckdb", commit_interval_ms=20, checkpoint_threshold_mb=1, retention_policy=policy) as s:
        total = 0
        s.offer(rows(0, 10_000))
        total = 10_000
        s.flush()
        wait(lambda: s.stats()["fs_free_bytes"] > 0, 30, "the writer's first usage measurement")
        # another program fills the disk
        filler = d / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for _ in range(40):  # the gateway keeps polling: batches keep coming
            if s.offer(rows(total, size)):
                total += size
            if s.stats()["disk_full"]:
                break
        wait(lambda: s.stats()["disk_full"] == 1, 60, "the store to report a full disk")
        out["disk_full_seen"] = True
        out["accepts_offers_while_full"] = s.offer(rows(total, 10))
        if out["accepts_offers_while_full"]:
            total += 10
        try:
            s.flush(timeout=0.5)
            out["flush_while_full"] = "returned"
        except StoreError as e:
            out["flush_while_full"] = type(e).__name__
        os.remove(filler)  # space is back
        last = s.flush(timeout=60)
        got = s.read_after("check", 0, 10**7)
        seqs = got.column("seq").to_numpy()
        values = got.column("value").to_numpy()
        st = s.stats()
        alarms = [e["message"] for e in s.events_after(0, 100).to_pylist() if e["kind"] == "alarm"]
        out.update({
            "offered": total, "last_seq": last, "rows": int(got.num_rows),
            "contiguous": bool(len(seqs) and (np.diff(seqs) == 1).all() and seqs[0] == 1),
            "values_match": bool((values == np.arange(len(values))).all()),
            "disk_full_after": st["disk_full"], "episodes": st["disk_full_episodes"],
            "write_errors": st["write_errors"], "alarms": alarms,
        })  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

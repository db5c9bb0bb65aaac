"""ENOSPC while writing: the store stays up, says so, keeps every queued reading and recovers.

The store runs in a child process inside its own mount namespace (``unshare``; root not needed where user
namespaces are allowed) on a 6 MiB tmpfs that the child then fills with another file, the way a log or a
core dump fills a gateway's disk. See tests/storefwd/enospc_child.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("batch_rows", [5000, 200_000], ids=["wal-commits", "checkpoint-commits"])
def test_disk_full_keeps_the_store_alive_and_loses_nothing(tmp_path: Path, batch_rows: int) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=6m tmpfs {mount} && "
              f"exec {sys.executable} -m tests.storefwd.enospc_child {mount} {batch_rows}")  # fmt: skip
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["disk_full_seen"] is True  # stats()["disk_full"] went to 1 while the disk was full
    assert out["flush_while_full"] in ("StoreWriteError", "StoreTimeout")  # callers are told, not lied to
    assert out["rows"] == out["offered"] == out["last_seq"]  # every accepted reading committed once...
    assert out["contiguous"] and out["values_match"]  # ...in order, with its own value
    assert out["disk_full_after"] == 0 and out["episodes"] == 1
    assert any("could not write" in a and "disk full" in a for a in out["alarms"])
    assert "ALARM disk full" in proc.stderr  # the journal says it when it happens


class _FailingCommit:
    """Stands in for the writer's DuckDB connection: the next COMMIT fails with a fatal error, either after
    the real COMMIT went through (``committed``) or instead of it — the two cases a crash leaves open."""

    def __init__(self, real: duckdb.DuckDBPyConnection, committed: bool) -> None:
        self._real = real
        self._committed = committed
        self.failed = False

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            if self._committed:
                self._real.execute(sql)
            raise duckdb.FatalException("database has been invalidated because of a previous fatal error")
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("committed", [True, False], ids=["commit-reached-wal", "commit-lost"])
def test_fatal_error_at_commit_neither_duplicates_nor_loses(tmp_path: Path, committed: bool) -> None:
    from storefwd import Store
    from tests.storefwd.helpers import batch

    with Store(tmp_path / "gw.duckdb", commit_interval_ms=5) as s:
        s.offer(batch(0, 100))
        s.flush()
        fake = _FailingCommit(s._wcon, committed)
        s._wcon = fake  # type: ignore[assignment]  # the writer reopens and replaces it after the failure
        s.offer(batch(100, 50))
        assert s.flush() == 150
        assert fake.failed and s._wcon is not fake
        rows = s.read_after("cloud", 0, 1000)
        assert rows.column("seq").to_pylist() == list(range(1, 151))  # once each, in order
        assert rows.column("value").to_pylist() == [float(v) for v in range(150)]
        assert s.stats()["write_errors"] == 1
        s.offer(batch(150, 1))
        assert s.flush() == 151

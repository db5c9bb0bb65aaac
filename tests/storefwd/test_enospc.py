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

"""Crash safety: SIGKILL a writer process mid-stream, reopen, check every committed row (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storefwd import Store, StoreLocked

ROOT = Path(__file__).resolve().parents[2]


def spawn(db: Path, mode: str, log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("a") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "tests.storefwd.crash_writer", str(db), mode],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def read_line(proc: subprocess.Popen[str], log: Path) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"child exited ({proc.returncode}) early:\n{log.read_text()}")
    return line.strip()


@pytest.mark.slow
def test_sigkill_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    log = tmp_path / "child.log"
    for round_ in range(3):  # kill the same file three times, at different points
        proc = spawn(db, "write", log)
        try:
            reported = [int(read_line(proc, log)) for _ in range(4 + 3 * round_)]
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            assert proc.stdout is not None and proc.stdin is not None
            proc.stdout.close()
            proc.stdin.close()
        committed = reported[-1]
        with Store(db) as s:
            last = s.last_seq()
            assert last >= committed
            t = s.read_after("check", 0, 10**9)
            seq = t.column("seq").to_numpy()
            np.testing.assert_array_equal(seq, np.arange(1, last + 1))  # contiguous, no duplicates
            np.testing.assert_array_equal(t.column("value").to_numpy(), seq.astype(np.float64))
            assert s.watermark("cloud") >= committed
            messages = s.events_after(0, 10**6).column("message").to_pylist()
            assert str(committed) in messages
            assert s.stats()["rows"] == last


def test_second_process_gets_store_locked(tmp_path: Path) -> None:
    db = tmp_path / "locked.duckdb"
    log = tmp_path / "child.log"
    proc = spawn(db, "hold", log)
    try:
        assert read_line(proc, log) == "open"
        with pytest.raises(StoreLocked) as ei:
            Store(db)
        assert str(db) in str(ei.value)
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.wait(30) == 0, log.read_text()
        proc.stdout.close()
    with Store(db) as s:  # released
        assert s.last_seq() == 0

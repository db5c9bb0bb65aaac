"""A damaged store file at start: moved aside, a new store started above the old seqs, an alarm raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from storefwd import Store, StoreCorrupt
from tests.storefwd.helpers import batch

FLOOR = 1_795_000_000_000_000  # what the gateway passes: epoch microseconds when the file is created
CLOCK = 1_795_000_000 * 10**9
STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(CLOCK / 1e9))
ROOT = Path(__file__).resolve().parents[2]
# a writer killed without close(): its last commits are only in the WAL
_KILLED_WRITER = """
import os, sys
from pathlib import Path
from storefwd import Store
from tests.storefwd.helpers import batch
s = Store(Path(sys.argv[1]), commit_interval_ms=5, checkpoint_threshold_mb=1000)
start = s.last_seq()
for i in range(20):
    s.offer(batch(start + i * 50, 50))
    s.flush()
os._exit(0)
"""


def written(path: Path, rows: int = 5000) -> int:
    """A store file with ``rows`` readings (and a WAL that is not checkpointed: killed writer)."""
    with Store(path, commit_interval_ms=5) as s:
        s.offer(batch(0, rows))
        return s.flush()


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def garbage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 997):
        data[i] ^= 0xFF
    data[:16] = b"\x00" * 16  # the header too
    path.write_bytes(bytes(data))


def killed_writer(path: Path) -> Path:
    """1000 more readings committed by a writer killed before it checkpointed: they are only in the WAL."""
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=True, cwd=ROOT, timeout=60)
    return path.with_name(path.name + ".wal")


def bad_wal(path: Path) -> None:
    """A WAL with one flipped bit in the middle: DuckDB's checksum refuses it."""
    wal = killed_writer(path)
    data = bytearray(wal.read_bytes())
    data[len(data) // 2] ^= 0x01
    wal.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, garbage, bad_wal], ids=["truncated", "garbage", "unreadable-wal"])
def test_damaged_file_is_moved_aside_and_a_new_store_starts(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    path = tmp_path / "gw.duckdb"
    written(path)
    damage(path)
    original = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StoreCorrupt):  # the default: refuse, touch nothing
        Store(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == original

    with Store(path, on_damage="move_aside", seq_floor=FLOOR, clock_ns=lambda: CLOCK) as s:
        assert s.damaged is not None
        moved = [Path(m) for m in s.damaged["moved_to"]]
        assert moved[0].name == f"gw.duckdb.damaged-{STAMP}"
        assert {m.name.removeprefix(f"gw.duckdb.damaged-{STAMP}") or "db" for m in moved} == {
            n.removeprefix("gw.duckdb") or "db" for n in original if not n.endswith(".seq")  # the mark stays
        }
        for m in moved:  # kept byte for byte for recovery
            assert m.read_bytes() == original[m.name.replace(f".damaged-{STAMP}", "")]
        alarm = s.events_after(0, 10).to_pylist()
        assert [(a["kind"], a["priority"]) for a in alarm] == [("alarm", 0)]
        assert "damaged" in alarm[0]["message"] and str(moved[0]) in alarm[0]["message"]
        assert json.loads(alarm[0]["data"])["moved_to"] == [str(m) for m in moved]
        assert alarm[0]["seq"] == FLOOR + 1  # event seqs also start above the floor
        s.offer(batch(0, 10))
        assert s.flush() == FLOOR + 10  # new seqs never collide with those the old file had sent
        assert s.read_after("cloud", 0, 100).column("seq").to_pylist() == list(range(FLOOR + 1, FLOOR + 11))
    with Store(path, on_damage="move_aside", seq_floor=FLOOR + 10**9) as s:  # a healthy file stays
        assert s.damaged is None and s.last_seq() == FLOOR + 10


def test_a_second_damage_the_same_second_gets_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    names = []
    for _ in range(2):
        written(path, 100)
        truncate(path)
        with Store(path, on_damage="move_aside", clock_ns=lambda: CLOCK) as s:
            assert s.damaged is not None
            names.append(Path(s.damaged["moved_to"][0]).name)
        os.remove(path)
    assert names == [f"gw.duckdb.damaged-{STAMP}", f"gw.duckdb.damaged-{STAMP}-1"]


def test_moved_aside_file_can_be_read_for_recovery_when_only_the_wal_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    with Store(path) as s:  # close() checkpoints: these rows are in the main file
        s.offer(batch(0, 1000))
        s.flush()
    bad_wal(path)  # 1000 more, only in the (then damaged) WAL
    with Store(path, on_damage="move_aside", seq_floor=FLOOR) as s:
        assert s.damaged is not None
        main = Path(s.damaged["moved_to"][0])
    # the recovery procedure of docs/durability.md: copy the file without its WAL and read it
    rescue = tmp_path / "rescue.duckdb"
    rescue.write_bytes(main.read_bytes())
    with duckdb.connect(str(rescue), read_only=True) as con:
        assert con.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchall() == [(1000, 1, 1000)]


def test_wal_that_lost_its_tail_is_detected_and_the_lost_seqs_recorded(tmp_path: Path) -> None:
    # DuckDB replays a WAL that ends early up to where it ends, without a word; the seq mark tells
    path = tmp_path / "gw.duckdb"
    written(path)
    wal = killed_writer(path)  # seqs 5001..6000 committed, only in the WAL
    assert (tmp_path / "gw.duckdb.seq").read_text().split() == ["6000", "0"]
    data = wal.read_bytes()
    wal.write_bytes(data[: len(data) // 2])
    damaged_wal = wal.read_bytes()
    with Store(path, on_damage="move_aside", clock_ns=lambda: CLOCK) as s:
        kept_rows = s.read_after("cloud", 0, 10**6).num_rows
        assert 5000 <= kept_rows < 6000  # what the WAL still held is kept
        assert s.last_seq() == 6000  # ... and no seq up to the mark is ever used again
        s.offer(batch(0, 1))
        assert s.flush() == 6001
        events = s.events_after(0, 10).to_pylist()
        assert [(e["kind"], e["priority"]) for e in events] == [("alarm", 0), ("gap", 0)]
        info = json.loads(events[1]["data"])
        assert (info["action"], info["seq_from"], info["seq_to"]) == ("lost", kept_rows + 1, 6000)
        assert info["readings"] == 6000 - kept_rows
        kept = Path(info["kept"])
        assert kept.name == f"gw.duckdb.wal.damaged-{STAMP}" and kept.read_bytes() == damaged_wal
    assert not (tmp_path / "gw.duckdb.wal.opening").exists()


def test_a_clean_restart_raises_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gw.duckdb"
    written(path)
    killed_writer(path)
    with Store(path, on_damage="move_aside") as s:
        assert s.damaged is None and s.last_seq() == 6000
        assert s.events_after(0, 10).num_rows == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.duckdb", "gw.duckdb.seq"]


def test_a_new_store_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    # a power cut while DuckDB writes a new file's headers left a file it cannot open (power-cut harness);
    # the store now builds a new file as <name>.creating and renames it into place
    path = tmp_path / "gw.duckdb"
    stale = tmp_path / "gw.duckdb.creating"
    stale.write_bytes(b"\0" * 4096)  # what such a cut leaves behind
    with Store(path, on_damage="move_aside", seq_floor=FLOOR) as s:
        assert s.damaged is None and s.last_seq() == FLOOR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.duckdb"]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'reading_seq'").fetchall() == [(str(FLOOR),)]

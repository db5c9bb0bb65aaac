"""Power-cut harness: SIGKILL the real gateway at chosen moments, restart it, repeat; then reconcile what the
simulated devices served, what the store committed and what the receiver landed.

Run as ``python -m hil_tests.powercut --kills N [--seed S]``. Everything is real and on loopback: the gateway
is ``gateway run -c config.toml`` in a child process, the devices are pymodbus servers in a child process
(:mod:`hil_tests.powercut_sim`: every read serves new, traceable values), the receiver is ``gateway receiver``
with its DuckDB backend in a child process, and between the gateway and the receiver a relay in this process
(:mod:`hil_tests.powercut_relay`) sees every upload in flight.

Kill kinds (rotated, each cycle of five in a seeded random order):

- ``random``: at a uniform moment of the run window after the gateway is up;
- ``mid-upload``: while an upload is in flight (request bytes went to the receiver, no answer yet);
- ``after-landing``: the receiver answered, the relay holds the answer back and the gateway is killed: the batch
  landed but was never acknowledged, so it must be sent again and deduplicated;
- ``mid-commit``: the store file or its ``.wal`` is watched every ~1 ms and the gateway is killed the moment
  it changes (a commit or checkpoint being written);
- ``startup``: while the gateway starts: the moment its store file first changes after the spawn (DuckDB
  replaying the WAL and checkpointing it on open), or up to 50 ms later, never after the "started" line.

The first kill is never a startup kill unless ``--kill-new-store`` asks for one that hits the store file's creation.
After every kill the store file (+ ``.wal``) is copied and the COPY is opened to record what is committed; rows
once committed must stay committed and unchanged. At the end the devices are stopped, the gateway runs once more
until the receiver has every committed row, stops cleanly (SIGTERM) and everything is reconciled.

Human progress goes to stderr; the JSON summary is the LAST line of stdout. Exit code 0 only when nothing was
lost, duplicated, invented, phantom or corrupt and the drain completed; 1 when a check failed; 2 when the
harness could not run (e.g. the gateway does not start). See docs/powercut.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import duckdb
import numpy as np

from gateway.demo import wait_listening as demo_wait_listening
from hil_tests.net import free_port
from hil_tests.powercut_relay import Relay
from hil_tests.powercut_rows import (
    Rows,
    StoreCopy,
    compare,
    new_rows,
    read_landed,
    read_redelivered,
    read_store,
    same_reading_twice,
    same_served_value_twice,
    untraceable,
)
from hil_tests.powercut_sim import READINGS, READS, REGS_PER_POINT, open_counters

KINDS: Final = ("random", "mid-upload", "after-landing", "mid-commit", "startup")
NEW_STORE: Final = "new-store"  # --kill-new-store: the first kill, while the gateway creates its store file
GATEWAY_ID: Final = "powercut-gw"
TOKEN: Final = "powercut-token"
SINK: Final = "cloud"
STORE_NAME: Final = "gateway.duckdb"
READY_RE: Final = re.compile(rf"gateway {GATEWAY_ID} started:")
WATCH_POLL_S: Final = 0.001  # mid-commit: how often the store files are looked at


class HarnessError(Exception):
    """The harness could not do its job (a process did not start, a port did not open): exit code 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the harness: stop its children and exit 130."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def log(msg: str) -> None:
    print(f"[powercut {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================================================ options
@dataclass(frozen=True)
class Options:
    kills: int = 10
    seed: int = 1
    workdir: Path | None = None  # None: a new temporary directory
    keep: bool = False  # keep the work directory after a clean run
    devices: int = 4
    points: int = 50  # uint32 points per device (one 2*points-register block)
    period_s: float = 0.1
    run_min_s: float = 0.5  # run window after the gateway is up: the kill moment (or arming) is uniform in it
    run_max_s: float = 3.0
    commit_intervals_ms: tuple[int, ...] = (10, 50, 250, 2000)  # one per run, drawn at random
    checkpoint_mb: float = 0.1  # small: WAL checkpoints (≈ every 3 500 rows) happen within runs too
    batch_size: int = 1000
    max_interval_s: float = 0.2
    trigger_timeout_s: float = 5.0  # an armed kill that does not fire by then is done at once ("fallback")
    start_timeout_s: float = 60.0
    drain_timeout_s: float = 120.0
    start_retries: int = 3  # a gateway that exits by itself during start-up is retried this often
    # False: the first kill is never a startup kill, so the store is created before any kill; True: the first
    # kill hits the gateway while it creates the store file (see docs/powercut.md, "Findings")
    kill_new_store: bool = False


# ================================================================================================ processes
def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    pp = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": root + (os.pathsep + pp if pp else "")}


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    """:func:`gateway.demo.wait_listening`, failing with a HarnessError."""
    try:
        demo_wait_listening(port, proc, what, timeout)
    except RuntimeError as e:
        raise HarnessError(str(e)) from None


def stop_child(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
    return proc.returncode


class GatewayProcess:
    """One ``gateway run`` child; its stderr is copied to the log file and scanned for the "started" line."""

    def __init__(self, config: Path, log_file: IO[str], run: int) -> None:
        self.spawned = time.monotonic()
        self.ready = threading.Event()
        self.ready_at = 0.0
        self.exited = threading.Event()
        self._log = log_file
        self._log.write(f"===== run {run} =====\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            python_cmd("-m", "gateway.cli", "run", "-c", str(config)),
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="powercut-gwlog", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self._log.write(line)
            if not self.ready.is_set() and READY_RE.search(line):
                self.ready_at = time.monotonic()
                self.ready.set()
        self._log.flush()
        self.exited.set()

    def kill(self) -> None:
        """SIGKILL now (idempotent; a process that already exited is left alone)."""
        with contextlib.suppress(ProcessLookupError):
            if self.proc.returncode is None:
                os.kill(self.pid, signal.SIGKILL)

    def wait_ready(self, timeout: float) -> bool:
        """True once "started" was logged; False if the process exited first. HarnessError on timeout."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.exited.is_set() or self.proc.poll() is not None:
                return self.ready.is_set()
            if time.monotonic() > deadline:
                raise HarnessError(f"gateway did not start within {timeout:.0f} s")
        return True

    def finish(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return rc


# ================================================================================================ run state
@dataclass
class KillRecord:
    n: int
    kind: str
    fired: bool  # the trigger happened (False: fallback kill when the trigger timed out)
    run_s: float  # from "started" (or spawn, for startup kills) to the kill
    detail: str = ""  # startup kills: "at WAL replay" or "no WAL"
    rows: int = 0
    max_seq: int = 0
    watermark: int = 0
    fingerprint: int = 0
    served_readings: int = 0
    uncommitted: int = 0  # served readings not committed as fresh rows, cumulative
    error: str = ""


@dataclass
class State:
    ever: Rows = field(default_factory=Rows.empty)  # first committed version of every seq seen in a snapshot
    last: Rows = field(default_factory=Rows.empty)  # the latest snapshot
    last_watermark: int = 0
    rewritten: int = 0  # rows of an earlier snapshot missing or changed in a later one
    watermark_regressions: int = 0
    ack_ahead: int = 0  # watermark above what the receiver had landed at that moment
    corrupt: list[str] = field(default_factory=list)
    points: dict[int, str] = field(default_factory=dict)
    kills: list[KillRecord] = field(default_factory=list)
    start_failures: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        if opts.workdir is None:
            self.work = Path(tempfile.mkdtemp(prefix="powercut-"))
        else:
            self.work = opts.workdir.resolve()
            self.work.mkdir(parents=True, exist_ok=True)
        self.data = self.work / "data"
        self.scratch = self.work / "scratch"
        self.data.mkdir(exist_ok=True)
        self.scratch.mkdir(exist_ok=True)
        self.store_path = self.data / STORE_NAME
        self._panel_token: str | None = None  # API token of a viewer account (hil_tests.panel_access)
        self.receiver_db = self.work / "receiver.duckdb"
        self.config_path = self.work / "gateway.toml"
        self.state = State()
        self.sim: subprocess.Popen[bytes] | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.relay: Relay | None = None
        self.gateway: GatewayProcess | None = None
        self.device_ports: list[int] = []
        self.receiver_port = 0
        self.counters: np.memmap | None = None
        self._logs: list[IO[str]] = []
        self._gateway_log = self._open_log("gateway.log")
        self._kill_log = self._open_log("kills.jsonl")  # one KillRecord per line
        self.runs = 0
        self.startup_s = 1.0  # spawn → "started" of the last gateway that started (startup kills without a WAL)
        self.drain: dict[str, Any] = {}

    # -------------------------------------------------------------------------------------------- set-up
    def _open_log(self, name: str) -> IO[str]:
        f = (self.work / name).open("a", encoding="utf-8")
        self._logs.append(f)
        return f

    def start_world(self) -> None:
        o = self.opts
        sim_log = self._open_log("sim.log")
        counters = self.work / "served.counters"
        self.sim = subprocess.Popen(
            python_cmd("-m", "hil_tests.powercut_sim", "--devices", str(o.devices), "--points", str(o.points),
                       "--counters", str(counters)),
            env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sim_log,
        )
        assert self.sim.stdout is not None
        line = self.sim.stdout.readline()  # the simulator's one line, once every server listens
        if not line:
            raise HarnessError(f"simulated devices did not start (exit {self.sim.wait(10)}); see {self.work}/sim.log")
        self.device_ports = [int(p) for p in json.loads(line)["ports"]]
        self.counters = open_counters(counters, o.devices, create=False)

        rec_log = self._open_log("receiver.log")
        for _ in range(3):  # a free port can be taken between the probe and the bind: try again
            self.receiver_port = free_port()
            self.receiver = subprocess.Popen(
                python_cmd("-m", "gateway.cli", "receiver", "--db", str(self.receiver_db), "--port",
                           str(self.receiver_port), "--token", f"{GATEWAY_ID}={TOKEN}", "--log-level", "warning"),
                env=child_env(), stdin=subprocess.DEVNULL, stdout=rec_log, stderr=rec_log,
            )
            try:
                wait_listening(self.receiver_port, self.receiver, "receiver")
                break
            except HarnessError:
                stop_child(self.receiver)
                self.receiver = None
        if self.receiver is None:
            raise HarnessError(f"the receiver did not start; see {self.work}/receiver.log")
        self.relay = Relay(self.receiver_port)
        self.relay.start()
        log(f"devices on ports {self.device_ports}, receiver :{self.receiver_port}, relay :{self.relay.port}, "
            f"work dir {self.work}")

    def write_config(self, commit_interval_ms: int, panel_port: int = 0) -> None:
        o = self.opts
        assert self.relay is not None
        points = ", ".join(
            f'{{ name = "p{i:03d}", kind = "input", address = {i * REGS_PER_POINT}, type = "uint32", '
            f"period_s = {o.period_s} }}"
            for i in range(o.points)
        )
        links = "".join(
            f"""
[[links]]
name = "link{d}"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port}
connect_timeout_s = 1.0
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[[links.devices]]
name = "dev{d}"
unit_id = 1
timeout_s = 1.0
backoff_min_s = 0.2
backoff_max_s = 1.0
template = "traceable"
"""
            for d, port in enumerate(self.device_ports)
        )
        text = f"""version = 1

[gateway]
id = "{GATEWAY_ID}"
data_dir = "{self.data}"
log_level = "INFO"

[storage]
path = "{STORE_NAME}"
commit_interval_ms = {commit_interval_ms}
checkpoint_threshold_mb = {o.checkpoint_mb}

[panel]
port = {panel_port}
tls = false

[[sinks]]
name = "{SINK}"
url = "http://127.0.0.1:{self.relay.port}/v1/batches"
token = "{TOKEN}"
batch_size = {o.batch_size}
max_interval_s = {o.max_interval_s}
timeout_s = 5.0
retry_max_s = 1.0
progress_log_s = 0

[templates.traceable]
points = [{points}]
{links}"""
        self.config_path.write_text(text, encoding="utf-8")

    # -------------------------------------------------------------------------------------------- gateway runs
    def spawn_gateway(self, commit_interval_ms: int, panel_port: int = 0) -> GatewayProcess:
        self.write_config(commit_interval_ms, panel_port)
        self.runs += 1
        gw = GatewayProcess(self.config_path, self._gateway_log, self.runs)
        self.gateway = gw
        return gw

    def start_gateway(self, commit_interval_ms: int, panel_port: int = 0) -> GatewayProcess:
        """Spawn and wait for "started"; a gateway that exits by itself during start-up is retried."""
        for attempt in range(1, self.opts.start_retries + 1):
            gw = self.spawn_gateway(commit_interval_ms, panel_port)
            if gw.wait_ready(self.opts.start_timeout_s):
                self.startup_s = gw.ready_at - gw.spawned
                return gw
            rc = gw.finish()
            msg = f"gateway exited with code {rc} during start-up (attempt {attempt}); see {self.work}/gateway.log"
            self.state.start_failures.append(msg)
            log(msg)
        raise HarnessError(f"the gateway does not start; see {self.work}/gateway.log")

    def served(self) -> tuple[list[int], int]:
        """Reads served per device and point readings served in all (read from the simulator's counters)."""
        assert self.counters is not None
        c = np.array(self.counters)
        return [int(x) for x in c[:, READS]], int(c[:, READINGS].sum())

    def watch_files(
        self, gw: GatewayProcess, deadline: float, until: threading.Event | None = None, poll_s: float = WATCH_POLL_S
    ) -> bool:
        """Wait until the store file or its WAL changes (size or mtime, looked at every ``poll_s``; 0 = without
        pausing); True if it did before ``deadline``, the gateway's exit or ``until``."""
        wal = Path(f"{self.store_path}.wal")

        def sig() -> tuple[tuple[int, int] | None, ...]:
            out: list[tuple[int, int] | None] = []
            for p in (self.store_path, wal):
                try:
                    st = os.stat(p)
                    out.append((st.st_size, st.st_mtime_ns))
                except FileNotFoundError:
                    out.append(None)
            return tuple(out)

        before = sig()
        while time.monotonic() < deadline and not gw.exited.is_set():
            if until is not None and until.is_set():
                return False
            if poll_s > 0:
                time.sleep(poll_s)
            if sig() != before:
                return True
        return False

    def one_kill(self, n: int, kind: str) -> KillRecord:
        """Start the gateway, SIGKILL it the ``kind`` way, reap it, snapshot the store."""
        o = self.opts
        interval = self.rng.choice(o.commit_intervals_ms)
        detail = ""
        if kind == NEW_STORE:
            # no store file yet: kill the moment it appears (DuckDB writes its headers right after creating it)
            gw = self.spawn_gateway(interval)
            fired = self.watch_files(gw, time.monotonic() + o.start_timeout_s, until=gw.ready, poll_s=0.0)
            gw.kill()
            run_s = time.monotonic() - gw.spawned
        elif kind == "startup":
            wal = Path(f"{self.store_path}.wal")
            has_wal = wal.exists() and wal.stat().st_size > 0
            gw = self.spawn_gateway(interval)
            if has_wal:
                # the store's first write after the spawn is DuckDB replaying the WAL and checkpointing it on
                # open: kill then, or up to 50 ms later
                detail = "at WAL replay"
                fired = self.watch_files(gw, time.monotonic() + o.start_timeout_s, until=gw.ready)
                if fired:
                    gw.ready.wait(self.rng.choice([0.0, self.rng.uniform(0.0, 0.05)]))
            else:
                # nothing to replay (the last kill came right after a checkpoint): opening writes nothing, so
                # kill at a uniform moment of 30-90 % of the last start-up (imports, store opening, registering)
                detail = "no WAL"
                fired = not gw.ready.wait(self.rng.uniform(0.3, 0.9) * self.startup_s)
            gw.kill()
            run_s = time.monotonic() - gw.spawned
        else:
            gw = self.start_gateway(interval)
            fired = self.kill_running(gw, kind)
            run_s = time.monotonic() - gw.ready_at
        rc = gw.finish()
        if rc != -signal.SIGKILL:
            self.state.unexpected_exits.append(f"run {self.runs}: the gateway ended by itself with exit code {rc}")
        assert self.relay is not None
        self.relay.drop_all()
        rec = KillRecord(n=n, kind=kind, fired=fired, run_s=round(run_s, 3), detail=detail)
        self.snapshot(rec)
        return rec

    def kill_running(self, gw: GatewayProcess, kind: str) -> bool:
        """Let the started gateway run for the run window, then kill it the ``kind`` way. True if the trigger
        fired (False: it did not come within ``trigger_timeout_s`` and the kill was done at once)."""
        o = self.opts
        if gw.exited.wait(self.rng.uniform(o.run_min_s, o.run_max_s)):
            return False  # ended by itself: reported by the caller
        fired = True
        deadline = time.monotonic() + o.trigger_timeout_s
        if kind == "mid-commit":
            fired = self.watch_files(gw, deadline)
        elif kind in ("mid-upload", "after-landing"):
            relay = self.relay
            assert relay is not None
            if kind == "mid-upload":
                relay.arm("request", gw.kill, 0.0 if self.rng.random() < 0.5 else self.rng.uniform(0.0, 0.02))
            else:
                relay.arm("response", gw.kill)
            fired = relay.fired.wait(o.trigger_timeout_s)
            relay.disarm()
        gw.kill()  # "random", or right after the trigger (a no-op when the relay already killed it)
        return fired

    # -------------------------------------------------------------------------------------------- snapshots
    def copy_store(self, dest_dir: Path) -> Path:
        """Copy the store file and its WAL (the gateway is dead: nothing writes them)."""
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        dest_dir.mkdir(parents=True)
        dest = dest_dir / STORE_NAME
        for src, dst in ((self.store_path, dest), (Path(f"{self.store_path}.wal"), Path(f"{dest}.wal"))):
            if src.exists():
                shutil.copy2(src, dst)
        return dest

    def landed_stats(self) -> dict[str, int]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.receiver_port}/v1/gateways/{GATEWAY_ID}/stats",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10.0) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return {k: int(v) for k, v in body.items() if isinstance(v, int)}

    def snapshot(self, rec: KillRecord) -> None:
        st = self.state
        _, served_readings = self.served()
        rec.served_readings = served_readings
        if not self.store_path.exists():  # killed before the store file was created
            rec.uncommitted = served_readings - int(st.ever.fresh().sum())
            return
        copy = self.copy_store(self.scratch / "snap")
        try:
            sc: StoreCopy = read_store(copy, SINK)
        except duckdb.Error as e:
            kept = self.work / f"corrupt-after-kill-{rec.n}"
            shutil.copytree(copy.parent, kept, dirs_exist_ok=True)
            rec.error = f"store copy cannot be opened: {e}"
            st.corrupt.append(f"kill {rec.n}: {e} (copy kept in {kept})")
            log(rec.error)
            return
        rows = sc.rows
        st.points.update(sc.points)
        missing, changed = compare(st.last, rows)
        if missing or changed:
            log(f"kill {rec.n}: {missing} committed rows missing and {changed} changed since the last snapshot")
        st.rewritten += missing + changed
        if sc.watermark < st.last_watermark:
            st.watermark_regressions += 1
        landed = self.landed_stats()
        if sc.watermark > landed.get("last_seq", 0):
            st.ack_ahead += 1
            log(f"kill {rec.n}: watermark {sc.watermark} but the receiver's last seq is {landed.get('last_seq')}")
        st.ever = st.ever.concat(new_rows(st.ever, rows))
        st.last, st.last_watermark = rows, sc.watermark
        rec.rows, rec.max_seq, rec.watermark = len(rows), int(rows.seq.max(initial=0)), sc.watermark
        rec.fingerprint = rows.fingerprint()
        rec.uncommitted = served_readings - int(st.ever.fresh().sum())

    # -------------------------------------------------------------------------------------------- the end
    def gateway_status(self, panel_port: int) -> dict[str, Any] | None:
        """The gateway's /api/status, or None while it does not answer."""
        from hil_tests.panel_access import get_status, viewer_token

        if self._panel_token is None:
            self._panel_token = viewer_token(self.data)
        try:
            return get_status(f"http://127.0.0.1:{panel_port}", self._panel_token)
        except (OSError, ValueError):
            return None

    def drained(self, panel_port: int) -> tuple[bool, int, int]:
        """(done, committed, landed): every device has given up on its (stopped) simulator, so its failure
        marks are committed; nothing is queued; the sink acked the last seq and the receiver has that many rows.
        """
        status = self.gateway_status(panel_port)
        if status is None:
            return False, -1, -1
        store = status.get("store", {})
        committed = int(store.get("rows", -1))
        last_seq = int(store.get("last_seq", -1))
        landed = self.landed_stats()
        sinks = status.get("sinks", [])
        acked = int(sinks[0].get("last_ack_seq", -1)) if sinks else -1
        devices_down = all(d.get("state") == "disconnected" for d in status.get("devices", []))
        idle = int(store.get("queued_rows", 1)) == 0
        caught_up = acked == last_seq == landed.get("last_seq") and committed == landed.get("rows", -1)
        return devices_down and idle and caught_up, committed, landed.get("rows", 0)

    def drain_and_stop(self) -> None:
        """Stop the devices, run the gateway until the receiver has every committed row, stop it cleanly
        (SIGTERM), and check that the clean stop committed nothing new; if it did, run again (≤ 3 runs)."""
        o = self.opts
        stop_child(self.sim)
        t0 = time.monotonic()
        deadline = t0 + o.drain_timeout_s
        landed = 0
        done = False
        for attempt in range(1, 4):
            panel_port = free_port()
            gw = self.start_gateway(o.commit_intervals_ms[0], panel_port)
            done = False
            while time.monotonic() < deadline and not gw.exited.is_set():
                done, _, landed = self.drained(panel_port)
                if done:
                    break
                time.sleep(0.1)
            if gw.proc.poll() is None:
                gw.proc.send_signal(signal.SIGTERM)
            try:
                rc = gw.finish(60.0)
            except subprocess.TimeoutExpired:
                gw.kill()
                rc = gw.finish()
            final = self.final_store()
            final_rows = len(final.rows) if final is not None else -1
            self.drain = {"runs": attempt, "clean_stop_rc": rc, "seconds": round(time.monotonic() - t0, 2),
                          "landed_rows": landed, "committed_rows": final_rows}
            if rc != 0:
                self.state.unexpected_exits.append(f"run {self.runs}: clean stop (SIGTERM) exited with code {rc}")
            if final is None or time.monotonic() > deadline or (done and final_rows == landed):
                break
            log(f"drain run {attempt}: store has {final_rows} rows, receiver {landed}: running once more")
        self.drain["complete"] = done and self.drain["committed_rows"] == landed

    def final_store(self) -> StoreCopy | None:
        copy = self.copy_store(self.scratch / "final")
        try:
            return read_store(copy, SINK)
        except duckdb.Error as e:
            self.state.corrupt.append(f"final store: {e}")
            return None

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.finish(10.0)
        if self.relay is not None:
            self.relay.close()
        stop_child(self.sim)
        stop_child(self.receiver)
        for p in (self.sim, self.receiver):
            if p is not None and p.stdout is not None:
                p.stdout.close()
        for f in self._logs:
            f.close()
        self._logs.clear()

    # -------------------------------------------------------------------------------------------- main
    def run(self) -> dict[str, Any]:
        o = self.opts
        t0 = time.monotonic()
        self.start_world()
        schedule: list[str] = [NEW_STORE] if o.kill_new_store else []
        while len(schedule) < o.kills:
            cycle = list(KINDS)
            self.rng.shuffle(cycle)
            schedule.extend(cycle)
        if not o.kill_new_store and schedule[0] == "startup" and len(schedule) > 1:
            # no store yet: a startup kill would hit its creation (--kill-new-store); swap within the cycle
            schedule[0], schedule[1] = schedule[1], schedule[0]
        for n, kind in enumerate(schedule[: o.kills], start=1):
            rec = self.one_kill(n, kind)
            self.state.kills.append(rec)
            prev = self.state.kills[-2].uncommitted if len(self.state.kills) > 1 else 0
            what = f"{kind} ({rec.detail})" if rec.detail else kind
            log(f"kill {n}/{o.kills} {what}{'' if rec.fired else ' (fallback)'} after {rec.run_s:.2f} s: "
                f"committed {rec.rows} (seq {rec.max_seq}), acked {rec.watermark}, served {rec.served_readings}, "
                f"served but not committed in this run {rec.uncommitted - prev}")
            self._kill_log.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            self._kill_log.flush()
        self.drain_and_stop()
        final = self.final_store()
        stop_child(self.receiver)
        return self.reconcile(final, time.monotonic() - t0)

    def reconcile(self, final: StoreCopy | None, seconds: float) -> dict[str, Any]:
        st = self.state
        served_reads, served_readings = self.served()
        f_rows = final.rows if final is not None else Rows.empty()
        if final is not None:
            st.points.update(final.points)
        try:
            landed = read_landed(self.receiver_db, GATEWAY_ID)
            redelivered_rows, redelivered_batches = read_redelivered(self.receiver_db, GATEWAY_ID)
        except duckdb.Error as e:
            st.corrupt.append(f"receiver database: {e}")
            landed = Rows.empty()
            redelivered_rows = redelivered_batches = 0
        missing, changed = compare(st.ever, f_rows)  # committed once, not (or not so) in the final store
        rewritten = st.rewritten + missing + changed
        reference = st.ever.concat(new_rows(st.ever, f_rows))  # the first committed version of every seq
        not_landed, landed_changed = compare(reference, landed)
        phantom = len(new_rows(reference, landed))
        point_index: dict[int, tuple[int, int]] = {}
        for pid, name in st.points.items():
            m = re.fullmatch(r"dev(\d+)\.p(\d+)", name)
            if m:
                point_index[pid] = (int(m.group(1)), int(m.group(2)))
        both = reference.concat(landed)
        bad = untraceable(both, point_index, served_reads)
        invented = len(np.unique(both.seq[bad]))
        dup = {
            "landed_same_seq": landed.duplicate_seqs(),
            "store_same_seq": f_rows.duplicate_seqs(),
            "same_reading_two_seqs": same_reading_twice(f_rows),
            "same_served_value_two_seqs": same_served_value_twice(f_rows),
        }
        damaged = sorted(self.data.glob("*.damaged-*"))
        damaged_wal = [p for p in damaged if ".wal.damaged-" in p.name]
        # a store file the harness could not open after a kill is the same file the gateway then moves aside at
        # its next start: count such a pair once
        snapshot_failures = sum(1 for c in st.corrupt if c.startswith("kill "))
        corrupt = (
            max(snapshot_failures, len(damaged) - len(damaged_wal))
            + len(damaged_wal)
            + len(st.corrupt)
            - snapshot_failures
        )
        damaged_detail = [f"moved aside by the gateway: {p.name} ({p.stat().st_size} bytes)" for p in damaged]
        fresh = int(reference.fresh().sum())
        kills = len(st.kills)
        uncommitted = served_readings - fresh
        by_kind = Counter(k.kind for k in st.kills if k.fired)
        summary: dict[str, Any] = {
            "kills": kills,
            "kills_by_kind": {k: by_kind.get(k, 0) for k in (NEW_STORE, *KINDS) if k in KINDS or by_kind.get(k)},
            "fallback_kills": sum(1 for k in st.kills if not k.fired),
            "committed": len(f_rows),
            "landed": len(np.unique(landed.seq)),
            "lost": not_landed + landed_changed + rewritten,
            "lost_detail": {"not_landed": not_landed, "landed_different": landed_changed,
                            "rewritten_in_store": rewritten},
            "duplicates": sum(dup.values()),
            "duplicates_detail": dup,
            "phantom": phantom,
            "invented": invented,
            "corrupt_files": corrupt,
            "corrupt_detail": st.corrupt + damaged_detail,
            "redelivered_rows": redelivered_rows,
            "redelivered_batches": redelivered_batches,
            "served": served_readings,
            "served_reads": sum(served_reads),
            "committed_fresh": fresh,
            "uncommitted_total": uncommitted,
            "uncommitted_at_kill": round(uncommitted / kills, 1) if kills else 0.0,
            "store_gaps": f_rows.gaps(),
            "watermark_regressions": st.watermark_regressions,
            "ack_ahead": st.ack_ahead,
            "unexpected_exits": len(st.unexpected_exits),
            "start_failures": len(st.start_failures),
            "drain": self.drain,
            "gateway_runs": self.runs,
            "seed": self.opts.seed,
            "seconds": round(seconds, 1),
            "workdir": str(self.work),
        }
        for msg in st.unexpected_exits + st.start_failures:
            log(msg)
        return summary


def passed(summary: dict[str, Any]) -> bool:
    zero = ("lost", "duplicates", "phantom", "invented", "corrupt_files", "watermark_regressions", "ack_ahead",
            "store_gaps", "unexpected_exits")
    return all(summary.get(k) == 0 for k in zero) and bool(summary.get("drain", {}).get("complete"))


def run(opts: Options) -> tuple[int, dict[str, Any]]:
    """Run the harness; returns (exit code, summary)."""
    h = Harness(opts)
    try:
        summary = h.run()
    except HarnessError as e:
        log(f"error: {e}")
        return 2, {"error": str(e), "kills": len(h.state.kills), "workdir": str(h.work)}
    except Exception as e:  # a bug here or a peer that died: still one JSON line, and the files are kept
        log(f"error: {e!r}\n{traceback.format_exc()}")
        return 2, {"error": repr(e), "kills": len(h.state.kills), "workdir": str(h.work)}
    except Interrupted as e:
        log(f"stopped by {e}; files kept in {h.work}")
        return 130, {"error": f"stopped by {e}", "kills": len(h.state.kills), "workdir": str(h.work)}
    finally:
        h.close()  # every child process is stopped, whatever happened
    ok = passed(summary)
    if ok and not opts.keep and opts.workdir is None:
        shutil.rmtree(h.work, ignore_errors=True)
    elif not ok:
        log(f"checks failed; files kept in {h.work}")
    return (0 if ok else 1), summary


def parse_args(argv: Sequence[str] | None) -> Options:
    d = Options()
    ap = argparse.ArgumentParser(prog="python -m hil_tests.powercut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=d.kills, help=f"number of SIGKILLs (default {d.kills})")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the kill schedule and moments")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    ap.add_argument("--devices", type=int, default=d.devices, help="simulated devices (one link each)")
    ap.add_argument("--points", type=int, default=d.points, help="uint32 points per device")
    ap.add_argument("--period", type=float, default=d.period_s, help="poll period, seconds")
    ap.add_argument("--run-min", type=float, default=d.run_min_s, help="shortest run after start-up, seconds")
    ap.add_argument("--run-max", type=float, default=d.run_max_s, help="longest run after start-up, seconds")
    ap.add_argument("--commit-intervals", default=",".join(map(str, d.commit_intervals_ms)),
                    help="[storage] commit_interval_ms values drawn per run (comma-separated)")
    ap.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s, help="final drain limit, seconds")
    ap.add_argument("--kill-new-store", action="store_true",
                    help="make the first kill hit the gateway while it creates its store file (default: the "
                    "first kill is never during a start-up, so the store exists before any kill)")
    a = ap.parse_args(argv)
    if a.kills < 0 or not 0 < a.run_min <= a.run_max:
        ap.error("need --kills >= 0 and 0 < --run-min <= --run-max")
    return Options(
        kills=a.kills, seed=a.seed, workdir=a.workdir, keep=a.keep, devices=a.devices, points=a.points,
        period_s=a.period, run_min_s=a.run_min, run_max_s=a.run_max,
        commit_intervals_ms=tuple(int(x) for x in a.commit_intervals.split(",") if x.strip()),
        drain_timeout_s=a.drain_timeout, kill_new_store=a.kill_new_store,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background with SIGINT ignored
        signal.signal(sig, _interrupt)
    code, summary = run(opts)
    print(json.dumps(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

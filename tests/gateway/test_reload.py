"""Config reload (SIGHUP / `systemctl reload`): unchanged links keep their connection, changed and added links
(re)start with their new points, sinks keep their watermark, a bad file changes nothing, restart-only settings
are reported and kept; the SIGHUP wiring of `gateway run`."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.app import Gateway, reload_from_file
from gateway.config_load import load_config
from gateway.reload import plan_reload
from gateway.sdnotify import Notifier
from hil_tests.faultproxy import FaultProxy
from hil_tests.modbus_sim import SimServer, SimUnit
from tests.waiting import wait_for, wait_until


def config_text(data: Path, port_a: int, port_b: int, *, b_points: int = 1, port_c: int = 0,
                log_level: str = "INFO", commit_ms: int = 50) -> str:
    b_pts = ", ".join(f'{{ name = "r{i}", kind = "holding", address = {i}, period_s = 0.05 }}' for i in range(b_points))
    text = f"""
version = 1
[gateway]
id = "gw-reload"
data_dir = "{data}"
log_level = "{log_level}"
[storage]
commit_interval_ms = {commit_ms}
[panel]
port = 0
[[links]]
name = "a"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port_a}
[[links.devices]]
name = "da"
unit_id = 1
points = [{{ name = "r0", kind = "holding", address = 0, period_s = 0.05 }}]
[[links]]
name = "b"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port_b}
[[links.devices]]
name = "db"
unit_id = 1
points = [{b_pts}]
"""
    if port_c:
        text += f"""
[[links]]
name = "c"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port_c}
[[links.devices]]
name = "dc"
unit_id = 1
points = [{{ name = "r0", kind = "holding", address = 0, period_s = 0.05 }}]
"""
    return text


def test_plan_classifies_changes(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(config_text(tmp_path, 1502, 1503))
    old, _ = load_config(f)
    f.write_text(config_text(tmp_path, 1502, 1503, b_points=2, port_c=1504, log_level="DEBUG", commit_ms=100))
    new, _ = load_config(f)
    plan = plan_reload(old, new)
    r = plan.report
    assert r.links_unchanged == ("a",) and r.links_changed == ("b",) and r.links_added == ("c",)
    assert r.links_removed == () and r.applied == ("log_level",)
    assert r.restart_needed == ("storage.commit_interval_ms",)
    assert plan.effective.storage == old.storage  # kept until a restart
    assert plan.effective.links == new.links and plan.effective.log_level == "DEBUG"
    assert "NOT applied, needs a restart: storage.commit_interval_ms" in r.summary()
    f.write_text(config_text(tmp_path, 1502, 1503))
    same, _ = load_config(f)
    assert plan_reload(old, same).report.summary() == "2 link(s) unchanged, still polling"


async def test_reload_keeps_unchanged_link_connected(tmp_path: Path) -> None:
    units = {k: SimUnit(1, holding=[100 + i for i in range(8)]) for k in "abc"}
    data = tmp_path / "gw"
    async with (
        SimServer([units["a"]], tcp=("127.0.0.1", 0)) as sim_a,
        SimServer([units["b"]], tcp=("127.0.0.1", 0)) as sim_b,
        SimServer([units["c"]], tcp=("127.0.0.1", 0)) as sim_c,
        FaultProxy(target_port=sim_a.port) as proxy_a,
        FaultProxy(target_port=sim_b.port) as proxy_b,
    ):
        path = tmp_path / "gateway.toml"
        path.write_text(config_text(data, proxy_a.port, proxy_b.port))
        cfg, _ = load_config(path)
        notify = Notifier(environ={})
        async with Gateway(cfg) as gw:
            assert gw.latest is not None and gw.store is not None
            await wait_for(lambda: all(d["polls"] >= 3 for r in gw.runners for d in r.status()), what="first polls")
            runner_a = gw.runners[0]
            assert proxy_a.stats()["connections"] == 1 and proxy_b.stats()["connections"] == 1

            # a file with errors: nothing changes
            path.write_text(config_text(data, proxy_a.port, proxy_b.port).replace('unit_id = 1', 'unit_id = 999', 1))
            assert await reload_from_file(gw, notify) is False
            assert gw.runners[0] is runner_a and len(gw.runners) == 2

            # link b gains a point, link c is new, log level changes
            path.write_text(config_text(data, proxy_a.port, proxy_b.port, b_points=2, port_c=sim_c.port,
                                        log_level="DEBUG"))
            polls_a = runner_a.status()[0]["polls"]
            assert await reload_from_file(gw, notify) is True
            assert [r.link.name for r in gw.runners] == ["a", "b", "c"]
            assert gw.runners[0] is runner_a  # the same poll loop...
            new_ids = [gw.point_ids[n] for n in ("db.r1", "dc.r0")]

            def new_points_read() -> bool:
                assert gw.latest is not None
                return all(gw.latest.ts[i] > 0 for i in new_ids)

            await wait_for(new_points_read, what="the added points polled")
            assert gw.latest.value[gw.point_ids["db.r1"]] == 101.0 and gw.latest.value[gw.point_ids["dc.r0"]] == 100.0
            await wait_for(lambda: runner_a.status()[0]["polls"] > polls_a + 3, what="link a still polling")
            assert proxy_a.stats()["connections"] == 1  # ...on the same TCP connection: never interrupted
            assert proxy_b.stats()["connections"] == 2  # the changed link reconnected
            assert gw.cfg.log_level == "DEBUG" and gw.controls is not None
            gw.store.flush()
            events = gw.store.events_after(0, 1000).to_pylist()
        reloads = [e for e in events if e["kind"] == "audit" and e["point"] == "config.reload"]
        assert len(reloads) == 1 and "links added: c" in reloads[0]["message"]
        assert reloads[0]["priority"] == 0


def diff_running(path: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "diff", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_sighup_reloads_a_running_daemon(tmp_path: Path) -> None:
    """`gateway run` handles SIGHUP (instead of dying of it): the reload is logged and the daemon goes on."""
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(tmp_path / "gw", 1, 2))  # nothing answers: links back off, that is fine
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: "gateway gw-reload started" in log.read_text(), 30, "the daemon started")
        wait_until(lambda: (tmp_path / "gw" / "running-config.toml").exists(), 30, "the running config kept")
        assert "no differences between running" in diff_running(path)  # `gateway config diff -c FILE`
        path.write_text(config_text(tmp_path / "gw", 1, 2, log_level="WARNING"))
        diff = diff_running(path)
        assert "log_level" in diff and "'INFO'" in diff and "'WARNING'" in diff, diff
        assert "systemctl reload gateway would: applied: log_level" in diff
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded from" in log.read_text(), 30, "the reload logged")
        assert proc.poll() is None  # still running
        wait_until(lambda: "no differences" in diff_running(path), 30, "the running config = the file again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "applied: log_level" in text and "Traceback" not in text


def test_replace_keeps_dataclass_equality_semantics(tmp_path: Path) -> None:
    """Unchanged links are recognised by value: a reloaded file gives equal (not identical) LinkConfigs."""
    f = tmp_path / "g.toml"
    f.write_text(config_text(tmp_path, 1502, 1503))
    a, _ = load_config(f)
    b, _ = load_config(f)
    assert a.links[0] == b.links[0] and a.links[0] is not b.links[0]
    assert dataclasses.replace(a.links[0], port=1) != b.links[0]

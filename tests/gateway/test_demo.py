"""`gateway demo` (what `make demo` runs): IEDs, receiver and gateway come up, data flows, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway.demo import mosquitto_available
from hil_tests.panel_access import viewer_token
from storefwd.store import Store
from tests.waiting import wait_until


def free_ports(n: int, consecutive: int = 1) -> list[int]:
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            p = s.getsockname()[1]
            if consecutive > 1 and len(ports) == 0:
                try:
                    for k in range(1, consecutive):
                        s2 = socket.socket()
                        socks.append(s2)
                        s2.bind(("127.0.0.1", p + k))
                except OSError:
                    continue
            ports.append(p)
    finally:
        for s in socks:
            s.close()
    return ports


def points_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["point"]: p for p in status["points"]}


def get_json(url: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_demo_runs_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    # Modbus feeders, incomer, DNP3 RTU, 61850 IED, MQTT broker of the solar sensors
    modbus, panel, receiver = free_ports(3, consecutive=5)
    data = tmp_path / "demo-data"
    with_solar = mosquitto_available()  # this machine has it: the solar part must run
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--data-dir",
            str(data),
            "--panel-port",
            str(panel),
            "--receiver-port",
            str(receiver),
            "--modbus-port",
            str(modbus),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    token = viewer_token(data)  # the panel has no anonymous JSON; the rig's account lives beside the demo's data
    try:
        status: dict[str, Any] = {}

        def up() -> bool:
            nonlocal status
            try:
                status = get_json(f"http://127.0.0.1:{panel}/api/status", token)
            except OSError:
                return False
            def ok(d: dict[str, Any]) -> bool:  # sensors over MQTT are never polled
                return d["state"] == "ok" and (d["polls"] >= 3 or d["protocol"]["name"] == "mqtt")

            solar = [p for p in status["points"] if p["point"].endswith(".power") and p["point"].startswith("pv-")
                     and p["value"] is not None]  # fmt: skip
            f_avg = [p for p in status["points"] if p["point"] == "busbar.f_avg_1s" and p["value"] is not None]
            return (
                all(ok(d) for d in status["devices"])
                and bool(f_avg)  # the analytics' 1-s frequency window of the busbar
                and (len(solar) >= 20 or not with_solar)
                and bool(status["sinks"][0]["last_ack_seq"] > 0)
                and status["protection"]["state"] == "running"
                and status["protection"]["outputs"][0]["link"] == "up"
            )

        wait_until(up, 60, "the demo polling and syncing")
        panels = [f"pv-{i:02d}" for i in range(1, 21)] if with_solar else []
        devices = ["feeder1", "feeder2", "feeder3", "incomer", "feeder4", "feeder5", *panels]
        assert [d["device"] for d in status["devices"]] == devices
        protocols = ["modbus_tcp"] * 4 + ["dnp3_tcp", "iec61850"] + ["mqtt"] * len(panels)
        assert [d["protocol"]["name"] for d in status["devices"]] == protocols
        if with_solar:  # 20 simulated PV panels over a private Mosquitto
            pv = points_of(status)
            assert pv["pv-07.voltage"]["validity"] == "good" and 0 <= pv["pv-07.voltage"]["value"] <= 60
            assert pv["pv-07.power"]["unit"] == "W" and -20 <= pv["pv-20.temperature"]["value"] <= 80
            assert status["devices"][-1]["location"]["zone"] == "roof" and status["quarantine"] is not None
        points = {p["point"]: p for p in status["points"]}
        assert 49 < points["busbar.f_avg_1s"]["value"] < 51 and points["busbar.f_avg_1s"]["unit"] == "Hz"
        assert status["analytics"]["errors"] == 0
        if with_solar:
            assert points["pv-01.energy_today_kwh"]["unit"] == "kWh"
        assert points["feeder1.Ia"]["validity"] == "good" and 0 < points["feeder1.Ia"]["value"] < 1000
        assert 49 < points["incomer.f"]["value"] < 51
        assert 49 < points["feeder4.f"]["value"] < 51 and points["feeder4.f"]["validity"] == "good"  # over DNP3
        hz = points["feeder5.MMXU1_Hz"]  # over IEC 61850 (buffered report)
        assert 49 < hz["value"] < 51 and hz["validity"] == "good"
        assert points["feeder5.XCBR1_Pos"]["value"] == 2.0  # Dbpos on
        assert 0 < points["feeder5.MMXU1_TotW"]["value"] < 10_000  # kW, as the SCL's unit says
        assert points["feeder4.trip"]["validity"] == "good"  # output status online
        # the overview (HTML) for a logged-in viewer: a tile per bay of the demo, DNP3 and IEC 61850 feeders too
        req = urllib.request.Request(f"http://127.0.0.1:{panel}/", headers={"Authorization": f"Bearer {token}"})
        html = urllib.request.urlopen(req, timeout=2).read().decode()
        assert "Feeder 1" in html and "Feeder 4 (DNP3)" in html and "Feeder 5 (IEC 61850)" in html
        assert "Cloud sync" in html and "Protection" in html
        anon = urllib.request.urlopen(f"http://127.0.0.1:{panel}/", timeout=2)  # anonymous: sent to log in
        assert anon.url.endswith("/login?next=/")
        prot = status["protection"]
        assert [e["name"] for e in prot["elements"] if e["group"] == 1] == ["50P", "51P", "59", "81U"]
        assert prot["cycle"]["cycles"] > 0 and not any(e["tripped"] for e in prot["elements"])  # load only

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    assert ("solar sensors (MQTT) part of the demo is skipped" in text) != with_solar
    assert f"http://127.0.0.1:{panel}/setup?token=" in text and "demo stopped" in text  # no default credentials
    assert "Traceback" not in text
    with Store(data / "gateway.duckdb") as store:
        acked = store.watermark("cloud")
        first = store.stats()["first_seq"]
    con = duckdb.connect(str(data / "receiver.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchone()
    finally:
        con.close()
    # every reading up to the watermark landed once (seqs of a new store start at the time in µs)
    assert rows is not None and rows[1] == first and rows[2] == acked and rows[0] == acked - first + 1 > 0

"""``gateway demo``: simulated IEDs (child process) + reference receiver (child process) + the gateway (this
process) with the shipped demo config, ports and data directory overridable from the command line.

Ctrl-C (SIGINT, sent by the terminal to the whole process group) or SIGTERM stops everything: the gateway stops
its runners, drains the store and stops its uploaders; then the children are terminated (SIGTERM, then SIGKILL
after 2 s). The whole stop takes well under 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from gateway.app import install_stop_signals, run_gateway, setup_logging
from gateway.config import GatewayConfig
from gateway.config_load import load_config

log = logging.getLogger("gateway.demo")

DEMO_CONFIG = "demo.toml"
RECEIVER_TOKEN = "demo-token"


def demo_config(data_dir: Path, panel_port: int, receiver_port: int, modbus_port: int) -> GatewayConfig:
    """The shipped demo config with the demo's data directory and ports filled in."""
    with resources.as_file(resources.files("gateway") / "configs" / DEMO_CONFIG) as path:
        cfg, _ = load_config(path)
    links = tuple(dataclasses.replace(link, port=modbus_port + i) for i, link in enumerate(cfg.links))
    sinks = tuple(
        dataclasses.replace(s, url=f"http://127.0.0.1:{receiver_port}/v1/batches", token=RECEIVER_TOKEN)
        for s in cfg.sinks
    )
    from protection.modbus_source import ModbusMeasurementSpec

    rt = cfg.protection_runtime  # its source and output talk to the feeder relays of the first link
    source = rt.source
    if isinstance(source, ModbusMeasurementSpec):
        source = dataclasses.replace(source, port=modbus_port)
    protection_runtime = dataclasses.replace(
        rt, source=source, outputs=tuple(dataclasses.replace(o, port=modbus_port) for o in rt.outputs)
    )
    return dataclasses.replace(
        cfg,
        data_dir=data_dir,
        links=links,
        sinks=sinks,
        panel=dataclasses.replace(cfg.panel, port=panel_port),
        protection_runtime=protection_runtime,
    )


def demo_ied61850_available() -> bool:
    """Whether the IEC 61850 demo IED can run here (its server library has x86_64 wheels only)."""
    return importlib.util.find_spec("pyiec61850") is not None


def mosquitto_available() -> bool:
    """Whether the solar part of the demo can run: it needs a mosquitto broker executable."""
    return os.access("/usr/sbin/mosquitto", os.X_OK) or shutil.which("mosquitto") is not None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    """Wait until ``proc`` listens on 127.0.0.1:``port``; RuntimeError if it exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start-up")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2.0)


def _bays_of_present_devices(cfg: GatewayConfig) -> GatewayConfig:
    """Drop the overview tiles of devices left out of this demo run (no IEC 61850 IED on aarch64, ...)."""
    names = {d.name for _, d in cfg.devices()}
    bays = tuple(
        b for b in cfg.panel.bays
        if all(p.split(".")[0] in names for p in (b.breaker, b.open, b.close, *b.measurements) if p)
    )
    return dataclasses.replace(cfg, panel=dataclasses.replace(cfg.panel, bays=bays))


def _panel_link(cfg: GatewayConfig, port: int) -> str:
    """The panel's address; while no administrator exists, a one-time setup link that creates the first one
    (there are no default credentials, not even in the demo)."""
    from gateway.panel.app import users_path
    from gateway.panel.users import UserStore

    users = UserStore(users_path(cfg.data_dir))
    if users.has_admin():
        return f"http://127.0.0.1:{port}/   (log in as the administrator you created)"
    token = users.issue_setup_token()
    return (f"http://127.0.0.1:{port}/setup?token={token}\n"
            "                        (works once: create the first administrator there; more users on its "
            "Users page)")


def run_demo(
    data_dir: Path, panel_port: int, receiver_port: int, modbus_port: int, duration_s: float = 0.0
) -> int:
    setup_logging("INFO")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(data_dir, panel_port, receiver_port, modbus_port)
    ports = {
        "operator panel": panel_port,
        "receiver": receiver_port,
        "simulated IEDs": modbus_port,
        "simulated incomer": modbus_port + 1,
        "simulated DNP3 RTU": modbus_port + 2,
    }
    with_61850 = demo_ied61850_available()
    if with_61850:
        ports["simulated IEC 61850 IED"] = modbus_port + 3
    else:
        cfg = dataclasses.replace(cfg, links=tuple(lk for lk in cfg.links if lk.protocol != "iec61850"))
        print(
            "note: the IEC 61850 demo IED needs pyiec61850 (x86_64 wheels only; `pip install -e '.[demo]'`); "
            "the demo runs without feeder 5",
            file=sys.stderr,
        )
    with_solar = mosquitto_available() and any(lk.protocol == "mqtt" for lk in cfg.links)
    if with_solar:
        ports["MQTT broker (solar sensors)"] = modbus_port + 4
    else:
        cfg = dataclasses.replace(cfg, links=tuple(lk for lk in cfg.links if lk.protocol != "mqtt"))
        print(
            "note: the solar sensors (MQTT) part of the demo is skipped: it needs mosquitto "
            "(/usr/sbin/mosquitto or mosquitto on PATH, e.g. `apt install mosquitto`) for its private broker",
            file=sys.stderr,
        )
    cfg = _bays_of_present_devices(cfg)
    taken = [f"{what} port {p}" for what, p in ports.items() if not _port_free(p)]
    if taken:
        print(
            f"error: {', '.join(taken)} already in use; stop what uses it or pick other ports "
            "(gateway demo --panel-port/--receiver-port/--modbus-port)",
            file=sys.stderr,
        )
        return 4

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[subprocess.Popen[bytes]] = []
    try:
        ieds = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hil_tests.demo_ieds",
                "--port",
                str(modbus_port),
                "--incomer-port",
                str(modbus_port + 1),
                "--dnp3-port",
                str(modbus_port + 2),
                "--iec61850-port",
                str(modbus_port + 3 if with_61850 else 0),
            ],
            env=env,
        )
        children.append(ieds)
        receiver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "receiver",
                "--db",
                str(data_dir / "receiver.duckdb"),
                "--port",
                str(receiver_port),
                "--token",
                f"{cfg.id}={RECEIVER_TOKEN}",
                "--log-level",
                "warning",
            ],
            env=env,
        )
        children.append(receiver)
        wait_listening(modbus_port, ieds, "simulated IEDs")
        wait_listening(modbus_port + 1, ieds, "simulated incomer")
        wait_listening(modbus_port + 2, ieds, "simulated DNP3 RTU")
        if with_61850:
            wait_listening(modbus_port + 3, ieds, "simulated IEC 61850 IED")
        wait_listening(receiver_port, receiver, "receiver")
        if with_solar:  # a private broker on modbus_port + 4 and 20 simulated PV panels publishing to it
            solar = subprocess.Popen(
                [sys.executable, "-m", "hil_tests.demo_solar", "--start-broker", "--port", str(modbus_port + 4)],
                env=env,
            )
            children.append(solar)
            wait_listening(modbus_port + 4, solar, "MQTT broker (solar sensors)")
        print(
            "\n"
            f"  Operator panel      : {_panel_link(cfg, panel_port)}\n"
            f"  Cloud receiver      : http://127.0.0.1:{receiver_port}/openapi.json\n"
            f"      landed rows     : curl -H 'Authorization: Bearer {RECEIVER_TOKEN}' "
            f"http://127.0.0.1:{receiver_port}/v1/gateways/{cfg.id}/stats\n"
            f"  Simulated IEDs      : modbus tcp 127.0.0.1:{modbus_port} (units 1-3), 127.0.0.1:{modbus_port + 1}\n"
            f"                        dnp3 tcp 127.0.0.1:{modbus_port + 2} (outstation 10)\n"
            + (f"                        iec 61850 mms 127.0.0.1:{modbus_port + 3} (IED1)\n" if with_61850 else "")
            + (f"  Solar sensors       : mqtt 127.0.0.1:{modbus_port + 4} (sensors/pv-NN/readings, 20 panels)\n"
               if with_solar else "")
            + f"  Data                : {data_dir}\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )

        async def main() -> int:
            stop = asyncio.Event()
            install_stop_signals(stop)
            if duration_s > 0:
                asyncio.get_running_loop().call_later(duration_s, stop.set)
            return await run_gateway(cfg, stop)

        rc = asyncio.run(main())
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 4
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            for child in reversed(children):
                _stop_child(child)
    print("demo stopped", flush=True)
    return rc

"""Simulated solar sensors over MQTT, and a private Mosquitto to publish them to.

- :class:`PrivateMosquitto`: ``mosquitto -c conf`` on a loopback port (plain MQTT, anonymous, loopback only),
  with queue limits large enough never to drop (Mosquitto's default ``max_queued_messages`` 1000 drops a busy
  subscriber's messages) and optional file persistence that survives :meth:`PrivateMosquitto.restart`. It never
  touches the system broker on 1883. Used by ``gateway demo``, the MQTT tests and ``bench/analytics_mqtt.py``.
- :class:`SolarField`: ``panels`` PV panels, each one sensor ``pv-NN`` publishing ``{"ts", "temperature",
  "voltage", "current", "power"}`` to ``sensors/pv-NN/readings``: a day curve (sun elevation from the UTC time
  of day, compressed so a demo minute shows a whole day) plus noise; every ``bad_every``-th message is a bad
  record (rotating through: not JSON, an out-of-range temperature, a timestamp an hour ahead, an unknown
  sensor) so the status page's quarantine table has something to show.
- ``python -m hil_tests.demo_solar --port P [--start-broker] [--panels 20] [--period-s 1]``: what
  ``gateway demo`` starts. SIGTERM/SIGINT stop it (and its broker).

Process contract: :meth:`PrivateMosquitto.start` returns once the port accepts connections; ``stop`` (SIGTERM)
and ``kill`` (SIGKILL) wait for the process to end; ``close`` is idempotent. Not thread-safe: one owner.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Self

__all__ = ["PrivateMosquitto", "SolarField", "mosquitto_path"]

START_TIMEOUT_S: Final = 20.0  # bound for the broker to listen (a loaded machine), not an expectation
TOPIC: Final = "sensors/{id}/readings"


def mosquitto_path() -> str | None:
    """The mosquitto executable: /usr/sbin/mosquitto, else ``mosquitto`` on PATH; None when there is none."""
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    return shutil.which("mosquitto")


class PrivateMosquitto:
    """One private plain-MQTT broker process on ``127.0.0.1:port`` (see the module docstring)."""

    def __init__(self, directory: Path, port: int, *, persistence: bool = True, max_inflight: int = 1000,
                 executable: str | None = None, general: Sequence[str] = ("allow_anonymous true",),
                 listener: Sequence[str] = ()) -> None:  # fmt: skip
        """``general``: more settings before the listener (default: anonymous clients); ``listener``: settings
        of the listener (TLS files, ...), written after its ``listener`` line."""
        exe = executable or mosquitto_path()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (/usr/sbin/mosquitto or mosquitto on PATH)")
        self.exe = exe
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        persist = self.persistence = self.dir / "persist"
        persist.mkdir(exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name  # as root, do not drop to user "mosquitto"
        self.conf.write_text(
            "\n".join(
                [
                    f"user {user}",
                    f"persistence {'true' if persistence else 'false'}",
                    f"persistence_location {persist}/",
                    "autosave_interval 1800",
                    "max_queued_messages 1000000",
                    "max_queued_bytes 0",
                    f"max_inflight_messages {max_inflight}",
                    "persistent_client_expiration 1d",
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    *general,
                    f"listener {self.port} 127.0.0.1",
                    *listener,
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self._end(signal.SIGKILL)
                raise RuntimeError(f"mosquitto exited during start-up: {err}{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not listen on port {self.port}: {self.log_text()}") from None
                time.sleep(0.02)  # the broker's start-up, not a test wait

    def stop(self) -> None:
        """SIGTERM: the broker saves its persistence file and exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self._end(sig)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class SolarField:
    """``panels`` simulated PV panels (see the module docstring). ``day_s``: seconds of wall time per
    simulated day (0 = the real UTC time of day)."""

    BAD_KINDS: Final = ("not-json", "out-of-range", "future", "unknown")

    def __init__(self, panels: int = 20, *, seed: int = 1, day_s: float = 0.0, bad_every: int = 0) -> None:
        self.ids = [f"pv-{i:02d}" for i in range(1, panels + 1)]
        self.rng = random.Random(seed)
        self.day_s = day_s
        self.bad_every = bad_every
        self.sent = 0
        self.bad_sent = 0

    def sun(self, now_s: float) -> float:
        """Irradiance share 0..1 from the (simulated) time of day: a half sine between 06:00 and 18:00."""
        day = self.day_s if self.day_s > 0 else 86400.0
        hour = (now_s % day) / day * 24.0
        return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 < hour < 18.0 else 0.0

    def messages(self, now_s: float) -> list[tuple[str, bytes]]:
        """One (topic, payload) per panel for this instant, some of them bad (``bad_every``)."""
        out: list[tuple[str, bytes]] = []
        sun = self.sun(now_s)
        for sid in self.ids:
            self.sent += 1
            if self.bad_every and self.sent % self.bad_every == 0:
                out.append(self.bad(sid, now_s))
                continue
            g = self.rng.gauss
            temp = 15.0 + 35.0 * sun + g(0.0, 0.5)
            volt = (34.0 + 4.0 * sun + g(0.0, 0.3)) if sun > 0.02 else max(0.0, g(0.5, 0.2))
            cur = max(0.0, 9.0 * sun + g(0.0, 0.1))
            body = {"ts": round(now_s, 3), "temperature": round(temp, 2), "voltage": round(volt, 2),
                    "current": round(cur, 3), "power": round(max(0.0, volt * cur), 1)}  # fmt: skip
            out.append((TOPIC.format(id=sid), json.dumps(body).encode()))
        return out

    def bad(self, sid: str, now_s: float) -> tuple[str, bytes]:
        kind = self.BAD_KINDS[self.bad_sent % len(self.BAD_KINDS)]
        self.bad_sent += 1
        topic = TOPIC.format(id=sid)
        if kind == "not-json":
            return topic, b"temperature=21.5;voltage=35.1"
        if kind == "out-of-range":
            return topic, json.dumps({"ts": now_s, "temperature": 140.0, "voltage": 35.0, "current": 4.0,
                                      "power": 140.0}).encode()  # fmt: skip
        if kind == "future":
            return topic, json.dumps({"ts": now_s + 3600, "temperature": 20.0}).encode()
        return TOPIC.format(id="pv-99x"), json.dumps({"ts": now_s, "temperature": 20.0}).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="broker port on 127.0.0.1")
    ap.add_argument("--start-broker", action="store_true", help="start a private mosquitto on --port first")
    ap.add_argument("--panels", type=int, default=20)
    ap.add_argument("--period-s", type=float, default=1.0)
    ap.add_argument("--day-s", type=float, default=120.0, help="seconds per simulated day (0 = real time of day)")
    ap.add_argument("--bad-every", type=int, default=97, help="every n-th message is a bad record (0 = none)")
    args = ap.parse_args(argv)

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="demo-mosquitto-") as tmp:
        broker = PrivateMosquitto(Path(tmp), args.port, persistence=False) if args.start_broker else None
        if broker is not None:
            broker.start()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-solar-{os.getpid()}")
        client.max_queued_messages_set(0)
        try:
            client.connect("127.0.0.1", args.port)
            client.loop_start()
            field = SolarField(args.panels, day_s=args.day_s, bad_every=args.bad_every)
            next_t = time.monotonic()
            while not stop.is_set():
                for topic, payload in field.messages(time.time()):
                    client.publish(topic, payload, qos=1)
                next_t += args.period_s
                stop.wait(max(0.0, next_t - time.monotonic()))
        except OSError as e:
            print(f"demo_solar: cannot reach the broker on 127.0.0.1:{args.port}: {e}", file=sys.stderr)
            return 1
        finally:
            client.disconnect()
            client.loop_stop()
            if broker is not None:
                broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""deploy/install.sh: an offline install into a temporary prefix, the installed daemon run from there, a second
install that changes nothing, and the uninstall that keeps (or with --purge removes) the config and the data.

The wheelhouse comes from `make wheelhouse` for this machine's platform (so it needs the package index: PyPI or a
mirror, as `make test` does anyway); the install itself runs with no index at all, and in a network namespace
with no network when `unshare -n` is allowed here. Marked slow: about 40 s, most of it pip.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
# the interpreter this venv was made from: the installer makes its own venv with it
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

pytestmark = pytest.mark.slow


def _run(cmd: list[str], timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


def _offline_prefix() -> list[str]:
    """`unshare -n` (no network at all) when this machine allows it, else nothing: pip --no-index still applies."""
    for cmd in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which("unshare") and _run([*cmd, "true"], timeout=30).returncode == 0:
            return cmd
    return []


def _install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([*_offline_prefix(), "bash", str(INSTALL), "--prefix", str(prefix), "--no-systemd",
                 "--python", str(BASE_PYTHON), *args])  # fmt: skip


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every file and link under root (not __pycache__): mode, size, mtime and content hash; directories' modes."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else ""
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


REBUILT_MARK = "# rebuilt by test_install\n"


def _rebuilt_wheelhouse(wheelhouse: Path, out: Path) -> Path:
    """The wheelhouse with the gateway's wheel rebuilt: same name and version, gateway/__init__.py changed."""
    out.mkdir()
    for f in wheelhouse.glob("*.whl"):
        if not f.name.startswith("substation_gateway-"):
            (out / f.name).symlink_to(f)
            continue
        with zipfile.ZipFile(f) as src, zipfile.ZipFile(out / f.name, "w", zipfile.ZIP_DEFLATED) as dst:
            files = {n: src.read(n) for n in src.namelist()}
            files["gateway/__init__.py"] += REBUILT_MARK.encode()
            record = next(n for n in files if n.endswith(".dist-info/RECORD"))
            data = files["gateway/__init__.py"]
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            files[record] = "".join(
                f"gateway/__init__.py,sha256={digest},{len(data)}\n" if line.startswith("gateway/__init__.py,")
                else line for line in files[record].decode().splitlines(keepends=True)
            ).encode()  # fmt: skip
            for name, content in files.items():
                dst.writestr(name, content)
    return out


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make wheelhouse` for this machine's platform (the target's wheels, as a technician's laptop would make)."""
    out = tmp_path_factory.mktemp("wheelhouse") / "wh"
    res = _run(["make", "-C", str(REPO), "--no-print-directory", "wheelhouse",
                f"PLATFORM=manylinux2014_{platform.machine()}", f"WHEELHOUSE={out}",
                f"PYVER={sys.version_info[0]}{sys.version_info[1]}"], timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert list(out.glob("substation_gateway-*.whl")) and (out / "SHA256SUMS").is_file()
    return out


@pytest.fixture(scope="module")
def prefix(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prefix")
    res = _install(root, "--wheelhouse", str(wheelhouse))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Next steps" in res.stdout and "user setup-token -c " + str(root / "etc/gateway/gateway.toml") in res.stdout
    return root


def test_the_install_puts_everything_where_the_unit_expects_it(prefix: Path) -> None:
    venv = prefix / "opt/gateway/venv"
    # the gateway is the installed wheel in the new venv, not this checkout
    res = _run([str(venv / "bin/python"), "-c", "import gateway, duckdb; print(gateway.__file__)"], cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(str(venv / "lib")), res.stdout
    # unit files, with their paths moved under the prefix (and nothing else changed)
    unit = (prefix / "etc/systemd/system/gateway.service").read_text()
    original = (REPO / "deploy/systemd/gateway.service").read_text()
    assert unit == original.replace("/opt/gateway", f"{prefix}/opt/gateway").replace(
        "/etc/gateway", f"{prefix}/etc/gateway").replace("/var/lib/gateway", f"{prefix}/var/lib/gateway")  # fmt: skip
    assert f"ExecStart={venv}/bin/gateway run -c {prefix}/etc/gateway/gateway.toml" in unit
    firstboot = (prefix / "etc/systemd/system/gateway-firstboot.service").read_text()  # first-boot provisioning
    assert f"ExecStart={venv}/bin/gateway provision" in firstboot and "Wants=network-online.target gateway-firstboot" \
        in unit
    assert (prefix / "usr/lib/sysusers.d/gateway.conf").is_file()
    assert (prefix / "usr/lib/tmpfiles.d/gateway.conf").is_file()
    assert os.readlink(prefix / "usr/local/bin/gateway") == str(venv / "bin/gateway")
    assert (prefix / "opt/gateway/docs/deployment.md").is_file()  # the unit's Documentation=
    assert os.access(prefix / "opt/gateway/uninstall", os.X_OK)
    # config and data directories as gateway.tmpfiles.conf says: 0750; the config file 0640
    for d in ("etc/gateway", "var/lib/gateway"):
        assert stat.S_IMODE((prefix / d).stat().st_mode) == 0o750, d
    config = prefix / "etc/gateway/gateway.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert f'data_dir = "{prefix}/var/lib/gateway"' in config.read_text()
    # the default config is valid, checked by the installed command
    res = _run([str(venv / "bin/gateway"), "check-config", str(config)], cwd="/")
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout


class _NotifyListener:
    """A systemd notify socket: the datagrams the daemon sends (READY=1, STATUS=..., STOPPING=1)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gw-notify-")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
        return self.messages

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def modbus_sim() -> Iterator[int]:
    """A simulated IED (hil_tests.modbus_sim) on loopback in its own process: unit 1, input register 0 = 123.5."""
    code = (
        "import asyncio\n"
        "from hil_tests.modbus_sim import SimServer, SimUnit\n"
        "async def main():\n"
        "    unit = SimUnit(1)\n"
        "    unit.set('input', 0, 123.5, 'float32')\n"
        "    async with SimServer([unit], tcp=('127.0.0.1', 0)) as srv:\n"
        "        print(srv.port, flush=True)\n"
        "        await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_installed_daemon_polls_and_stops_cleanly(prefix: Path, modbus_sim: int) -> None:
    config = prefix / "etc/gateway/gateway.toml"
    data = prefix / "var/lib/gateway"
    # the technician's edit: one Modbus link to the simulated IED, the panel off
    config.write_text(f"""version = 1
[gateway]
id = "gw-install-test"
data_dir = "{data}"
[panel]
port = 0
[[links]]
name = "line1"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_sim}
[[links.devices]]
name = "feeder1"
unit_id = 1
timeout_s = 0.5
points = [{{ name = "Ia", kind = "input", address = 0, type = "float32", unit = "A", period_s = 0.2 }}]
""")
    gateway = prefix / "opt/gateway/venv/bin/gateway"
    assert _run([str(gateway), "check-config", str(config)], cwd="/").returncode == 0
    listener = _NotifyListener()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "30000000"}
    log = prefix / "gateway.log"
    with log.open("wb") as out:  # as the unit runs it: WorkingDirectory= is the data directory
        proc = subprocess.Popen([str(gateway), "run", "-c", str(config)], cwd=data, env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: "READY=1" in listener.drain(), 30, "READY=1")
        wait_until(lambda: any(m.startswith("STATUS=polling 1 devices (1 ok)") for m in listener.drain()), 30,
                   "the device polled ok")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        listener.drain()
        listener.close()
    assert "STOPPING=1" in listener.messages
    with duckdb.connect(str(data / "gateway.duckdb"), read_only=True) as db:
        row = db.execute("SELECT count(*), max(value) FROM readings r JOIN points p ON p.id = r.point_id "
                         "WHERE p.name = 'feeder1.Ia'").fetchone()  # fmt: skip
    assert row is not None and row[0] >= 1 and row[1] == pytest.approx(123.5), row


def test_a_second_install_changes_nothing_and_uninstall_keeps_config_and_data(prefix: Path, wheelhouse: Path) -> None:
    """Runs last in this module: it uninstalls the shared prefix."""
    config = prefix / "etc/gateway/gateway.toml"
    data = prefix / "var/lib/gateway"
    with config.open("a") as f:
        f.write("# edited on site\n")
    (data / "site-notes.txt").write_text("kept\n")
    edited = config.read_text()
    before = _snapshot(prefix)

    res = _install(prefix, "--wheelhouse", str(wheelhouse))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "keeping the existing config" in res.stdout and "reusing" in res.stdout
    after = _snapshot(prefix)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], changed
    assert config.read_text() == edited

    # a new build of the same version (0.1.0 again) is installed all the same, and only once
    rebuilt = _rebuilt_wheelhouse(wheelhouse, prefix.parent / "rebuilt")
    for run in (1, 2):
        res = _install(prefix, "--wheelhouse", str(rebuilt))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert ("another build" in res.stdout) == (run == 1), res.stdout
    init = next((prefix / "opt/gateway/venv/lib").glob("python3*/site-packages/gateway/__init__.py"))
    assert init.read_text().endswith(REBUILT_MARK)
    assert config.read_text() == edited

    # uninstall (the copy the installer left in /opt/gateway): the venv and unit files go, config and data stay
    res = _run(["bash", str(prefix / "opt/gateway/uninstall"), "--prefix", str(prefix), "--no-systemd"])
    assert res.returncode == 0, res.stderr
    for gone in ("opt/gateway", "etc/systemd/system/gateway.service", "etc/systemd/system/gateway-firstboot.service",
                 "usr/lib/sysusers.d/gateway.conf",
                 "usr/lib/tmpfiles.d/gateway.conf", "usr/local/bin/gateway"):  # fmt: skip
        assert not os.path.lexists(prefix / gone), gone
    assert config.read_text() == edited
    assert (data / "site-notes.txt").read_text() == "kept\n" and (data / "gateway.duckdb").exists()
    assert "--purge" in res.stdout

    # uninstalling again is harmless; --purge removes the config and the data
    res = _run(["bash", str(REPO / "deploy/uninstall"), "--prefix", str(prefix), "--no-systemd", "--purge"])
    assert res.returncode == 0, res.stderr
    assert not (prefix / "etc/gateway").exists() and not data.exists()


def test_a_damaged_wheelhouse_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    wh.mkdir()
    (wh / "substation_gateway-0.1.0-py3-none-any.whl").write_bytes(b"truncated")
    (wh / "SHA256SUMS").write_text(f"{'0' * 64}  substation_gateway-0.1.0-py3-none-any.whl\n")
    res = _install(tmp_path / "root", "--wheelhouse", str(wh))
    assert res.returncode == 1 and "the wheelhouse is damaged" in res.stderr, res.stderr
    assert not (tmp_path / "root/opt").exists() and not (tmp_path / "root/etc").exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    assert _run(["bash", "-n", str(INSTALL)]).returncode == 0  # the script parses
    res = _run(["bash", str(INSTALL), "--prefix", str(tmp_path), "--purge"])
    assert res.returncode == 1 and "--purge goes with --uninstall" in res.stderr
    res = _run(["bash", str(INSTALL), "--bogus"])
    assert res.returncode == 1 and "unknown option: --bogus" in res.stderr
    res = _run(["bash", str(INSTALL), "--help"])
    assert res.returncode == 0 and "--wheelhouse DIR" in res.stdout

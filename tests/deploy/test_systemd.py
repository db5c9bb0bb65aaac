"""The systemd unit files in deploy/systemd/ are valid and say what docs/deployment.md says they say."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALLED_EXEC = "/opt/gateway/venv/bin/gateway"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    # The unit names the installed path, which does not exist on a build machine (verify would say so): check a
    # copy that runs this checkout's own console script instead, and demand a silent verify.
    unit = (UNITS / "gateway.service").read_text()
    assert unit.count(INSTALLED_EXEC) == 1
    gateway_exe = Path(sys.executable).parent / "gateway"
    assert gateway_exe.exists()
    copy = tmp_path / "gateway.service"
    copy.write_text(unit.replace(INSTALLED_EXEC, str(gateway_exe)))
    res = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "" and res.stdout.strip() == ""


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt directive is reported."""
    bad = tmp_path / "gateway.service"
    bad.write_text((UNITS / "gateway.service").read_text().replace("WatchdogSec=", "WatchDogSec=")
                   .replace(INSTALLED_EXEC, str(Path(sys.executable).parent / "gateway")))  # fmt: skip
    res = subprocess.run([SYSTEMD_ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "WatchDogSec" in res.stderr


def test_unit_contract() -> None:
    d = _directives(UNITS / "gateway.service")
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main" and one["WatchdogSec"] == "30"
    assert one["ExecStart"] == f"{INSTALLED_EXEC} run -c /etc/gateway/gateway.toml"
    assert one["User"] == one["Group"] == "gateway" and one["SupplementaryGroups"] == "dialout"
    assert one["ProtectSystem"] == "strict" and one["ReadWritePaths"] == "/var/lib/gateway"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one["LimitMEMLOCK"] == "infinity" and int(one["LimitRTPRIO"]) >= 80  # protection: SCHED_FIFO 80
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert "CPUSchedulingPolicy" not in d and "CPUAffinity" not in d  # per thread, in the protection process
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables", "ProtectKernelModules"):
        assert one[key] == "yes", key


def test_sysusers_creates_the_user_in_dialout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc" / "shadow").touch()
    (root / "etc" / "gshadow").touch()
    sysusers = shutil.which("systemd-sysusers") or "/usr/bin/systemd-sysusers"
    res = subprocess.run([sysusers, f"--root={root}", str(UNITS / "gateway.sysusers.conf")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    assert any(line.startswith("gateway:x:") and ":/var/lib/gateway:" in line for line in passwd.splitlines())
    assert any(line.startswith("gateway:x:") for line in group.splitlines())
    assert any(line.startswith("dialout:x:20:") and line.endswith("gateway") for line in group.splitlines())


def test_tmpfiles_creates_a_private_data_dir() -> None:
    lines = [
        line.split() for line in (UNITS / "gateway.tmpfiles.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    assert ["d", "/var/lib/gateway", "0750", "gateway", "gateway", "-"] in lines

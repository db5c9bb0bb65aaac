"""``gateway user ...`` and ``gateway panel-cert`` through ``gateway.cli.main``."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.panel import cli as panel_cli
from gateway.panel.roles import Role
from gateway.panel.tls import fingerprint
from gateway.panel.users import UserStore

PW = "correct horse"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text('version = 1\n\n[gateway]\nid = "sub-north-01"\ndata_dir = "data"\n')
    return p


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "panel" / "users.json"


def run(args: list[str], monkeypatch: pytest.MonkeyPatch | None = None, stdin: str | None = None) -> int:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(args)


def add(config: Path, name: str, role: str, monkeypatch: pytest.MonkeyPatch, pw: str = PW) -> int:
    return run(["user", "add", "-c", str(config), name, "--role", role, "--password-stdin"], monkeypatch, pw + "\n")


def test_setup_token(config: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "setup-token", "-c", str(config), "--ttl-h", "2"]) == 0
    out = capsys.readouterr().out
    token = out.split("setup token: ")[1].split()[0]
    assert f"/setup?token={token}" in out and "first admin" in out and "once" in out
    assert UserStore(users_file).check_setup_token(token)
    assert add(config, "alice", "admin", monkeypatch) == 0
    capsys.readouterr()
    assert main(["user", "setup-token", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "admin exists" in err and "Traceback" not in err
    assert not UserStore(users_file).check_setup_token(token)


def test_add_list_role_disable_remove(config: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert add(config, "alice", "admin", monkeypatch) == 0
    assert add(config, "bob", "Operator", monkeypatch) == 0
    assert "added bob (operator)" in capsys.readouterr().out
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    store = UserStore(users_file)
    assert store.verify("bob", PW) is not None

    assert main(["user", "list", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED", "DISABLED", "API", "TOKENS"]
    assert lines[1].split()[:2] == ["alice", "admin"] and lines[2].split()[:2] == ["bob", "operator"]
    assert lines[2].split()[-2:] == ["no", "0"]

    assert main(["user", "role", "-c", str(config), "bob", "engineer"]) == 0
    assert store.get("bob").role == Role.ENGINEER  # type: ignore[union-attr]
    assert main(["user", "disable", "-c", str(config), "bob"]) == 0
    assert store.verify("bob", PW) is None
    capsys.readouterr()
    main(["user", "list", "-c", str(config)])
    assert capsys.readouterr().out.splitlines()[2].split()[-2:] == ["yes", "0"]
    assert main(["user", "enable", "-c", str(config), "bob"]) == 0
    assert store.verify("bob", PW) is not None
    assert main(["user", "remove", "-c", str(config), "bob"]) == 0
    assert store.get("bob") is None


def test_refusals_are_clear_and_exit_1(config: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert add(config, "alice", "admin", monkeypatch) == 0
    capsys.readouterr()
    cases: list[tuple[list[str], str | None, str]] = [
        (["user", "add", "-c", str(config), "bob", "--role", "boss", "--password-stdin"], PW, "unknown role 'boss'"),
        (["user", "add", "-c", str(config), "bob", "--role", "viewer", "--password-stdin"], "short", "too short"),
        (["user", "add", "-c", str(config), "bad name", "--role", "viewer", "--password-stdin"], PW, "invalid user"),
        (["user", "add", "-c", str(config), "alice", "--role", "viewer", "--password-stdin"], PW, "exists"),
        (["user", "add", "-c", str(config), "bob", "--role", "viewer", "--password-stdin"], "", "no password"),
        (["user", "remove", "-c", str(config), "alice"], None, "last admin"),
        (["user", "role", "-c", str(config), "alice", "viewer"], None, "last admin"),
        (["user", "disable", "-c", str(config), "alice"], None, "last admin"),
        (["user", "remove", "-c", str(config), "nobody"], None, "no user 'nobody'"),
        (["user", "passwd", "-c", str(config), "nobody", "--password-stdin"], PW, "no user 'nobody'"),
        (["user", "token", "-c", str(config), "nobody"], None, "no user 'nobody'"),
    ]
    for args, stdin, message in cases:
        assert run(args, monkeypatch, None if stdin is None else stdin + "\n") == 1, args
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and "Traceback" not in err, (args, err)


def test_passwd_with_prompts(config: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert add(config, "alice", "admin", monkeypatch) == 0
    answers = iter(["a new password", "a new password", "one password", "another one!"])
    monkeypatch.setattr(panel_cli.getpass, "getpass", lambda prompt="": next(answers))
    assert main(["user", "passwd", "-c", str(config), "alice"]) == 0
    assert UserStore(users_file).verify("alice", "a new password") is not None
    assert main(["user", "passwd", "-c", str(config), "alice"]) == 1
    assert "do not match" in capsys.readouterr().err
    assert UserStore(users_file).verify("alice", "a new password") is not None
    assert run(["user", "passwd", "-c", str(config), "alice", "--password-stdin"], monkeypatch, "third password\n") == 0
    assert UserStore(users_file).verify("alice", "third password") is not None


def test_add_with_prompts(config: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([PW, PW])
    monkeypatch.setattr(panel_cli.getpass, "getpass", lambda prompt="": next(answers))
    assert main(["user", "add", "-c", str(config), "carol", "--role", "viewer"]) == 0
    assert UserStore(users_file).verify("carol", PW) is not None


def test_api_token(config: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert add(config, "alice", "admin", monkeypatch) == 0
    capsys.readouterr()
    assert main(["user", "token", "-c", str(config), "alice"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert token.startswith("gwp_") and "Bearer" in captured.err
    user = UserStore(users_file).verify_api_token(token)
    assert user is not None and user.name == "alice"
    assert token not in users_file.read_text()


def test_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[gateway]\nid = "x"\n[panel]\nport = 99999\n')
    assert main(["user", "list", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "panel.port" in err and "Traceback" not in err
    assert main(["panel-cert", "-c", str(bad)]) == 1
    assert main(["user", "list", "-c", str(tmp_path / "missing.toml")]) == 3
    assert "file not found" in capsys.readouterr().err


def test_usage_errors(config: Path) -> None:
    assert main(["user"]) == 2
    assert main(["user", "list"]) == 2  # -c is required
    assert main(["user", "frobnicate", "-c", str(config)]) == 2


def test_corrupt_users_file(config: Path, users_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_text("{")
    assert main(["user", "list", "-c", str(config)]) == 3
    assert "not valid JSON" in capsys.readouterr().err


def test_panel_cert(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "data" / "panel" / "tls" / "cert.pem"
    assert main(["panel-cert", "-c", str(config), "--san", "gw-north.example"]) == 0
    out = capsys.readouterr().out
    assert "generated" in out and fingerprint(cert) in out
    assert "gw-north.example" in out and "127.0.0.1" in out and "valid until: 20" in out
    assert stat.S_IMODE((cert.parent / "key.pem").stat().st_mode) == 0o600
    first = fingerprint(cert)
    assert main(["panel-cert", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "generated" not in out and first in out
    assert main(["panel-cert", "-c", str(config), "--renew"]) == 0
    assert fingerprint(cert) != first and fingerprint(cert) in capsys.readouterr().out


def test_panel_cert_with_the_sites_own_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hil_tests.testpki import CertAuthority

    server = CertAuthority(tmp_path / "pki").issue_server()
    cfg = tmp_path / "own.toml"
    cfg.write_text(f'version = 1\n[gateway]\nid = "gw"\ndata_dir = "data"\n[panel]\n'
                   f'cert_file = "{server.cert_file}"\nkey_file = "{server.key_file}"\n')
    assert main(["panel-cert", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert fingerprint(server.cert_file) in out and "[panel] cert_file" in out
    assert not (tmp_path / "data" / "panel" / "tls").exists()
    assert main(["panel-cert", "-c", str(cfg), "--renew"]) == 1
    assert "site PKI" in capsys.readouterr().err
    json.dumps(out)  # plain text output

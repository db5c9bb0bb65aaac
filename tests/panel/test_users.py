"""UserStore: the users file (format, mode, atomic writes, reload), scrypt hashes, policy, last admin, tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
from pathlib import Path

import pytest

from gateway.panel import users as users_mod
from gateway.panel.roles import Role
from gateway.panel.users import UserError, UserFileError, UserStore, hash_password

PW = "correct horse"


class WallClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "panel" / "users.json"


@pytest.fixture
def store(path: Path) -> UserStore:
    return UserStore(path)


def test_file_format_mode_and_directory(store: UserStore, path: Path) -> None:
    assert not store.has_admin() and store.list() == []
    user = store.add("alice", PW, Role.ADMIN)
    assert (user.name, user.role, user.disabled) == ("alice", Role.ADMIN, False)
    assert user.created_ns > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 1
    rec = data["users"]["alice"]
    assert rec["role"] == "admin" and rec["disabled"] is False and rec["created_ns"] == user.created_ns
    assert PW not in path.read_text()
    assert store.get("alice") == user and store.list() == [user] and store.has_admin()
    assert store.get("bob") is None


def test_kdf_format_and_parameters(store: UserStore, path: Path) -> None:
    store.add("alice", PW, Role.VIEWER)
    encoded = json.loads(path.read_text())["users"]["alice"]["hash"]
    scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    salt, dk = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
    assert len(salt) == 16 and len(dk) == 32
    assert hashlib.scrypt(PW.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32) == dk
    assert hash_password(PW) != hash_password(PW)  # fresh salt each time


def test_verify(store: UserStore) -> None:
    store.add("alice", PW, Role.OPERATOR)
    user = store.verify("alice", PW)
    assert user is not None and user.role == Role.OPERATOR
    assert store.verify("alice", PW + "x") is None
    assert store.verify("ALICE", PW) is None


def test_verify_unknown_user_runs_the_kdf(store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add("alice", PW, Role.OPERATOR)
    calls: list[int] = []
    real = users_mod._scrypt

    def counting(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        calls.append(n)
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(users_mod, "_scrypt", counting)
    assert store.verify("mallory", PW) is None
    assert store.verify("not a valid name!", PW) is None
    assert calls == [2**14, 2**14]  # same cost as a real user


def test_old_parameters_are_rehashed_on_login(store: UserStore, path: Path) -> None:
    store.add("alice", PW, Role.VIEWER)
    data = json.loads(path.read_text())
    data["users"]["alice"]["hash"] = hash_password(PW, n=2**12)
    path.write_text(json.dumps(data))
    assert store.verify("alice", PW) is not None
    assert json.loads(path.read_text())["users"]["alice"]["hash"].startswith(f"scrypt${2**14}$8$1$")
    assert store.verify("alice", PW) is not None


@pytest.mark.parametrize("name", ["", "a" * 33, "bad name", "semi;colon", "ünï", "a/b"])
def test_bad_names(store: UserStore, name: str) -> None:
    with pytest.raises(UserError, match="invalid user name"):
        store.add(name, PW, Role.VIEWER)


def test_name_rules_and_duplicates(store: UserStore) -> None:
    store.add("a" * 32, PW, Role.VIEWER)
    store.add("Op_1.x-y", PW, Role.VIEWER)
    with pytest.raises(UserError, match="exists"):
        store.add("op_1.X-Y", PW, Role.VIEWER)


def test_password_policy(store: UserStore) -> None:
    with pytest.raises(UserError, match="at least 10"):
        store.add("alice", "123456789", Role.VIEWER)
    with pytest.raises(UserError, match="user name"):
        store.add("alice_smith", "Alice_Smith", Role.VIEWER)
    store.add("alice", "1234567890", Role.VIEWER)
    with pytest.raises(UserError, match="at least 10"):
        store.set_password("alice", "short")
    assert store.verify("alice", "1234567890") is not None


def test_set_password(store: UserStore) -> None:
    before = store.add("alice", PW, Role.VIEWER)
    store.set_password("alice", "another password")
    assert store.verify("alice", PW) is None
    after = store.verify("alice", "another password")
    assert after is not None and after.password_changed_ns >= before.password_changed_ns
    with pytest.raises(UserError, match="no user"):
        store.set_password("bob", "another password")


def test_last_admin_is_protected(store: UserStore) -> None:
    store.add("alice", PW, Role.ADMIN)
    store.add("bob", PW, Role.ENGINEER)
    for change in (lambda: store.remove("alice"), lambda: store.set_role("alice", Role.ENGINEER),
                   lambda: store.set_disabled("alice", True)):
        with pytest.raises(UserError, match="last admin"):
            change()
    assert store.get("alice") == store.verify("alice", PW)
    store.set_role("bob", Role.ADMIN)
    store.set_role("alice", Role.VIEWER)  # bob is admin now
    with pytest.raises(UserError, match="last admin"):
        store.remove("bob")
    store.set_role("alice", Role.ADMIN)
    store.remove("bob")
    assert [u.name for u in store.list()] == ["alice"]
    with pytest.raises(UserError, match="no user"):
        store.remove("bob")


def test_disabled_users_cannot_log_in(store: UserStore) -> None:
    store.add("alice", PW, Role.ADMIN)
    store.add("bob", PW, Role.OPERATOR)
    store.set_disabled("bob", True)
    assert store.verify("bob", PW) is None
    checked = store.check_password("bob", PW)
    assert checked is not None and checked.disabled
    assert store.check_password("bob", "wrong password") is None
    store.set_disabled("bob", False)
    assert store.verify("bob", PW) is not None


def test_setup_token_single_use(store: UserStore, path: Path) -> None:
    token = store.issue_setup_token()
    assert len(token) >= 43 and token not in path.read_text()
    assert store.check_setup_token(token)
    assert not store.consume_setup_token("wrong")
    assert store.consume_setup_token(token)
    assert not store.consume_setup_token(token)
    assert not store.check_setup_token(token)


def test_setup_token_expires(path: Path) -> None:
    clock = WallClock()
    store = UserStore(path, clock=clock)
    token = store.issue_setup_token(ttl_s=3600)
    clock.t += 3599
    assert store.check_setup_token(token)
    clock.t += 2
    assert not store.check_setup_token(token)
    assert not store.consume_setup_token(token)


def test_setup_token_only_creates_the_first_admin(store: UserStore) -> None:
    token = store.issue_setup_token()
    with pytest.raises(UserError, match="at least 10"):
        store.create_first_admin(token, "alice", "short")
    assert store.check_setup_token(token)  # a refused password does not use the token up
    other = store.issue_setup_token()
    admin = store.create_first_admin(token, "alice", PW)
    assert admin.role == Role.ADMIN and store.verify("alice", PW) == admin
    assert not store.consume_setup_token(other)  # an admin exists: every setup token is void
    with pytest.raises(UserError, match="admin exists"):
        store.issue_setup_token()
    with pytest.raises(UserError, match="invalid or expired"):
        store.create_first_admin(other, "mallory", PW)


def test_adding_an_admin_voids_setup_tokens(store: UserStore) -> None:
    token = store.issue_setup_token()
    store.add("alice", PW, Role.ADMIN)
    assert not store.consume_setup_token(token)
    with pytest.raises(UserError):
        store.issue_setup_token(ttl_s=0)


def test_api_tokens(store: UserStore, path: Path) -> None:
    store.add("alice", PW, Role.ADMIN)
    store.add("bob", PW, Role.OPERATOR)
    token = store.issue_api_token("bob")
    assert token.startswith("gwp_") and len(token) > 40
    assert token not in path.read_text()
    user = store.verify_api_token(token)
    assert user is not None and (user.name, user.role) == ("bob", Role.OPERATOR)
    assert store.verify_api_token(token + "x") is None
    assert store.verify_api_token(token[4:]) is None
    assert store.verify_api_token("") is None
    store.set_role("bob", Role.VIEWER)
    assert store.verify_api_token(token).role == Role.VIEWER  # type: ignore[union-attr]
    store.set_disabled("bob", True)
    assert store.verify_api_token(token) is None
    store.set_disabled("bob", False)
    assert store.api_token_count("bob") == 1
    store.remove("bob")
    assert store.verify_api_token(token) is None
    assert json.loads(path.read_text())["api_tokens"] == {}
    with pytest.raises(UserError, match="no user"):
        store.issue_api_token("bob")
    t2 = store.issue_api_token("alice")
    assert store.revoke_api_tokens("alice") == 1 and store.verify_api_token(t2) is None


def test_reload_when_another_process_changes_the_file(path: Path) -> None:
    daemon, cli = UserStore(path), UserStore(path)
    assert daemon.get("alice") is None
    cli.add("alice", PW, Role.ADMIN)
    assert daemon.get("alice") is not None and daemon.has_admin()
    cli.add("bob", PW, Role.VIEWER)
    cli.set_disabled("bob", True)
    bob = daemon.get("bob")
    assert bob is not None and bob.disabled
    cli.remove("bob")
    assert daemon.get("bob") is None


def test_bad_file_is_reported(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(UserFileError, match="not valid JSON"):
        UserStore(path).list()
    path.write_text(json.dumps({"version": 99, "users": {}}))
    with pytest.raises(UserFileError, match="version 99"):
        UserStore(path).get("x")


def test_concurrent_writes_are_atomic_and_none_is_lost(path: Path) -> None:
    UserStore(path).add("alice", PW, Role.ADMIN)
    stores = [UserStore(path), UserStore(path)]  # like two processes: separate caches, same file
    per_thread = 15
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = 0

    def writer(store: UserStore) -> None:
        try:
            for _ in range(per_thread):
                store.issue_api_token("alice")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                data = json.loads(path.read_text())  # never half a file
                assert data["version"] == 1
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                reads += 1
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores for _ in range(2)]
    rt = threading.Thread(target=reader)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    rt.join()
    assert not errors
    assert reads > 0
    assert UserStore(path).api_token_count("alice") == 4 * per_thread
    assert not [p for p in path.parent.iterdir() if p.name != "users.json"]  # no temp files left

"""SessionManager with a fake clock: login, back-off (per name and per address), idle/absolute expiry, revocation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.panel.roles import Role
from gateway.panel.sessions import MAX_SESSIONS_PER_USER, SessionManager
from gateway.panel.users import User, UserStore

PW = "correct horse"
IDLE = 900.0
MAX = 43200.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path / "panel" / "users.json")
    store.add("alice", PW, Role.ADMIN)
    store.add("bob", PW, Role.OPERATOR)
    return store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sm(users: UserStore, clock: FakeClock) -> SessionManager:
    return SessionManager(users, idle_s=IDLE, max_s=MAX, clock=clock)


class CountingStore:
    """Counts password checks (to prove a locked login never checks the password)."""

    def __init__(self, store: UserStore) -> None:
        self.store = store
        self.checks = 0

    def check_password(self, name: str, password: str) -> User | None:
        self.checks += 1
        return self.store.check_password(name, password)


async def test_login_and_get(sm: SessionManager, clock: FakeClock) -> None:
    r = await sm.login("bob", PW, "10.0.0.5")
    s = r.session
    assert s is not None and r.reason == ""
    assert (s.user, s.role, s.client, s.created, s.last_seen) == ("bob", Role.OPERATOR, "10.0.0.5", 1000.0, 1000.0)
    assert len(s.id) >= 43 and len(s.csrf) >= 43 and s.id != s.csrf
    clock.advance(10)
    got = sm.get(s.id)
    assert got is s and got.last_seen == 1010.0
    assert sm.get("nope") is None
    sm.logout(s.id)
    assert sm.get(s.id) is None
    sm.logout(s.id)  # idempotent


async def test_bad_credentials(sm: SessionManager) -> None:
    r = await sm.login("bob", "wrong password", "c")
    assert r.session is None and r.reason == "bad-credentials" and r.retry_after_s == 0
    r = await sm.login("nobody", PW, "c")
    assert r.session is None and r.reason == "bad-credentials"


async def test_disabled_user(sm: SessionManager, users: UserStore) -> None:
    users.set_disabled("bob", True)
    r = await sm.login("bob", PW, "c")
    assert r.session is None and r.reason == "disabled"
    r = await sm.login("bob", "wrong password", "c")
    assert r.reason == "bad-credentials"  # "disabled" only for the right password


async def test_idle_expiry(sm: SessionManager, clock: FakeClock) -> None:
    s = (await sm.login("bob", PW, "c")).session
    assert s is not None
    clock.advance(IDLE - 1)
    assert sm.get(s.id) is s
    clock.advance(IDLE - 1)  # activity keeps it alive
    assert sm.get(s.id) is s
    clock.advance(IDLE + 1)
    assert sm.get(s.id) is None
    assert len(sm) == 0
    clock.advance(-IDLE)  # gone for good, even if the clock looked earlier
    assert sm.get(s.id) is None


async def test_absolute_expiry(sm: SessionManager, clock: FakeClock) -> None:
    s = (await sm.login("bob", PW, "c")).session
    assert s is not None
    while clock.t + 600 - s.created <= MAX:
        clock.advance(600)
        assert sm.get(s.id) is s
    clock.advance(600)
    assert sm.get(s.id) is None


async def test_lockout_sequence(users: UserStore, clock: FakeClock) -> None:
    counting = CountingStore(users)
    sm = SessionManager(users, idle_s=IDLE, max_s=MAX, clock=clock)
    sm.users = counting  # type: ignore[assignment]
    for _ in range(4):
        r = await sm.login("bob", "wrong password", "10.0.0.5")
        assert (r.reason, r.retry_after_s) == ("bad-credentials", 0.0)
    r = await sm.login("bob", "wrong password", "10.0.0.5")  # 5th: locks for 30 s
    assert (r.reason, r.retry_after_s) == ("bad-credentials", 30.0)
    checks = counting.checks
    r = await sm.login("bob", PW, "10.0.0.5")  # the right password while locked
    assert r.session is None and r.reason == "locked" and r.retry_after_s == 30.0
    assert counting.checks == checks  # not even checked
    r = await sm.login("bob", PW, "10.9.9.9")  # another address: the name is locked too
    assert r.reason == "locked"
    clock.advance(29)
    r = await sm.login("bob", PW, "10.0.0.5")
    assert r.reason == "locked" and r.retry_after_s == pytest.approx(1.0)
    clock.advance(1)
    r = await sm.login("bob", "wrong password", "10.0.0.5")  # 6th: 60 s
    assert (r.reason, r.retry_after_s) == ("bad-credentials", 60.0)
    clock.advance(60)
    r = await sm.login("bob", "wrong password", "10.0.0.5")  # 7th: 120 s
    assert r.retry_after_s == 120.0
    clock.advance(120)
    r = await sm.login("bob", PW, "10.0.0.5")
    assert r.session is not None
    # success reset both counters: one more failure does not lock
    r = await sm.login("bob", "wrong password", "10.0.0.5")
    assert (r.reason, r.retry_after_s) == ("bad-credentials", 0.0)
    assert sm.retry_after("bob", "10.0.0.5") == 0.0


async def test_lock_is_capped_at_15_minutes(sm: SessionManager, clock: FakeClock) -> None:
    waits = []
    for _ in range(12):
        r = await sm.login("bob", "wrong password", "c")
        waits.append(r.retry_after_s)
        clock.advance(r.retry_after_s)
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0, 900.0]


async def test_failures_expire_after_the_window(sm: SessionManager, clock: FakeClock) -> None:
    for _ in range(4):
        await sm.login("bob", "wrong password", "c")
    clock.advance(15 * 60 + 1)
    r = await sm.login("bob", "wrong password", "c")
    assert (r.reason, r.retry_after_s) == ("bad-credentials", 0.0)


async def test_client_address_is_locked_across_names(sm: SessionManager) -> None:
    for i in range(5):
        await sm.login(f"guess{i}", "wrong password", "10.6.6.6")
    r = await sm.login("alice", PW, "10.6.6.6")
    assert r.reason == "locked" and r.retry_after_s == 30.0
    r = await sm.login("alice", PW, "10.0.0.1")  # the names were not locked
    assert r.session is not None


async def test_name_is_locked_across_addresses(sm: SessionManager) -> None:
    for i in range(5):
        await sm.login("alice", "wrong password", f"10.0.0.{i}")
    assert (await sm.login("alice", PW, "10.0.0.99")).reason == "locked"
    assert (await sm.login("Alice", PW, "10.0.0.99")).reason == "locked"  # name case does not dodge it
    assert (await sm.login("bob", PW, "10.0.0.99")).session is not None


async def test_parallel_guesses_cannot_race_past_the_lock(sm: SessionManager) -> None:
    results = await asyncio.gather(*(sm.login("bob", f"wrong password {i}", "c") for i in range(8)))
    reasons = [r.reason for r in results]
    assert reasons.count("bad-credentials") == 5 and reasons.count("locked") == 3


async def test_revoke_update_role_and_cap(sm: SessionManager, clock: FakeClock) -> None:
    first = (await sm.login("bob", PW, "c")).session
    assert first is not None
    others = []
    for _ in range(MAX_SESSIONS_PER_USER):
        clock.advance(1)
        s = (await sm.login("bob", PW, "c")).session
        assert s is not None
        others.append(s)
    assert sm.get(first.id) is None  # the oldest was dropped
    assert len(sm.sessions_of("bob")) == MAX_SESSIONS_PER_USER
    a = (await sm.login("alice", PW, "c")).session
    assert a is not None
    sm.update_role("bob", Role.VIEWER)
    assert all(s.role == Role.VIEWER for s in sm.sessions_of("bob"))
    assert sm.revoke_user("bob") == MAX_SESSIONS_PER_USER
    assert sm.get(others[-1].id) is None
    assert sm.get(a.id) is a


async def test_changes_in_the_user_store_end_or_update_sessions(sm: SessionManager, users: UserStore,
                                                                tmp_path: Path) -> None:
    cli = UserStore(users.path)  # the `gateway user` command, another process
    s = (await sm.login("bob", PW, "c")).session
    assert s is not None
    cli.set_role("bob", Role.ENGINEER)
    got = sm.get(s.id)
    assert got is not None and got.role == Role.ENGINEER
    cli.set_password("bob", "a new password")
    assert sm.get(s.id) is None
    s = (await sm.login("bob", "a new password", "c")).session
    assert s is not None
    cli.set_disabled("bob", True)
    assert sm.get(s.id) is None
    cli.set_disabled("bob", False)
    s = (await sm.login("bob", "a new password", "c")).session
    assert s is not None
    cli.remove("bob")
    assert sm.get(s.id) is None


def test_bad_timeouts(users: UserStore) -> None:
    with pytest.raises(ValueError):
        SessionManager(users, idle_s=0)

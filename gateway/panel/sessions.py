"""Login sessions for the panel: session ids, CSRF tokens, idle/absolute timeouts, login back-off.

Threads: the event loop only (the password KDF runs in a worker thread via ``asyncio.to_thread``, at most
``kdf_concurrency`` at a time). Clock injected (``clock()`` monotonic seconds) so tests need no sleeps.

Sessions live in memory only (a daemon restart logs everyone out). A session ends after ``idle_s`` without a
request, ``max_s`` after login, on logout, and when its user is removed, disabled or changes password — also
when that was done with the ``gateway user`` command in another process: :meth:`get` checks the user in the
:class:`UserStore` (a ``stat`` of the users file) on every call, and follows role changes.

Login back-off: failures are counted per user name and per client address; the count is forgotten after 15
minutes without a failure (a window that slides with each failure, so an attacker who waits out every lock keeps
the lock at its maximum instead of starting over). From the 5th consecutive failure on, that name (or address)
is locked for 30 s, doubling with each further failure up to 15 min. A locked login is refused *without
checking the password* (a correct password does not unlock it). A successful login resets both counters.
Attempts on the same name or address are serialised, so parallel guesses cannot race past the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.panel.roles import Role
from gateway.panel.users import User, UserStore

FAIL_WINDOW_S = 900.0  # the failure count is forgotten after this long without a failure
FAILS_BEFORE_LOCK = 5  # the 5th consecutive failure locks
LOCK_BASE_S = 30.0  # first lock; doubles with each further failure
LOCK_MAX_S = 900.0
MAX_SESSIONS_PER_USER = 20  # the oldest is dropped beyond this
MAX_TRACKED_KEYS = 10_000  # back-off entries kept (names and addresses); the stalest are dropped beyond this


@dataclass(slots=True)
class Session:
    id: str  # random, 256 bits, the cookie value
    user: str
    role: Role
    csrf: str  # random per session; required on every state change
    created: float  # clock() at login
    last_seen: float  # clock() at the last request
    client: str  # client address at login
    password_changed_ns: int = 0  # the user's password stamp at login: a later password change ends the session


@dataclass(frozen=True, slots=True)
class LoginResult:
    session: Session | None  # set when the login succeeded
    reason: str = ""  # why it failed: "bad-credentials", "locked", "disabled"
    retry_after_s: float = 0.0  # when locked: seconds until the next attempt is allowed


@dataclass(slots=True)
class _Backoff:
    # clock() of each failure in the current streak (the count matters only up to the longest lock)
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    locked_until: float = 0.0
    touched: float = 0.0


class SessionManager:
    def __init__(self, users: UserStore, *, idle_s: float = 900.0, max_s: float = 43200.0,
                 clock: Callable[[], float] | None = None, kdf_concurrency: int = 2) -> None:
        if idle_s <= 0 or max_s <= 0:
            raise ValueError("idle_s and max_s must be positive")
        self.users = users
        self.idle_s = float(idle_s)
        self.max_s = float(max_s)
        self.clock: Callable[[], float] = clock or time.monotonic
        self._sessions: dict[str, Session] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._kdf = asyncio.Semaphore(max(1, kdf_concurrency))

    # -- login back-off ------------------------------------------------------------------------------------------

    @staticmethod
    def _keys(name: str, client: str) -> tuple[str, str]:
        return "user:" + name.casefold(), "client:" + client

    def _locked_for(self, key: str, now: float) -> float:
        b = self._backoff.get(key)
        return max(0.0, b.locked_until - now) if b is not None else 0.0

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until a login for ``name`` from ``client`` is allowed again (0: allowed now)."""
        now = self.clock()
        return max(self._locked_for(k, now) for k in self._keys(name, client))

    def _fail(self, key: str, now: float) -> float:
        b = self._backoff.get(key)
        if b is None:
            if len(self._backoff) >= MAX_TRACKED_KEYS:
                self._prune_backoff(now)
            b = self._backoff[key] = _Backoff()
        if b.failures and now - b.failures[-1] > FAIL_WINDOW_S:  # 15 min without a failure: a fresh start
            b.failures.clear()
        b.failures.append(now)
        b.touched = now
        n = len(b.failures)
        if n >= FAILS_BEFORE_LOCK:
            lock = min(LOCK_BASE_S * 2.0 ** (n - FAILS_BEFORE_LOCK), LOCK_MAX_S)
            b.locked_until = max(b.locked_until, now + lock)
        return max(0.0, b.locked_until - now)

    def _prune_backoff(self, now: float) -> None:
        stale = [k for k, b in self._backoff.items()
                 if b.locked_until <= now and (not b.failures or now - b.failures[-1] > FAIL_WINDOW_S)]
        for k in stale:
            del self._backoff[k]
        excess = len(self._backoff) - MAX_TRACKED_KEYS + 1
        if excess > 0:
            for k in sorted(self._backoff, key=lambda k: self._backoff[k].touched)[:excess]:
                del self._backoff[k]

    @contextlib.asynccontextmanager
    async def _hold(self, key: str) -> AsyncIterator[None]:
        lock, refs = self._key_locks.get(key) or (asyncio.Lock(), 0)
        self._key_locks[key] = (lock, refs + 1)
        try:
            async with lock:
                yield
        finally:
            lock, refs = self._key_locks[key]
            if refs <= 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock, refs - 1)

    # -- login/logout --------------------------------------------------------------------------------------------

    async def login(self, name: str, password: str, client: str) -> LoginResult:
        """Check the password (in a worker thread) unless the name or the client is locked; a session when it
        is right and the user is enabled. Reasons: "locked" (with ``retry_after_s``), "bad-credentials" (with
        ``retry_after_s`` > 0 when this failure started a lock), "disabled" (right password, disabled user)."""
        ukey, ckey = self._keys(name, client)
        wait = self.retry_after(name, client)
        if wait > 0:
            return LoginResult(None, "locked", wait)
        async with self._hold(ukey), self._hold(ckey):  # always name first, then address: no lock cycles
            wait = self.retry_after(name, client)  # an attempt we waited for may have locked it
            if wait > 0:
                return LoginResult(None, "locked", wait)
            async with self._kdf:
                user = await asyncio.to_thread(self.users.check_password, name, password)
            now = self.clock()
            if user is None:
                wait = max(self._fail(ukey, now), self._fail(ckey, now))
                return LoginResult(None, "bad-credentials", wait)
            if user.disabled:
                return LoginResult(None, "disabled")
            self._backoff.pop(ukey, None)
            self._backoff.pop(ckey, None)
            return LoginResult(self._create(user, client, now))

    def _create(self, user: User, client: str, now: float) -> Session:
        self.sweep()
        sess = Session(
            id=secrets.token_urlsafe(32),
            user=user.name,
            role=user.role,
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            client=client,
            password_changed_ns=user.password_changed_ns,
        )
        self._sessions[sess.id] = sess
        mine = sorted((s for s in self._sessions.values() if s.user == user.name), key=lambda s: s.created)
        for old in mine[:-MAX_SESSIONS_PER_USER]:
            del self._sessions[old.id]
        return sess

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.last_seen > self.idle_s or now - s.created > self.max_s

    def get(self, session_id: str) -> Session | None:
        """The live session for a cookie value, its ``last_seen`` refreshed; None (and the session dropped) when
        unknown, idle too long, too old, or its user was removed, disabled or changed password since login."""
        sess = self._sessions.get(session_id)
        if sess is None:
            return None
        now = self.clock()
        if self._expired(sess, now):
            del self._sessions[session_id]
            return None
        user = self.users.get(sess.user)
        if user is None or user.disabled or user.password_changed_ns != sess.password_changed_ns:
            del self._sessions[session_id]
            return None
        sess.role = user.role
        sess.last_seen = now
        return sess

    def logout(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def revoke_user(self, name: str) -> int:
        """End every session of ``name`` (password change, removal, disable); returns how many."""
        ids = [sid for sid, s in self._sessions.items() if s.user == name]
        for sid in ids:
            del self._sessions[sid]
        return len(ids)

    def update_role(self, name: str, role: Role) -> None:
        """Give every live session of ``name`` the new role (effective at its next request)."""
        for s in self._sessions.values():
            if s.user == name:
                s.role = Role(role)

    def sweep(self) -> int:
        """Drop expired sessions (memory); returns how many."""
        now = self.clock()
        ids = [sid for sid, s in self._sessions.items() if self._expired(s, now)]
        for sid in ids:
            del self._sessions[sid]
        return len(ids)

    def sessions_of(self, name: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.user == name]

    def __len__(self) -> int:
        return len(self._sessions)

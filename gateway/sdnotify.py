"""A tiny ``sd_notify(3)`` client: tells systemd the daemon is ready, alive, reloading or stopping.

No dependency: one unix datagram socket to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call is a no-op, so the daemon
behaves the same on a developer's laptop. A send that fails (systemd restarted, socket gone) is logged once and
otherwise ignored: notification is best effort, it must never take the gateway down.

The watchdog interval comes from ``$WATCHDOG_USEC`` (set by systemd from ``WatchdogSec=``); when
``$WATCHDOG_PID`` is set and is not this process the watchdog is someone else's. The daemon pings every half
interval (:attr:`Notifier.watchdog_interval_s`), the rule ``sd_watchdog_enabled(3)`` recommends.

Threads: one :class:`Notifier` per process, used from the gateway's event loop thread; ``send`` does one
non-blocking ``sendto`` and never waits.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("gateway.sdnotify")


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a ``$NOTIFY_SOCKET`` value; ``None`` if it is empty or not a unix socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # the abstract namespace: a leading NUL byte instead of "@"
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd in a VM): not supported here, notification is skipped


def watchdog_usec(environ: Mapping[str, str], pid: int | None = None) -> int:
    """The watchdog timeout in µs for this process (``$WATCHDOG_USEC``), 0 when no watchdog applies to it."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0
    wd_pid = environ.get("WATCHDOG_PID")
    if wd_pid and wd_pid.isdigit() and int(wd_pid) != (os.getpid() if pid is None else pid):
        return 0
    return max(usec, 0)


class Notifier:
    """Sends state lines to the service manager. Every method is a no-op when :attr:`enabled` is False.

    :param environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read (default: the
        process environment, read once here).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._failed = False  # a send failed: logged once
        usec = watchdog_usec(env)
        self.watchdog_usec = usec if self._address is not None else 0
        # half the timeout, as sd_watchdog_enabled(3) advises; 0.0 = do not ping
        self.watchdog_interval_s = self.watchdog_usec / 2e6

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram. True if it was sent (False: disabled or failed)."""
        if self._address is None or not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as e:
            if not self._failed:
                log.warning("cannot notify the service manager at %r: %s", self._address, e)
                self._failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (systemd then considers the unit started)."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status`` (newlines are replaced by spaces)."""
        return self.send("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the daemon is alive. Call every :attr:`watchdog_interval_s` while it is healthy."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``); send ``READY=1`` after."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        """Close the socket. Idempotent; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

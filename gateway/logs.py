"""Logging for the daemon: the journal's native protocol under systemd, JSON lines when stderr is not a terminal,
readable text on a terminal; a level per package (docs/deployment.md#logs).

Formats (``[gateway] log_format``):

- ``journal``: one datagram per record to ``/run/systemd/journal/socket`` with structured fields — ``MESSAGE``,
  ``PRIORITY`` (syslog 3 error … 7 debug), ``SYSLOG_IDENTIFIER=gateway``, ``LOGGER``, ``CODE_FILE``, ``CODE_LINE``,
  ``CODE_FUNC``, ``THREAD_NAME``, ``EXCEPTION`` (traceback text) and every ``extra={...}`` key of the call in
  upper case (``log.warning("...", extra={"device": "feeder1"})`` → ``DEVICE=feeder1``), so
  ``journalctl -u gateway DEVICE=feeder1`` or ``-o json`` work. Falls back to JSON on stderr if the socket is gone.
- ``json``: one JSON object per line on stderr: ``ts`` (UTC ISO 8601, µs), ``level``, ``logger``, ``msg``, the extras,
  ``exc`` when there is a traceback.
- ``text``: ``2026-11-25 10:00:00,123 INFO    gateway.app: message``.
- ``auto`` (default): ``journal`` when systemd connected stderr to the journal (``$JOURNAL_STREAM`` names stderr's
  device and inode), else ``text`` on a terminal and ``json`` otherwise.

Per-package levels (``[gateway] log_levels = { "protocols.dnp3" = "DEBUG" }``) apply on top of ``log_level``.
Threads: logging's own locking; the journal handler sends one datagram per record (no buffering).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["auto", "text", "json", "journal"]
JOURNAL_SOCKET = "/run/systemd/journal/socket"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
QUIET_LOGGERS = {"httpx": "WARNING"}  # one line per upload is noise; a log_levels entry overrides it

# LogRecord attributes that are not caller extras.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra={...}`` fields a call passed (JSON-safe: anything else becomes its str)."""
    out: dict[str, Any] = {}
    for k, v in record.__dict__.items():
        if k in _STANDARD or k.startswith("_"):
            continue
        out[k] = v if isinstance(v, str | int | float | bool) or v is None else str(v)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in extras(record).items():
            doc.setdefault(k, v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _field_name(key: str) -> str:
    name = "".join(c if c.isalnum() else "_" for c in key.upper()).lstrip("_")
    return name or "FIELD"


def journal_fields(record: logging.LogRecord, message: str, identifier: str = "gateway") -> list[tuple[str, str]]:
    fields = [
        ("MESSAGE", message),
        ("PRIORITY", str(_syslog_priority(record.levelno))),
        ("SYSLOG_IDENTIFIER", identifier),
        ("LOGGER", record.name),
        ("CODE_FILE", record.pathname),
        ("CODE_LINE", str(record.lineno)),
        ("CODE_FUNC", record.funcName),
        ("THREAD_NAME", record.threadName or ""),
    ]
    fields += [(_field_name(k), str(v)) for k, v in extras(record).items()]
    return fields


def encode_journal(fields: list[tuple[str, str]]) -> bytes:
    """The journal's native datagram: ``KEY=value\\n``, or for values with a newline ``KEY\\n<u64 LE len>value\\n``."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald over its native socket. A record too large for one datagram is sent
    truncated; if the socket fails, the record goes to ``fallback`` (JSON on stderr) instead of being lost."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: logging.Handler | None = None) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            fields = journal_fields(record, msg)
            if record.exc_info:
                fields.append(("EXCEPTION", logging.Formatter().formatException(record.exc_info)))
            data = encode_journal(fields)
            try:
                self.sock.sendto(data, self.path)
            except OSError as e:
                if e.errno == 90 and len(data) > 200_000:  # EMSGSIZE: keep the head of the message
                    self.sock.sendto(encode_journal([*fields[1:], ("MESSAGE", msg[:100_000])]), self.path)
                else:
                    raise
        except OSError:
            if self.fallback is not None:
                self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def stderr_is_journal(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether systemd connected ``stream`` (stderr) to the journal: ``$JOURNAL_STREAM`` = ``device:inode``."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def resolve_format(fmt: LogFormat, stream: IO[str], env: Mapping[str, str] | None = None,
                   journal_socket: str = JOURNAL_SOCKET) -> Literal["text", "json", "journal"]:
    if fmt != "auto":
        return fmt
    if stderr_is_journal(stream, env) and os.path.exists(journal_socket):
        return "journal"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "text" if tty else "json"


def configure_logging(
    level: str = "INFO",
    levels: Mapping[str, str] | None = None,
    fmt: LogFormat = "auto",
    *,
    stream: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
    journal_socket: str = JOURNAL_SOCKET,
) -> Literal["text", "json", "journal"]:
    """Replace the root logger's handlers with one of the chosen format; set the levels. Returns the format used."""
    stream = stream or sys.stderr
    chosen = resolve_format(fmt, stream, env, journal_socket)
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(logging.Formatter(TEXT_FORMAT) if chosen == "text" else JsonFormatter())
    handler: logging.Handler = stream_handler
    if chosen == "journal":
        handler = JournalHandler(journal_socket, fallback=stream_handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name, lvl in {**QUIET_LOGGERS, **dict(levels or {})}.items():
        logging.getLogger(name).setLevel(getattr(logging, lvl.upper(), logging.INFO))
    return chosen

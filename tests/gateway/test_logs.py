"""Daemon logging (gateway/logs.py): journal native protocol with structured fields, JSON lines off a terminal,
text on one, levels per package; and the config keys that choose them."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import configure_logging, encode_journal, resolve_format
from tests.gateway.test_config import GOOD, problems, write


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in ("protocols.dnp3", "gateway.runner", "httpx")}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lvl in named.items():
        logging.getLogger(n).setLevel(lvl)


def parse_journal(datagram: bytes) -> dict[str, str]:
    """Decode the journal's native format (both the KEY=value and the length-prefixed binary form)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            n = int.from_bytes(datagram[nl + 1 : nl + 9], "little")
            out[line.decode()] = datagram[nl + 9 : nl + 9 + n].decode()
            assert datagram[nl + 9 + n : nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


def test_json_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()  # not a TTY
    assert configure_logging("INFO", stream=buf, env={}) == "json"
    logging.getLogger("gateway.runner").warning("device %s timed out", "feeder1", extra={"device": "feeder1"})
    logging.getLogger("gateway.runner").debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gateway.app").exception("failed")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "gateway.runner"
    assert lines[0]["msg"] == "device feeder1 timed out" and lines[0]["device"] == "feeder1"
    assert lines[0]["ts"].endswith("Z") and "." in lines[0]["ts"]
    assert "ValueError: boom" in lines[1]["exc"]


def test_text_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    assert configure_logging("INFO", stream=buf, env={}) == "text"
    logging.getLogger("gateway.app").info("hello")
    assert buf.getvalue().rstrip().endswith("INFO    gateway.app: hello")


def test_journal_native_protocol_with_structured_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        assert configure_logging("INFO", fmt="journal", journal_socket=path, stream=io.StringIO()) == "journal"
        logging.getLogger("protocols.dnp3").error("link lost\nsecond line", extra={"device": "feeder4", "link": "rtu"})
        got = parse_journal(server.recv(65536))
    finally:
        server.close()
    assert got["MESSAGE"] == "link lost\nsecond line"  # the binary form carries the newline
    assert got["PRIORITY"] == "3" and got["SYSLOG_IDENTIFIER"] == "gateway" and got["LOGGER"] == "protocols.dnp3"
    assert got["DEVICE"] == "feeder4" and got["LINK"] == "rtu"
    assert got["CODE_FILE"].endswith("test_logs.py") and int(got["CODE_LINE"]) > 0


def test_journal_gone_falls_back_to_json(tmp_path: Path) -> None:
    buf = io.StringIO()
    configure_logging("INFO", fmt="journal", journal_socket=str(tmp_path / "missing.sock"), stream=buf)
    logging.getLogger("gateway.app").warning("still logged")
    assert json.loads(buf.getvalue())["msg"] == "still logged"


def test_auto_picks_the_journal_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    sock = tmp_path / "j.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock))
    try:
        with (tmp_path / "stderr").open("w") as f:
            st = os.fstat(f.fileno())
            env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            assert resolve_format("auto", f, env, str(sock)) == "journal"
            assert resolve_format("auto", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, str(sock)) == "json"
            assert resolve_format("auto", f, env, str(tmp_path / "none.sock")) == "json"
    finally:
        s.close()


def test_levels_per_package() -> None:
    buf = io.StringIO()
    configure_logging("WARNING", {"protocols.dnp3": "DEBUG"}, fmt="json", stream=buf)
    logging.getLogger("protocols.dnp3.session").debug("frame")  # a child of the package
    logging.getLogger("gateway.runner").info("hidden")
    assert [json.loads(x)["msg"] for x in buf.getvalue().splitlines()] == ["frame"]
    assert logging.getLogger("httpx").level == logging.WARNING  # quiet by default


def test_encode_journal_forms() -> None:
    assert encode_journal([("A", "x")]) == b"A=x\n"
    assert encode_journal([("B", "1\n2")]) == b"B\n" + (3).to_bytes(8, "little") + b"1\n2\n"


def test_config_keys(tmp_path: Path) -> None:
    from gateway.config_load import load_config

    keys = 'log_format = "json"\nlog_levels = { "protocols.dnp3" = "debug" }'
    text = GOOD.replace('id = "gw-test"', f'id = "gw-test"\n{keys}')
    cfg, _ = load_config(write(tmp_path, text))
    assert cfg.log_format == "json" and cfg.log_levels == {"protocols.dnp3": "DEBUG"}
    bad = problems(tmp_path, GOOD.replace('id = "gw-test"', 'id = "gw-test"\nlog_levels = { "x" = "LOUD" }\n'
                                                           'log_format = "xml"'))
    assert any("gateway.log_levels.x: invalid level 'LOUD'" in m for m in bad), bad
    assert any("gateway.log_format: invalid value 'xml'" in m for m in bad), bad

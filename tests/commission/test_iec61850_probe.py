"""``probe iec61850`` against the libiec61850 test server (pyiec61850, the shipped ICD): the browse shows the
IED's logical nodes and data objects, reads show values with their FC."""

from __future__ import annotations

import platform

import pytest

from hil_tests.net import free_port
from tests.commission.helpers import cli

if platform.machine() != "x86_64":
    pytest.skip("pyiec61850 (the libiec61850 test server) ships x86_64 wheels only", allow_module_level=True)

from gateway.commission.iec61850_probe import browse, format_tree, open_client, read_refs, tree
from hil_tests.iec61850_server import Iec61850Server


def test_browse_shows_known_logical_nodes_and_data_objects() -> None:
    with Iec61850Server() as srv, open_client("127.0.0.1", srv.port, 2.0) as client:
        nodes = tree(browse(client))
    (ld,) = nodes
    assert ld.name == "IED1LD0"
    lns = {n.name: n for n in ld.children}
    assert {"LLN0", "MMXU1", "XCBR1", "CSWI1", "GGIO1"} <= set(lns)
    assert {"A", "Hz", "TotW"} <= {d.name for d in lns["MMXU1"].children}
    assert "brcbMeas01[BR]" in lns["LLN0"].detail
    two = format_tree(nodes, 2)
    assert "  MMXU1" in two and "Hz" not in two
    four = format_tree(nodes, 4)
    assert "      mag.f  [MX]" in four


def test_cli_browse_and_read(capsys: pytest.CaptureFixture[str]) -> None:
    with Iec61850Server() as srv:
        srv.update("IED1LD0/MMXU1.Hz", "mag.f", 50.02)
        srv.update("IED1LD0/XCBR1.Pos", "stVal", 2)
        assert cli(["probe", "iec61850", "--host", "127.0.0.1", "--port", str(srv.port)]) == 0
        out = capsys.readouterr().out
        assert "IED1LD0" in out and "  XCBR1" in out and "    Pos  (CF,CO,ST)" in out
        code = cli(["probe", "iec61850", "--host", "127.0.0.1", "--port", str(srv.port),
                    "--read", "IED1LD0/MMXU1.Hz.mag.f", "--read", "IED1LD0/XCBR1.Pos.stVal[ST]"])
        out = capsys.readouterr().out
        assert code == 0
        assert "IED1LD0/MMXU1.Hz.mag.f [MX]" in out and "50.02" in out
        assert "IED1LD0/XCBR1.Pos.stVal [ST]" in out and " on" in out
        code = cli(["probe", "iec61850", "--host", "127.0.0.1", "--port", str(srv.port),
                    "--read", "IED1LD0/MMXU9.Hz.mag.f"])
        assert code == 1 and "error: no logical node IED1LD0/MMXU9" in capsys.readouterr().out


def test_read_refs_reports_bad_references_as_values() -> None:
    with Iec61850Server() as srv, open_client("127.0.0.1", srv.port, 2.0) as client:
        rows = read_refs(client, None, ["IED1LD0/MMXU1.Hz.mag.f", "IED1LD0/MMXU1.Nope.mag.f[MX]"])
    assert rows[0][1].startswith("error: give the functional constraint")
    assert rows[1][0] == "IED1LD0/MMXU1.Nope.mag.f [MX]" and rows[1][1].startswith("error:")


def test_cli_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli(["probe", "iec61850", "--host", "127.0.0.1", "--port", str(port), "--timeout", "1"]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"error: no MMS association with 127.0.0.1:{port}") and "Traceback" not in err

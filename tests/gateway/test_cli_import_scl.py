"""`gateway import-scl`: output the config loader accepts, and clear errors (file named, right exit code)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cli import EXIT_CONFIG, EXIT_FILE, EXIT_OK, main
from gateway.config_load import parse_config

ICD = Path(__file__).resolve().parents[1] / "data" / "ied1.icd"


def test_prints_a_link_the_loader_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-scl", str(ICD), "--host", "127.0.0.1", "--port", "10102"]) == EXIT_OK
    text = capsys.readouterr().out
    doc = tomllib.loads('version = 1\n[gateway]\nid = "t"\n' + text)
    cfg = parse_config(doc, "imported.toml")
    (link,) = cfg.links
    assert (link.protocol, link.host, link.port) == ("iec61850", "127.0.0.1", 10102)
    (dev,) = link.devices
    assert dev.iec61850.reports and all(p.kind == "attribute" and p.ref and p.da and p.fc for p in dev.points)


def test_writes_a_new_file_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ied1.toml"
    assert main(["import-scl", str(ICD), "--host", "127.0.0.1", "-o", str(out)]) == EXIT_OK
    first = out.read_text()
    assert "[[links]]" in first
    assert main(["import-scl", str(ICD), "--host", "10.0.0.9", "-o", str(out)]) == EXIT_FILE
    assert f"{out} exists" in capsys.readouterr().err
    assert out.read_text() == first


def test_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.icd"
    assert main(["import-scl", str(missing)]) == EXIT_FILE
    assert f"error: {missing}: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.icd"
    bad.write_text("<x/>")
    assert main(["import-scl", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and "Traceback" not in err
    assert main(["import-scl", str(ICD), "--ied", "NOPE", "--host", "127.0.0.1"]) == EXIT_CONFIG
    assert "NOPE" in capsys.readouterr().err

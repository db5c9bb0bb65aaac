"""Every runtime dependency installs on the field targets from a wheel: a cp311 binary wheel for the target's
platform (manylinux, glibc <= 2.36: Debian bookworm / Raspberry Pi OS, aarch64 and x86_64) or a pure-Python one.

`make wheelhouse PLATFORM=...` asks pip to resolve [project].dependencies for the target (not for this machine)
with --only-binary=:all:; this test then checks its result independently: each file is a wheel whose tags the
target accepts, and walking the Requires-Dist of every wheel (markers evaluated for the target, extras followed)
from pyproject's dependencies finds each requirement satisfied by a wheel in the wheelhouse. So no dependency
needs a compiler on the gateway, and the offline install (deploy/install.sh --wheelhouse) has all it needs.

Needs the package index (PyPI or a mirror with the target's wheels; no index here means a failure with pip's
reason, never a skip). Marked slow: about 10 s per platform.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYVER = (3, 11)
GLIBC_MAX = 36  # Debian bookworm's glibc 2.36; Raspberry Pi OS (bookworm) is the same

pytestmark = pytest.mark.slow


def _target_tags(arch: str) -> set[Tag]:
    """The wheel tags pip on the target (CPython 3.11, glibc 2.36) accepts, pure-Python ones included."""
    platforms = [f"manylinux_2_{v}_{arch}" for v in range(GLIBC_MAX, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    abi = f"cp{PYVER[0]}{PYVER[1]}"
    return set(cpython_tags(PYVER, abis=[abi], platforms=platforms)) | set(
        compatible_tags(PYVER, interpreter=abi, platforms=platforms)
    )


def _target_environment(arch: str) -> dict[str, str]:
    """PEP 508 marker variables on the target (Debian bookworm's Python 3.11.2)."""
    return {"implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix",
            "platform_machine": arch, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": "3.11.2",
            "python_version": "3.11", "sys_platform": "linux"}  # fmt: skip


def _metadata(wheel: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = Parser().parsestr(z.read(name).decode("utf-8"))
    return meta.get_all("Requires-Dist") or []


@pytest.fixture(scope="module", params=["aarch64", "x86_64"])
def wheelhouse(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    arch: str = request.param
    out = tmp_path_factory.mktemp(f"wheelhouse-{arch}") / "wh"
    res = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "wheelhouse", f"PLATFORM=manylinux2014_{arch}",
         f"WHEELHOUSE={out}", f"PYVER={PYVER[0]}{PYVER[1]}", f"GLIBC={GLIBC_MAX}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"make wheelhouse for {arch} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return arch, out


def test_every_runtime_dependency_has_a_wheel_for_the_target(wheelhouse: tuple[str, Path]) -> None:
    arch, wh = wheelhouse
    accepted = _target_tags(arch)
    wheels: dict[str, tuple[Version, Path]] = {}
    binary = []
    for f in sorted(wh.iterdir()):
        if f.name == "SHA256SUMS":
            continue
        assert f.suffix == ".whl", f"not a wheel (would need building on the gateway): {f.name}"
        name, version, _build, tags = parse_wheel_filename(f.name)
        assert tags & accepted, f"{f.name}: no tag that CPython 3.11 on {arch} (glibc 2.{GLIBC_MAX}) accepts"
        assert name not in wheels, f"two wheels of {name}"
        wheels[name] = (version, f)
        if not any(t.platform == "any" for t in tags):
            binary.append(f.name)

    # walk the dependency graph from pyproject's dependencies, as pip on the target would
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = _target_environment(arch)
    todo = [(Requirement(r), "pyproject.toml") for r in project["dependencies"]]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        assert name in wheels, f"{req} (wanted by {wanted_by}) has no wheel for {arch}"
        version, wheel = wheels[name]
        assert req.specifier.contains(version, prereleases=True), f"{wheel.name} does not satisfy {req}"
        for extra in {"", *req.extras}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in _metadata(wheel):
                dep = Requirement(line)
                if dep.marker is None or dep.marker.evaluate({**env, "extra": extra}):
                    todo.append((dep, wheel.name))

    needed = {n for n, _ in seen} | {canonicalize_name(project["name"])}
    assert needed == set(wheels), f"wheels nothing needs: {sorted(set(wheels) - needed)}"
    # the compiled ones are really there for the target (numpy, pyarrow, duckdb, onnxruntime, cryptography, ...)
    for lib in ("numpy", "pyarrow", "duckdb", "onnxruntime", "cryptography", "psycopg_binary"):
        assert any(b.startswith(lib + "-") and arch in b for b in binary), (lib, binary)
    print(f"{arch}: {len(wheels)} wheels, binary: {', '.join(binary)}", file=sys.stderr)

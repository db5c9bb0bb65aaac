"""``python -m hil_tests run [--junit FILE] [--report DIR] [--rig FILE] [--fast] SCENARIO…`` and
``python -m hil_tests list [SCENARIO…]`` (docs/hil.md).

Exit codes: 0 every expectation passed (skips allowed), 1 an expectation failed or a run had errors, 2 usage or
scenario file errors (every problem printed with file, key and line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hil_tests.scenario import Scenario, ScenarioError, load_all

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class Progress:
    """One line per action/expectation on stderr; a spinner with the elapsed time while a scenario runs on a TTY."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._label = ""
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def line(self, msg: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(msg + "\n")
            self.stream.flush()

    def start(self, label: str) -> None:
        self._label, self._t0 = label, time.monotonic()
        if not self.tty:
            return
        self._stop.clear()

        def spin() -> None:
            for ch in itertools.cycle("|/-\\"):
                if self._stop.wait(0.2):
                    return
                with self._lock:
                    self.stream.write(f"\r\033[K{ch} {self._label} {time.monotonic() - self._t0:6.1f} s")
                    self.stream.flush()

        self._thread = threading.Thread(target=spin, name="hil-spinner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.tty:
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()


def _rig_factory(args: argparse.Namespace) -> Callable[[Scenario], Any]:
    if args.rig:
        from hil_tests.real_rig import RealRig

        path = Path(args.rig)

        def real(_sc: Scenario) -> Any:
            return RealRig.from_file(path)

        RealRig.from_file(path)  # errors now, before any scenario runs
        return real
    spec = args.rig_class or "hil_tests.substation:SimulatedRig"
    mod_name, _, cls_name = spec.partition(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)

    def make(sc: Scenario) -> Any:
        return cls(**sc.rig.get("options", {}))

    return make


async def run_scenarios(scenarios: Sequence[Scenario], factory: Callable[[Scenario], Any], *, fast: bool,
                        progress: Progress, workdir: Path | None) -> list[Any]:
    from hil_tests.expectations import evaluate
    from hil_tests.report import ScenarioResult, summary_line
    from hil_tests.runner import ScenarioRun

    results = []
    for i, sc in enumerate(scenarios, 1):
        progress.line(f"[{i}/{len(scenarios)}] {sc.name} ({sc.file.name})")
        progress.start(sc.name)
        t0 = time.monotonic()
        try:
            rig = factory(sc)
            wd = (workdir / sc.slug) if workdir is not None else None
            data = await ScenarioRun(sc, rig, fast=fast, workdir=wd, progress=progress.line).run()
        finally:
            progress.stop()
        outcomes = evaluate(data)
        r = ScenarioResult(data, outcomes, time.monotonic() - t0)
        if workdir is None and r.status in ("pass", "skip"):  # a temporary work dir is kept only for failures
            shutil.rmtree(data.workdir, ignore_errors=True)
            data.workdir_removed = True
        for o in outcomes:
            progress.line(f"  {o.status.upper():4} {o.expectation.name}: {o.message}")
        for err in data.errors:
            progress.line(f"  ERROR {err}")
        progress.line("  " + summary_line(r))
        results.append(r)
    return results


def cmd_run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.scenarios]
    scenarios, bad = load_all(paths)
    if bad:
        for e in bad:
            for p in e.problems:
                print(f"error: {p}", file=sys.stderr)
        return 2
    if args.only:
        scenarios = [s for s in scenarios if any(o in s.name or o in s.file.stem for o in args.only)]
    if not scenarios:
        print("error: no scenarios to run", file=sys.stderr)
        return 2
    try:
        factory = _rig_factory(args)
    except (OSError, ValueError, ImportError, AttributeError, ScenarioError) as e:
        print(f"error: rig: {e}", file=sys.stderr)
        return 2
    progress = Progress()
    from hil_tests.report import write_html, write_junit

    try:
        results = asyncio.run(run_scenarios(scenarios, factory, fast=args.fast, progress=progress,
                                            workdir=Path(args.workdir) if args.workdir else None))
    except KeyboardInterrupt:
        progress.stop()
        print("interrupted", file=sys.stderr)
        return 130
    if args.junit:
        write_junit(results, Path(args.junit))
        progress.line(f"JUnit: {args.junit}")
    if args.report:
        pages = write_html(results, Path(args.report))
        progress.line(f"HTML report: {pages[0]}")
    failed = [r for r in results if r.status in ("fail", "error")]
    progress.line(f"{len(results) - len(failed)} of {len(results)} scenarios passed")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.scenarios] or sorted(SCENARIO_DIR.glob("*.toml"))
    scenarios, bad = load_all(paths)
    for s in scenarios:
        acts = ", ".join(a.type for a in s.actions)
        exps = ", ".join(e.type for e in s.expectations)
        print(f"{s.file.name:40} {s.name}\n{'':40} actions: {acts or '-'}; expects: {exps}")
    for e in bad:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hil_tests", description="HIL scenario runner (docs/hil.md)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run scenarios")
    r.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files")
    r.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    r.add_argument("--report", metavar="DIR", help="write the HTML report (index.html + one page per scenario)")
    r.add_argument("--rig", metavar="FILE", help="a rig file: run against a real rig (hil_tests.real_rig)")
    r.add_argument("--rig-class", metavar="MODULE:CLASS",
                   help="the simulated rig's class (default hil_tests.substation:SimulatedRig)")
    r.add_argument("--fast", action="store_true", help="apply each scenario's fast_scale (time compression)")
    r.add_argument("--only", action="append", metavar="TEXT", help="only scenarios whose name/file contains TEXT")
    r.add_argument("--workdir", metavar="DIR", help="keep each scenario's files under DIR/<scenario>")
    r.set_defaults(fn=cmd_run)
    li = sub.add_parser("list", help="list scenarios (default: the library in hil_tests/scenarios)")
    li.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    li.set_defaults(fn=cmd_list)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # in-process simulators: no frame dumps on stderr
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

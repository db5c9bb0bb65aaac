"""Argparse wiring of the commissioning commands: ``probe modbus|dnp3|iec61850``, ``import-csv``, ``doctor`` and
``config diff``. :func:`add_commands` adds them to the ``gateway`` parser's subparsers; :func:`run` runs the one
parsed (``args.command`` in :data:`COMMANDS`).

Exit codes follow :mod:`gateway.cli`: 0 ok, 1 config/input errors (a doctor check FAILed, a CSV row that does not
convert, the device refused a request), 2 usage, 3 a file is missing or unreadable, 4 runtime failure (the device
or link did not answer). User mistakes and unreachable devices print ``error: ...``, never a traceback.

Output: results on stdout (tables, TOML, check lines); errors and the progress bar on stderr.

Threads: the CLI process's main thread; the probes run their own short-lived event loop (``asyncio.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS: Final = frozenset({"probe", "import-csv", "doctor", "config"})

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_RUNTIME = 4


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {v}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _dnp3_address(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNP3 address") from None
    if not 0 <= v <= 65519:
        raise argparse.ArgumentTypeError(f"DNP3 addresses are 0..65519, got {v}")
    return v


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``probe``, ``import-csv``, ``doctor`` and ``config`` to the ``gateway`` parser's subparsers."""
    p = sub.add_parser("probe", help="talk to a device directly: find unit ids, read registers, poll, browse",
                       description="Commissioning probes. They only read; nothing is written to the device.")
    ps = p.add_subparsers(dest="probe_command", metavar="PROTOCOL", required=True)

    m = ps.add_parser(
        "modbus", help="scan unit ids and read a register range decoded in every data type and word order",
        description="Without --read: scan --units (default 1-247) and list the unit ids that answer. With --read: "
        "print the registers as hex and as int16/uint16/int32/uint32/float32 in each word order, so the column "
        "with sensible values tells the type and word_order/byte_order of the points.")
    where = m.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP device or gateway address")
    where.add_argument("--serial", metavar="DEV", help="serial port for Modbus RTU, e.g. /dev/ttyUSB0")
    m.add_argument("--port", type=_port, default=502, help="TCP port (default 502)")
    m.add_argument("--baudrate", type=int, default=9600, help="RTU bits per second (default 9600)")
    m.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (default N)")
    m.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits (default 1)")
    m.add_argument("--units", metavar="SPEC", help="unit ids to scan, e.g. 1-247 or 1,2,10-20")
    m.add_argument("--scan-table", choices=("holding", "input", "coil", "discrete"), default="holding",
                   help="table the scan reads one item of (default holding)")
    m.add_argument("--scan-address", type=int, default=0, help="address the scan reads (default 0)")
    m.add_argument("--read", metavar="ADDR:COUNT", help="0-based protocol address and count, e.g. 100:10")
    m.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding",
                   help="table of --read (default holding)")
    m.add_argument("--unit", type=int, default=1, help="unit id for --read (default 1)")
    m.add_argument("--all-orders", action="store_true",
                   help="also show the byte-swapped orders BADC and DCBA (byte_order = little)")
    m.add_argument("--suggest", metavar="TYPE", help="print TOML points for the range read as TYPE (e.g. float32)")
    m.add_argument("--order", default="ABCD", help="word order for --suggest: ABCD (default), CDAB, BADC, DCBA")
    m.add_argument("--timeout", type=_positive, default=None,
                   help="seconds to wait for each answer (default 0.3 when scanning, 1 for --read)")

    d = ps.add_parser("dnp3", help="link status, IIN flags and an integrity poll dump of a DNP3 outstation",
                      description="Connect (TCP + data-link reset), run one integrity poll (class 1, 2, 3, 0) and "
                      "print the outstation's IIN and every value with its group/variation, flags and time. "
                      "Read-only: no restart clear, no time write, unsolicited responses untouched.")
    d.add_argument("--host", required=True, help="outstation address")
    d.add_argument("--port", type=_port, default=20000, help="TCP port (default 20000)")
    d.add_argument("--outstation", type=_dnp3_address, default=10, help="outstation link address (default 10)")
    d.add_argument("--master", type=_dnp3_address, default=1, help="our (master) link address (default 1)")
    d.add_argument("--timeout", type=_positive, default=3.0, help="seconds to wait for each answer (default 3)")

    i = ps.add_parser("iec61850", help="browse an IED's model (LD/LN/DO) and read values over MMS",
                      description="Browse the server's logical devices, logical nodes and data objects; with "
                      "--read, read values (a reference without [FC] is looked up in the model).")
    i.add_argument("--host", required=True, help="IED address")
    i.add_argument("--port", type=_port, default=102, help="MMS TCP port (default 102)")
    i.add_argument("--depth", type=int, choices=(1, 2, 3, 4), default=3,
                   help="tree depth: 1 LDs, 2 +LNs, 3 +data objects (default), 4 +attributes")
    i.add_argument("--read", metavar="REF", action="append", default=[],
                   help="read a reference, e.g. IED1LD0/MMXU1.Hz.mag.f or IED1LD0/MMXU1.A.phsA[MX] (repeatable)")
    i.add_argument("--timeout", type=_positive, default=3.0, help="seconds to wait for each answer (default 3)")

    c = sub.add_parser(
        "import-csv", help="write a [[links]] table from a vendor's Modbus register map (CSV)",
        description="Read a register map as vendors publish it (CSV with a header row: name/description/tag, "
        "address/register/offset, type, scale, unit, access...) and print (or write) a [[links]] table with one "
        "device and its points; paste it into the config and check it with `gateway check-config`.")
    c.add_argument("file", type=Path, help="CSV file with a header row")
    c.add_argument("--device", required=True, help="device name, e.g. meter1")
    c.add_argument("--unit-id", type=int, default=1, help="Modbus unit id (default 1)")
    cw = c.add_mutually_exclusive_group()
    cw.add_argument("--host", default="", help="device address (Modbus TCP)")
    cw.add_argument("--serial", default="", metavar="DEV", help="serial port (Modbus RTU), e.g. /dev/ttyUSB0")
    c.add_argument("--port", type=_port, default=502, help="TCP port (default 502)")
    c.add_argument("--baudrate", type=int, default=9600, help="RTU bits per second (default 9600)")
    c.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding",
                   help="table of rows whose address has no 4xxxx/3xxxx prefix and no table column (default holding)")
    c.add_argument("--one-based", action="store_true",
                   help="plain addresses are 1-based register numbers (register 1 = address 0)")
    c.add_argument("--literal-addresses", action="store_true",
                   help="take 4xxxx/3xxxx numbers literally (no table prefix conversion)")
    c.add_argument("--word-order", choices=("ABCD", "CDAB", "BADC", "DCBA"), default="ABCD",
                   help="word order of 32/64-bit values when the file does not say (default ABCD)")
    c.add_argument("-o", "--output", type=Path, help="write to this new file instead of printing")

    dr = sub.add_parser("doctor", help="check this machine and a config are ready: clock, disk, realtime, ports, "
                        "devices, serial ports, cloud, certificates",
                        description="One line per check with OK, WARN or FAIL and a hint. Exit 0 when nothing "
                        "FAILs, 1 otherwise.")
    dr.add_argument("-c", "--config", type=Path, required=True, help="gateway TOML config file")
    dr.add_argument("--timeout", type=_positive, default=2.0, help="seconds per network check (default 2)")

    cf = sub.add_parser("config", help="config tools (diff)")
    cfs = cf.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    df = cfs.add_parser("diff", help="what differs between two config files (links, devices, points, sinks, "
                        "settings)", description="A semantic diff of the two loaded configs: added (+), removed "
                        "(-) and changed (~) settings by key path. Comments, key order and templates do not count.")
    df.add_argument("old", type=Path, nargs="?", help="the config in use (left out with -c: the running one)")
    df.add_argument("new", type=Path, nargs="?", help="the edited config")
    df.add_argument("-c", "--config", type=Path, help="compare this file with the config the gateway runs now "
                    "(its copy in the file's data_dir), and say what `systemctl reload gateway` would apply")


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Library warnings (dnp3py, pymodbus) would reach the terminal through logging's last-resort handler when
    the CLI configured no logging; the probes report problems themselves."""
    root = logging.getLogger()
    handler: logging.Handler | None = None
    if not root.handlers:
        handler = logging.NullHandler()
        root.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the commissioning command in ``args`` (parsed by a parser :func:`add_commands` extended)."""
    with _quiet_libraries():
        if args.command == "probe":
            if args.probe_command == "modbus":
                return asyncio.run(_probe_modbus(args))
            if args.probe_command == "dnp3":
                return _probe_dnp3(args)
            if args.probe_command == "iec61850":
                return _probe_iec61850(args)
        if args.command == "import-csv":
            return _import_csv(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "config" and args.config_command == "diff":
            if args.config is not None:
                if args.old is not None:
                    _err("give either -c FILE (running vs file) or OLD NEW (two files), not both")
                    return EXIT_USAGE
                return _config_diff_running(args.config)
            if args.old is None or args.new is None:
                _err("config diff needs OLD NEW, or -c FILE to compare FILE with the running config")
                return EXIT_USAGE
            return _config_diff(args.old, args.new)
    _err(f"unknown command {args.command!r}")
    return EXIT_USAGE


# ----------------------------------------------------------------------------------------------- probe modbus


async def _probe_modbus(args: Any) -> int:
    from gateway.commission.modbus_probe import (
        ProbeError,
        connect,
        format_bits,
        format_interpretations,
        make_link,
        parse_read,
        parse_units,
        read_range,
        scan_units,
        suggest_points,
    )
    from gateway.commission.progress import Progress

    try:
        units = parse_units(args.units) if args.units else ([] if args.read else list(range(1, 248)))
        rng = parse_read(args.read) if args.read else None
        if args.suggest and rng is None:
            raise ProbeError("--suggest needs --read ADDR:COUNT", 2)
        if args.suggest:
            suggest_points(args.table, 0, 0, args.suggest, args.order.upper())  # validates type and order
        if not 0 <= args.unit <= 247:
            raise ProbeError(f"--unit must be 0..247, got {args.unit}", 2)
    except ProbeError as exc:
        _err(str(exc))
        return exc.exit_code
    link = make_link(host=args.host or "", port=args.port, serial=args.serial or "", baudrate=args.baudrate,
                     parity=args.parity, stopbits=args.stopbits)
    where = args.serial or f"{args.host}:{args.port}"
    try:
        client = await connect(link)
    except ProbeError as exc:
        _err(str(exc))
        return exc.exit_code
    try:
        if units:
            timeout = args.timeout or 0.3
            print(f"scanning {len(units)} unit id(s) on {where} ({args.scan_table} {args.scan_address}, "
                  f"{timeout:g} s each)")
            with Progress(len(units), "scanning") as bar:
                found = await scan_units(client, units, table=args.scan_table, address=args.scan_address,
                                         timeout_s=timeout,
                                         on_unit=lambda uid, ok: bar.advance(note=f"unit {uid}"))
            for a in found:
                print(f"unit {a.unit_id:>3}  answers" + (f"  ({a.detail})" if a.detail else ""))
            print(f"{len(found)} of {len(units)} unit id(s) answered")
            if len(found) == len(units) > 1:
                print("note: every unit id answered; many TCP devices answer any unit id, so this says little "
                      "about which one is right")
            if not found and rng is None:
                return EXIT_RUNTIME
        if rng is not None:
            address, count = rng
            values = await read_range(client, args.unit, args.table, address, count, timeout_s=args.timeout or 1.0)
            print(f"unit {args.unit} {args.table} {address}..{address + count - 1} on {where}")
            if args.table in ("coil", "discrete"):
                print(format_bits(values, address, args.table))
            else:
                orders = ("ABCD", "CDAB", "BADC", "DCBA") if args.all_orders else ("ABCD", "CDAB")
                print(format_interpretations(values, address, orders))
            if args.suggest:
                print()
                print(suggest_points(args.table, address, count, args.suggest, args.order.upper()), end="")
    except ProbeError as exc:
        _err(str(exc))
        return exc.exit_code
    finally:
        client.close()
        await asyncio.sleep(0)  # let the transport's close callbacks run before the loop ends
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- probe dnp3


def _probe_dnp3(args: Any) -> int:
    from gateway.commission.dnp3_probe import format_dnp3, probe_dnp3

    if args.outstation == args.master:
        _err("--outstation and --master must differ")
        return EXIT_USAGE
    result = asyncio.run(probe_dnp3(args.host, args.port, args.outstation, args.master, timeout_s=args.timeout))
    print(format_dnp3(result))
    if result.error:
        _err(result.error)
        return EXIT_RUNTIME
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- probe iec61850


def _probe_iec61850(args: Any) -> int:
    from gateway.commission.iec61850_probe import Iec61850ProbeError, browse, format_tree, open_client, read_refs
    from gateway.commission.table import format_table

    try:
        with open_client(args.host, args.port, args.timeout) as client:
            needs_model = not args.read or any("[" not in r for r in args.read)
            model = browse(client) if needs_model else None
            if not args.read:
                assert model is not None
                from gateway.commission.iec61850_probe import tree

                print(format_tree(tree(model), args.depth))
                return EXIT_OK
            rows = read_refs(client, model, args.read)
    except Iec61850ProbeError as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    print(format_table(["reference", "value"], [list(r) for r in rows]))
    return EXIT_CONFIG if any(v.startswith("error:") for _, v in rows) else EXIT_OK


# ----------------------------------------------------------------------------------------------- import-csv


def _import_csv(args: Any) -> int:
    from gateway.commission.csv_import import CsvImportError, import_csv

    file: Path = args.file
    if not file.is_file():
        _err(f"{file}: file not found")
        return EXIT_FILE
    try:
        text = import_csv(file, device=args.device, unit_id=args.unit_id, host=args.host, port=args.port,
                          serial=args.serial, baudrate=args.baudrate, table=args.table, one_based=args.one_based,
                          prefixed=not args.literal_addresses, word_order=args.word_order)
    except CsvImportError as exc:
        for p in exc.problems:
            _err(p)
        print(f"{len(exc.problems)} error(s) in {file}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        _err(f"{file}: cannot read: {exc.strerror}")
        return EXIT_FILE
    if not args.host and not args.serial:
        print("warning: no --host or --serial given: set the link's host (CHANGE-ME) before use", file=sys.stderr)
    output: Path | None = args.output
    if output is None:
        print(text, end="")
        return EXIT_OK
    try:
        with output.open("x", encoding="utf-8") as f:  # never overwrite a config
            f.write(text)
    except FileExistsError:
        _err(f"{output} exists; give a new file name")
        return EXIT_FILE
    except OSError as exc:
        _err(f"cannot write {output}: {exc.strerror}")
        return EXIT_FILE
    print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- doctor


def _doctor(args: Any) -> int:
    from gateway.commission.doctor import exit_code, format_checks, run_doctor

    config: Path = args.config
    checks = run_doctor(config, timeout_s=args.timeout)
    print(format_checks(checks))
    if not config.is_file():
        _err(f"{config}: file not found")
        return EXIT_FILE
    return exit_code(checks)


# ----------------------------------------------------------------------------------------------- config diff


def _config_diff(old: Path, new: Path) -> int:
    from gateway.commission.config_diff import diff_configs, format_changes
    from gateway.config_load import ConfigError, ConfigFileError, load_config

    loaded = []
    for path in (old, new):
        try:
            cfg, _warnings = load_config(path)
        except ConfigError as exc:
            for p in exc.problems:
                _err(str(p))
            return EXIT_FILE if isinstance(exc, ConfigFileError) else EXIT_CONFIG
        loaded.append(cfg)
    print(format_changes(diff_configs(loaded[0], loaded[1]), str(old), str(new)))
    return EXIT_OK


def _config_diff_running(path: Path) -> int:
    """FILE vs the config the daemon runs (its copy in FILE's data_dir), and what a reload would do with it."""
    from gateway.commission.config_diff import diff_configs, format_changes
    from gateway.config_load import ConfigError, ConfigFileError, load_config
    from gateway.reload import plan_reload
    from gateway.running_config import load_running

    try:
        new, _warnings = load_config(path, strict_protection=False)
    except ConfigError as exc:
        for p in exc.problems:
            _err(str(p))
        _err(f"{path} has errors: `systemctl reload gateway` would refuse it and keep the running config")
        return EXIT_FILE if isinstance(exc, ConfigFileError) else EXIT_CONFIG
    try:
        running, meta = load_running(new.data_dir)
    except FileNotFoundError:
        _err(f"no running config recorded in {new.data_dir} (the gateway has not run with this data_dir)")
        return EXIT_FILE
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        _err(f"cannot read the running config's copy in {new.data_dir}: {exc}")
        return EXIT_FILE
    label = f"running (loaded {meta.get('loaded_at', '?')} from {meta.get('source', '?')})"
    changes = diff_configs(running, new)
    print(format_changes(changes, label, str(path)))
    if changes:
        print(f"systemctl reload gateway would: {plan_reload(running, new).report.summary()}")
    return EXIT_OK

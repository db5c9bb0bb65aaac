"""The ``gateway`` command line.

Exit codes (documented in README.md and docs/config.md):
  0  success
  1  the config (or another input file) has errors; every error is printed
  2  usage error (unknown command or option)
  3  a file is missing, unreadable or not valid TOML
  4  the daemon could not start or failed at run time (port in use, store cannot be opened, ...)
  130 interrupted by Ctrl-C before a clean stop
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_RUNTIME = 4
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Substation edge gateway")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check-config", help="validate a config file and print a summary")
    c.add_argument("file", type=Path, help="TOML config file")

    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("-c", "--config", type=Path, required=True, help="TOML config file")

    from cloud_sync.receiver.server import build_parser as receiver_options

    rc = sub.add_parser("receiver", help="run the reference cloud ingestion receiver")
    receiver_options(rc)

    from cloud_sync.receiver.server import build_token_parser

    rt = sub.add_parser("receiver-token", help="mint a receiver token for a gateway (stores only its hash)")
    build_token_parser(rt)

    i = sub.add_parser(
        "import-scl",
        help="write the [[links]] table of an IEC 61850 IED from its SCL file (.icd/.cid/.scd)",
        description="Read an IED's SCL file and print (or write) a [[links]] table with its reports and points; "
        "paste it into the gateway config and check it with `gateway check-config`.",
    )
    i.add_argument("file", type=Path, help="SCL file (.icd, .cid or .scd)")
    i.add_argument("--ied", help="IED name (required when the file describes several)")
    i.add_argument("--host", default="", help="IED address (default: the IP address in the SCL file)")
    i.add_argument("--port", type=int, default=102, help="MMS TCP port (default 102)")
    i.add_argument("-o", "--output", type=Path, help="write to this new file instead of printing")

    d = sub.add_parser("demo", help="simulated IEDs + receiver + gateway with the shipped demo config")
    d.add_argument("--data-dir", type=Path, default=Path("demo-data"), help="where the demo keeps its files")
    d.add_argument("--panel-port", type=int, default=8080, help="operator panel port (default 8080)")
    d.add_argument("--receiver-port", type=int, default=8081, help="receiver port (default 8081)")
    d.add_argument("--modbus-port", type=int, default=15020, help="first simulated IED port (default 15020)")
    d.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)"
    )

    from gateway.panel.cli import add_panel_cert_parser, add_user_parser

    add_user_parser(sub)
    add_panel_cert_parser(sub)
    from gateway.commission.cli import add_commands as add_commission_commands

    add_commission_commands(sub)
    from cloud_sync.receiver.server import build_enrol_token_parser

    ret = sub.add_parser("receiver-enrol-token",
                         help="mint a one-time enrolment token for a gateway's first boot (stores only its hash)")
    build_enrol_token_parser(ret)
    from gateway.provision.cli import add_commands as add_provision_commands

    add_provision_commands(sub)
    return p


def cmd_check_config_errors(e: Exception, file: Path) -> int:
    """Print a config load failure (every problem, one per line) and return the exit code for it."""
    from gateway.config_load import ConfigError, ConfigFileError

    problems = e.problems if isinstance(e, ConfigError) else []
    for prob in problems:
        print(f"error: {prob}", file=sys.stderr)
    if isinstance(e, ConfigFileError):
        return EXIT_FILE
    print(f"{len(problems)} error(s) in {file}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(file: Path) -> int:
    from gateway.config_load import ConfigError, load_config
    from gateway.summary import format_summary

    try:
        cfg, warnings = load_config(file)
    except ConfigError as e:
        return cmd_check_config_errors(e, file)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(format_summary(cfg))
    return EXIT_OK


def cmd_import_scl(file: Path, ied: str | None, host: str, port: int, output: Path | None) -> int:
    from gateway.scl_import import SclImportError, import_scl

    if not file.is_file():
        print(f"error: {file}: file not found", file=sys.stderr)
        return EXIT_FILE
    if not 1 <= port <= 65535:
        print(f"error: --port must be 1..65535, got {port}", file=sys.stderr)
        return EXIT_USAGE
    try:
        text = import_scl(file, ied, host, port)
    except SclImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if output is None:
        print(text, end="")
        return EXIT_OK
    try:
        with output.open("x", encoding="utf-8") as f:  # never overwrite a config
            f.write(text)
    except FileExistsError:
        print(f"error: {output} exists; give a new file name", file=sys.stderr)
        return EXIT_FILE
    except OSError as e:
        print(f"error: cannot write {output}: {e.strerror}", file=sys.stderr)
        return EXIT_FILE
    print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its own usage message
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "check-config":
            return cmd_check_config(args.file)
        if args.command == "import-scl":
            return cmd_import_scl(args.file, args.ied, args.host, args.port, args.output)
        if args.command == "run":
            from gateway.app import run_from_file

            return run_from_file(args.config)
        if args.command == "receiver":
            from cloud_sync.receiver.server import run_from_args

            return run_from_args(args)
        if args.command == "receiver-token":
            from cloud_sync.receiver.server import mint_from_args

            return mint_from_args(args)
        if args.command == "receiver-enrol-token":
            from cloud_sync.receiver.server import mint_enrol_from_args

            return mint_enrol_from_args(args)
        if args.command == "provision":
            from gateway.provision.cli import run as run_provision

            return run_provision(args)
        if args.command == "user":
            from gateway.panel.cli import run_user

            return run_user(args)
        if args.command == "panel-cert":
            from gateway.panel.cli import run_panel_cert

            return run_panel_cert(args)
        from gateway.commission.cli import COMMANDS as COMMISSION_COMMANDS

        if args.command in COMMISSION_COMMANDS:
            from gateway.commission.cli import run as run_commission

            return run_commission(args)
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(
                data_dir=args.data_dir,
                panel_port=args.panel_port,
                receiver_port=args.receiver_port,
                modbus_port=args.modbus_port,
                duration_s=args.duration,
            )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

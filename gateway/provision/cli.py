"""Argparse wiring of ``gateway provision``: first-boot provisioning from a file on the boot partition
(:mod:`gateway.provision.firstboot`), run as root by ``gateway-firstboot.service`` before ``gateway.service``.

``gateway provision [--boot-file PATH] [-c CONFIG] [--data-dir DIR] [--timeout S]``: provision from the file, or
retry a pending enrolment when there is no file. ``gateway provision --hash-password``: read a password (twice
on a terminal, else one line of stdin) and print its ``scrypt$...`` hash for ``[provision] admin_password_hash``.

Exit codes follow :mod:`gateway.cli`: 0 provisioned (enrolment done or pending) or nothing to do, 1 a bad
provisioning file (every problem is logged: file, key, device), 2 usage, 4 any other failure. Log lines go to
stderr (the journal under systemd); the summary goes to stdout.

Threads: the CLI process's main thread.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import Final

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS: Final = frozenset({"provision"})
DEFAULT_BOOT_FILE: Final = Path("/boot/firmware/gateway.toml")  # the same defaults as gateway.provision.firstboot
DEFAULT_CONFIG: Final = Path("/etc/gateway/gateway.toml")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 4


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``provision`` to the ``gateway`` parser's subparsers."""
    p = sub.add_parser(
        "provision", help="first boot: install the provisioning file from the boot partition and enrol",
        description="If the provisioning file exists: check it, install its config, create the panel's admin, "
        "make the device key and enrol with the receiver for a client certificate, then delete the file. A bad "
        "file is renamed <name>.rejected (secrets redacted) and changes nothing. Without the file, a pending "
        "enrolment is retried. See docs/deployment.md, \"First boot\".")
    p.add_argument("--boot-file", type=Path, default=DEFAULT_BOOT_FILE,
                   help=f"provisioning file (default {DEFAULT_BOOT_FILE})")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"config file to install (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the gateway's data directory when the provisioning file sets no [gateway] data_dir "
                   "(default: the installed config's, else /var/lib/gateway)")
    p.add_argument("--timeout", type=_positive, default=30.0, help="enrolment HTTP timeout in seconds (default 30)")
    p.add_argument("--hash-password", action="store_true",
                   help="only print the scrypt hash of a password (for [provision] admin_password_hash)")


def _hash_password() -> int:
    from gateway.panel.users import MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, hash_password

    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("error: the passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not MIN_PASSWORD_LEN <= len(pw) <= MAX_PASSWORD_LEN:
        print(f"error: the password must have {MIN_PASSWORD_LEN}..{MAX_PASSWORD_LEN} characters", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(pw))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run ``gateway provision`` as parsed by a parser :func:`add_commands` extended."""
    if args.hash_password:
        return _hash_password()
    from gateway.provision.firstboot import first_boot

    logger = logging.getLogger("gateway.provision")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = first_boot(args.boot_file, args.config, args.data_dir, timeout_s=args.timeout)
    except Exception:  # a bug must not hide the cause: the gateway still starts (Wants=), the journal says why
        logger.exception("provisioning failed unexpectedly; nothing more was done")
        return EXIT_RUNTIME
    finally:
        logger.removeHandler(handler)
    for m in result.messages:
        print(m)
    if result.action == "none":
        print(f"nothing to do: no {args.boot_file} and no pending enrolment")
    elif result.action == "rejected":
        print(f"{len(result.problems)} problem(s) in {args.boot_file}: nothing installed "
              "(see the errors above, the panel, or the .rejected copy)")
    return result.exit_code

"""``gateway user ...`` and ``gateway panel-cert``: manage panel accounts and the panel's HTTPS certificate.

Every command takes ``-c/--config FILE`` (the gateway config: it says where ``data_dir`` is) and works on the
files the daemon uses (:func:`gateway.panel.tls.panel_paths`); a running daemon picks up user changes at its next
request. Exit codes follow :mod:`gateway.cli`: 0 done, 1 refused (bad config, unknown user, weak password, last
admin...), 2 usage, 3 a file cannot be read or written. User mistakes print ``error: ...``, never a traceback.

Threads: runs in the CLI process only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.panel.roles import Role
from gateway.panel.users import UserError, UserFileError, UserStore, ensure_private_dir

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_FILE = 3

_ROLES = ", ".join(r.label for r in Role)


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, help="gateway TOML config file")


def add_user_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``user`` command and its subcommands, on the ``gateway`` parser's subparsers."""
    u = sub.add_parser("user", help="manage panel users (accounts, roles, API tokens)",
                       description="Manage the operator panel's users. Roles: " + _ROLES + ".")
    us = u.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)

    s = us.add_parser("setup-token", help="one-time token for the panel's /setup page (creates the first admin)")
    _config_option(s)
    s.add_argument("--ttl-h", type=float, default=24.0, help="hours the token stays valid (default 24)")

    a = us.add_parser("add", help="add a user")
    _config_option(a)
    a.add_argument("name")
    a.add_argument("--role", required=True, help=f"one of {_ROLES}")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")

    ls = us.add_parser("list", help="list users")
    _config_option(ls)

    pw = us.add_parser("passwd", help="set a user's password")
    _config_option(pw)
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")

    r = us.add_parser("role", help="change a user's role")
    _config_option(r)
    r.add_argument("name")
    r.add_argument("role", help=f"one of {_ROLES}")

    for cmd, text in (("remove", "remove a user (and their API tokens)"), ("disable", "disable a user (no login)"),
                      ("enable", "enable a disabled user"), ("token", "print a new API bearer token for a user")):
        c = us.add_parser(cmd, help=text)
        _config_option(c)
        c.add_argument("name")


def add_panel_cert_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "panel-cert",
        help="create the panel's self-signed HTTPS certificate if missing; print its fingerprint",
        description="Make sure the panel's certificate exists and print its SHA-256 fingerprint, names and expiry."
        " Compare the fingerprint with the one the browser shows before accepting the certificate.",
    )
    _config_option(p)
    p.add_argument("--san", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP address for a newly generated certificate (repeatable)")
    p.add_argument("--renew", action="store_true",
                   help="replace the generated certificate with a new one (new key, new fingerprint)")


def _load(config: Path) -> tuple[GatewayConfig | None, int]:
    """(config, 0) or (None, exit code) after printing the problems."""
    from gateway.cli import cmd_check_config_errors
    from gateway.config_load import ConfigError, load_config

    try:
        cfg, _warnings = load_config(config)
    except ConfigError as e:
        return None, cmd_check_config_errors(e, config)
    return cfg, EXIT_OK


def _read_new_password(name: str, from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            print("error: no password on stdin", file=sys.stderr)
            return None
        return password
    first = getpass.getpass(f"New password for {name}: ")
    second = getpass.getpass("Repeat the password: ")
    if first != second:
        print("error: the passwords do not match", file=sys.stderr)
        return None
    return first


def _fmt_ns(ns: int) -> str:
    if ns <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_user(args: argparse.Namespace) -> int:
    """Run ``gateway user <subcommand>``; returns the exit code."""
    from gateway.panel.tls import panel_paths

    cfg, code = _load(args.config)
    if cfg is None:
        return code
    users_file, _cert, _key = panel_paths(cfg)
    store = UserStore(users_file)
    cmd = args.user_command
    try:
        if cmd == "setup-token":
            return _setup_token(store, args.ttl_h, cfg)
        if cmd == "add":
            try:
                role = Role.parse(args.role)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_CONFIG
            password = _read_new_password(args.name, args.password_stdin)
            if password is None:
                return EXIT_CONFIG
            user = store.add(args.name, password, role)
            print(f"added {user.name} ({user.role.label})")
            return EXIT_OK
        if cmd == "list":
            return _list(store)
        if cmd == "passwd":
            if store.get(args.name) is None:
                raise UserError(f"no user {args.name!r}")
            password = _read_new_password(args.name, args.password_stdin)
            if password is None:
                return EXIT_CONFIG
            store.set_password(args.name, password)
            print(f"password of {args.name} changed (their panel sessions end)")
            return EXIT_OK
        if cmd == "role":
            try:
                role = Role.parse(args.role)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_CONFIG
            store.set_role(args.name, role)
            print(f"{args.name} is now {role.label}")
            return EXIT_OK
        if cmd == "remove":
            store.remove(args.name)
            print(f"removed {args.name}")
            return EXIT_OK
        if cmd in ("disable", "enable"):
            store.set_disabled(args.name, cmd == "disable")
            print(f"{args.name} {cmd}d")
            return EXIT_OK
        if cmd == "token":
            token = store.issue_api_token(args.name)
            holder = store.get(args.name)
            label = holder.role.label if holder is not None else "?"
            print(token)
            print(f"API token for {args.name} ({label}): send it as 'Authorization: Bearer <token>'. "
                  "It is shown only this once; removing the user revokes it.", file=sys.stderr)
            return EXIT_OK
    except UserFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FILE
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FILE
    print(f"error: unknown user subcommand {cmd!r}", file=sys.stderr)
    return EXIT_USAGE


def _setup_token(store: UserStore, ttl_h: float, cfg: GatewayConfig) -> int:
    if not ttl_h > 0:
        print("error: --ttl-h must be positive", file=sys.stderr)
        return EXIT_USAGE
    token = store.issue_setup_token(ttl_h * 3600.0)
    scheme = "https" if cfg.panel.tls else "http"
    print(f"setup token: {token}")
    print(f"open {scheme}://<gateway address>:{cfg.panel.port}/setup?token={token}")
    print(f"It creates the first admin account, works once, and expires in {ttl_h:g} h.")
    return EXIT_OK


def _list(store: UserStore) -> int:
    users = store.list()
    if not users:
        print("no users (create the first admin with `gateway user setup-token` or `gateway user add`)")
        return EXIT_OK
    rows = [("NAME", "ROLE", "CREATED", "DISABLED", "API TOKENS")]
    rows += [(u.name, u.role.label, _fmt_ns(u.created_ns), "yes" if u.disabled else "no",
              str(store.api_token_count(u.name))) for u in users]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def run_panel_cert(args: argparse.Namespace) -> int:
    """Run ``gateway panel-cert``; returns the exit code."""
    from gateway.panel.tls import certificate_info, ensure_certificate, panel_hostnames, panel_paths

    cfg, code = _load(args.config)
    if cfg is None:
        return code
    _users, cert, key = panel_paths(cfg)
    own = cfg.panel.cert_file is not None
    try:
        if args.renew:
            if own:
                print(f"error: {cert} is the site's own certificate ([panel] cert_file): renew it with the site "
                      "PKI", file=sys.stderr)
                return EXIT_CONFIG
            for f in (cert, key):
                f.unlink(missing_ok=True)
        generated = False
        if not own:
            ensure_private_dir(_users.parent)  # <data_dir>/panel: 0700
            generated = ensure_certificate(cert, key, panel_hostnames(cfg, args.san))
        elif args.san:
            print("warning: --san is ignored: the certificate is [panel] cert_file", file=sys.stderr)
        info = certificate_info(cert)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FILE
    if generated:
        print(f"generated a self-signed certificate: {cert} (key {key})")
    else:
        print(f"certificate: {cert}" + (" ([panel] cert_file)" if own else ""))
    print(f"fingerprint: {info['fingerprint']}")
    print(f"subject:     CN={info['subject_cn']}")
    print(f"names:       {', '.join(info['sans']) or '-'}")
    print(f"valid until: {info['not_after']}")
    if not own:
        print("Browsers warn about a self-signed certificate: accept it only when the fingerprint they show is the"
              " one above.")
    if args.san and not generated and not own:
        print("note: --san applies to a new certificate only; add --renew to generate one with these names",
              file=sys.stderr)
    return EXIT_OK

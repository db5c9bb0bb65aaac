"""Running the receiver: ``serve()`` (blocking, for the CLI), ``main(argv)``, and :class:`ReceiverServer`
(an async context manager that serves on the current event loop; tests and the benchmark use it).

Tokens (gateway id → bearer token) come from, merged in this order (later wins):
``GATEWAY_RECEIVER_TOKENS`` env var (``gw1=tok1,gw2=tok2``), ``--token-file`` (one ``GW=TOKEN`` or
``GW=sha256:<hex>`` per line, ``#`` comments) and ``--token GW=TOKEN`` options. Plain tokens are hashed when
the app is built (:mod:`cloud_sync.receiver.tokens`); ``mint_main`` (``python -m cloud_sync.receiver token``,
``gateway receiver-token``) makes a new token and appends its hash to a token file.

``--workers N`` (PostgreSQL only) runs N receiver processes behind one listening socket: uvicorn's
multi-process supervisor binds the socket once and spawns N workers that accept on it; each worker builds its
app with :func:`worker_app` from settings this process puts in :data:`WORKER_ENV` (tokens already hashed).
The parent creates/checks the database schema before any worker starts.

Enrolment (``POST /v1/enrol``, :mod:`cloud_sync.receiver.enrol`): ``--ca-cert``/``--ca-key`` give the CA that
signs gateways' client certificates, ``--enrol-token-file`` the hashed one-time enrolment tokens minted by
``gateway receiver-enrol-token --gateway ID`` (:func:`mint_enrol_from_args`). Without a CA, enrolment answers 503.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette

from cloud_sync.errors import BackendError
from cloud_sync.receiver.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECOMPRESSED_BYTES, build_app
from cloud_sync.receiver.backends import open_backend
from cloud_sync.receiver.enrol import (
    DEFAULT_CERT_DAYS,
    DEFAULT_ENROL_TOKEN_FILE,
    Enrolment,
    EnrolmentCA,
    EnrolmentError,
    EnrolTokenFile,
)
from cloud_sync.receiver.tokens import TokenTable, append_hashed_token, check_gateway_id, mint_token
from gateway.asgi_server import AsgiServer

TOKENS_ENV: Final = "GATEWAY_RECEIVER_TOKENS"
WORKER_ENV: Final = "GATEWAY_RECEIVER_WORKER_CONFIG"  # JSON settings for worker_app() (set by serve())
DEFAULT_TOKEN_FILE: Final = Path("receiver.tokens")
log = logging.getLogger(__name__)


def parse_tokens(items: Iterable[str]) -> dict[str, str]:
    """``["gw1=tok1", ...]`` → ``{"gw1": "tok1"}``; ValueError naming a malformed item."""
    out: dict[str, str] = {}
    for raw in items:
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        gw, sep, token = item.partition("=")
        if not sep or not gw.strip() or not token.strip():
            raise ValueError(f"token {item!r} must look like GATEWAY_ID=TOKEN")
        out[gw.strip()] = token.strip()
    return out


def load_tokens(
    options: Sequence[str] = (), token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Merge tokens from the environment, a file and options (see the module docstring)."""
    env = os.environ if environ is None else environ
    tokens = parse_tokens(env.get(TOKENS_ENV, "").replace(",", "\n").split())
    if token_file is not None:
        tokens.update(parse_tokens(token_file.read_text(encoding="utf-8").splitlines()))
    tokens.update(parse_tokens(options))
    return tokens


class ReceiverServer(AsgiServer):
    """Serve the receiver app on the running event loop (``port=0`` picks a free port).

    The listening socket is bound and listening before ``__aenter__``/``start()`` returns, so ``url`` accepts
    connections at once. Stopping runs the app's lifespan shutdown, which closes its backend.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        super().__init__(app, host, port, name="receiver", lifespan="on", log_level=log_level)


def _check_backend(db: str, db_schema: str | None) -> None:
    """Open the database once (creating or checking its schema) and close it; BackendError if it cannot."""
    backend = open_backend(db, schema=db_schema)
    try:
        asyncio.run(backend.ping())
    finally:
        backend.close()


def worker_app() -> Starlette:
    """App factory of one ``--workers`` process (uvicorn calls it in the worker): settings from WORKER_ENV."""
    cfg = json.loads(os.environ[WORKER_ENV])
    enrol = cfg.get("enrol")
    return build_app(
        open_backend(cfg["db"], schema=cfg["db_schema"]),
        TokenTable(cfg["tokens"]),
        int(cfg["max_body_bytes"]),
        int(cfg["max_decompressed_bytes"]),
        enrolment=make_enrolment(Path(enrol["token_file"]), _path(enrol["ca_cert"]), _path(enrol["ca_key"]),
                                 int(enrol["cert_days"])) if enrol else None,
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def make_enrolment(
    token_file: Path, ca_cert: Path | None, ca_key: Path | None, cert_days: int = DEFAULT_CERT_DAYS
) -> Enrolment:
    """The enrolment settings of the app; EnrolmentError for a CA that cannot be used (or only one of the two
    files). No CA: ``POST /v1/enrol`` answers 503."""
    if (ca_cert is None) != (ca_key is None):
        raise EnrolmentError("--ca-cert and --ca-key go together (the CA that signs gateway certificates)")
    ca = EnrolmentCA(ca_cert, ca_key, cert_days=cert_days) if ca_cert is not None and ca_key is not None else None
    return Enrolment(EnrolTokenFile(token_file), ca)


def serve(
    db: str,
    host: str = "127.0.0.1",
    port: int = 8081,
    tokens: Mapping[str, str] | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    log_level: str = "info",
    workers: int = 1,
    db_schema: str | None = None,
    enrol_token_file: Path = DEFAULT_ENROL_TOKEN_FILE,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    cert_days: int = DEFAULT_CERT_DAYS,
) -> None:
    """Run the receiver until SIGINT/SIGTERM. ``db``: a DuckDB file path or a ``postgresql://`` URL
    (``db_schema``: its tables live in that schema). ``workers`` > 1 (PostgreSQL only): that many processes
    share the listening socket. Raises BackendError when the database cannot be opened (checked first) and
    ValueError for an invalid combination of options (EnrolmentError, a ValueError, for an unusable CA)."""
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    is_pg = db.startswith(("postgresql://", "postgres://"))
    if workers > 1 and not is_pg:
        raise ValueError("--workers > 1 needs a postgresql:// database (a DuckDB file has a single writer)")
    table = TokenTable(tokens or {})
    enrolment = make_enrolment(enrol_token_file, ca_cert, ca_key, cert_days)
    if not len(table):
        log.warning("receiver has no tokens: every upload will be refused with 401")
    _check_backend(db, db_schema)
    if workers > 1:
        settings = {
            "db": db,
            "db_schema": db_schema,
            "tokens": table.hashed(),
            "max_body_bytes": max_body_bytes,
            "max_decompressed_bytes": max_decompressed_bytes,
            "enrol": {
                "token_file": str(enrol_token_file),
                "ca_cert": str(ca_cert) if ca_cert else None,
                "ca_key": str(ca_key) if ca_key else None,
                "cert_days": cert_days,
            },
        }
        os.environ[WORKER_ENV] = json.dumps(settings)
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            lifespan="on",
            ws="none",
            log_level=log_level,
        )
        return
    app = build_app(
        open_backend(db, schema=db_schema), table, max_body_bytes, max_decompressed_bytes, enrolment=enrolment
    )
    uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, lifespan="on", ws="none", log_level=log_level)
    ).run()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``gateway receiver`` (pass a subparser to add them to it)."""
    p = parser or argparse.ArgumentParser(
        prog="gateway receiver", description="Reference ingestion receiver."
    )
    p.add_argument("--db", default="receiver.duckdb", help="DuckDB file path or postgresql:// URL")
    p.add_argument("--db-schema", help="PostgreSQL schema for the receiver's tables (created if missing)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="receiver processes sharing the port (PostgreSQL only; default 1)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8081, help="TCP port to listen on")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="GATEWAY_ID=TOKEN",
        help=f"accepted token for a gateway (repeatable); also ${TOKENS_ENV} and --token-file",
    )
    p.add_argument("--token-file", type=Path, help="file of GATEWAY_ID=sha256:HEX (or GATEWAY_ID=TOKEN) lines")
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        help="largest request body (MiB) before 413",
    )
    p.add_argument(
        "--max-decompressed-mb",
        type=float,
        default=DEFAULT_MAX_DECOMPRESSED_BYTES / 2**20,
        help="largest decompressed payload (MiB) before 413",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.add_argument("--ca-cert", type=Path, help="PEM CA certificate that signs gateways' client certificates "
                   "(POST /v1/enrol; with --ca-key; without them enrolment answers 503)")
    p.add_argument("--ca-key", type=Path, help="PEM private key of --ca-cert (unencrypted; keep it 0600)")
    p.add_argument("--enrol-token-file", type=Path, default=DEFAULT_ENROL_TOKEN_FILE,
                   help=f"hashed one-time enrolment tokens (default {DEFAULT_ENROL_TOKEN_FILE}; "
                   "gateway receiver-enrol-token)")
    p.add_argument("--cert-days", type=int, default=DEFAULT_CERT_DAYS,
                   help=f"validity of an issued client certificate in days (default {DEFAULT_CERT_DAYS})")
    return p


def run_from_args(args: argparse.Namespace) -> int:
    try:
        tokens = load_tokens(args.token, args.token_file)
    except (ValueError, OSError) as e:
        print(f"gateway receiver: {e}")
        return 2
    try:
        serve(
            args.db,
            args.host,
            args.port,
            tokens,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_decompressed_bytes=int(args.max_decompressed_mb * 2**20),
            log_level=args.log_level,
            workers=args.workers,
            db_schema=args.db_schema,
            enrol_token_file=args.enrol_token_file,
            ca_cert=args.ca_cert,
            ca_key=args.ca_key,
            cert_days=args.cert_days,
        )
    except ValueError as e:
        print(f"gateway receiver: {e}", file=sys.stderr)
        return 2
    except BackendError as e:
        print(f"gateway receiver: {e}", file=sys.stderr)
        return 4
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``gateway receiver`` entry point; returns the exit code."""
    return run_from_args(build_parser().parse_args(argv))


def build_token_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``python -m cloud_sync.receiver token`` / ``gateway receiver-token``."""
    p = parser or argparse.ArgumentParser(
        prog="python -m cloud_sync.receiver token",
        description="Mint a bearer token for a gateway: append its hash to the token file, print it once.",
    )
    p.add_argument("gateway_id", metavar="GATEWAY_ID", help="the gateway's id ([gateway] id in its config)")
    p.add_argument(
        "--token-file",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        help=f"token file to append GATEWAY_ID=sha256:HEX to (default {DEFAULT_TOKEN_FILE}; created 0600)",
    )
    return p


def mint_from_args(args: argparse.Namespace) -> int:
    """Mint a token, append its hash, print the token (the only time it is shown) on stdout."""
    try:
        gateway_id = check_gateway_id(args.gateway_id)
        token = mint_token()
        append_hashed_token(args.token_file, gateway_id, token)
    except (ValueError, OSError) as e:
        print(f"receiver token: {e}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"appended the hash for {gateway_id} to {args.token_file}; put the token above in the gateway's "
        "[[sinks]] token (it is not stored anywhere)",
        file=sys.stderr,
    )
    return 0


def build_enrol_token_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``gateway receiver-enrol-token``."""
    p = parser or argparse.ArgumentParser(
        prog="gateway receiver-enrol-token",
        description="Mint a one-time enrolment token for a gateway's first boot: append its hash to the "
        "enrolment token file, print it once.",
    )
    p.add_argument("--gateway", required=True, metavar="GATEWAY_ID",
                   help="the gateway's id ([gateway] id in its provisioning file)")
    p.add_argument(
        "--enrol-token-file",
        type=Path,
        default=DEFAULT_ENROL_TOKEN_FILE,
        help=f"file to add GATEWAY_ID=sha256:HEX to (default {DEFAULT_ENROL_TOKEN_FILE}; created 0600); the "
        "receiver's --enrol-token-file",
    )
    return p


def mint_enrol_from_args(args: argparse.Namespace) -> int:
    """Mint an enrolment token, store its hash, print the token (the only time it is shown) on stdout."""
    try:
        gateway_id = check_gateway_id(args.gateway)
        token = mint_token()
        EnrolTokenFile(args.enrol_token_file).add(gateway_id, token)
    except (ValueError, OSError) as e:
        print(f"receiver enrol token: {e}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"added the hash for {gateway_id} to {args.enrol_token_file}; put the token above in the gateway's "
        "provisioning file ([provision] enrol_token); it works once",
        file=sys.stderr,
    )
    return 0


def mint_main(argv: Sequence[str] | None = None) -> int:
    return mint_from_args(build_token_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

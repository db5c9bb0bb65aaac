"""Running the receiver: ``serve()`` (blocking, for the CLI), ``main(argv)``, and :class:`ReceiverServer`
(an async context manager that serves on the current event loop; tests and the benchmark use it).

Tokens (gateway id → bearer token) come from, merged in this order (later wins):
``GATEWAY_RECEIVER_TOKENS`` env var (``gw1=tok1,gw2=tok2``), ``--token-file`` (one ``GW=TOKEN`` per line,
``#`` comments) and ``--token GW=TOKEN`` options.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import uvicorn

from cloud_sync.receiver.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECOMPRESSED_BYTES, build_app
from cloud_sync.receiver.backends import open_backend
from gateway.asgi_server import AsgiServer

TOKENS_ENV: Final = "GATEWAY_RECEIVER_TOKENS"
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


def serve(
    db: str,
    host: str = "127.0.0.1",
    port: int = 8081,
    tokens: Mapping[str, str] | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    log_level: str = "info",
) -> None:
    """Run the receiver until SIGINT/SIGTERM. ``db``: a DuckDB file path or a ``postgresql://`` URL."""
    if not tokens:
        log.warning("receiver has no tokens: every upload will be refused with 401")
    app = build_app(open_backend(db), tokens or {}, max_body_bytes, max_decompressed_bytes)
    uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, lifespan="on", ws="none", log_level=log_level)
    ).run()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``gateway receiver`` (pass a subparser to add them to it)."""
    p = parser or argparse.ArgumentParser(
        prog="gateway receiver", description="Reference ingestion receiver."
    )
    p.add_argument("--db", default="receiver.duckdb", help="DuckDB file path or postgresql:// URL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8081, help="TCP port to listen on")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="GATEWAY_ID=TOKEN",
        help=f"accepted token for a gateway (repeatable); also ${TOKENS_ENV} and --token-file",
    )
    p.add_argument("--token-file", type=Path, help="file of GATEWAY_ID=TOKEN lines")
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
    return p


def run_from_args(args: argparse.Namespace) -> int:
    try:
        tokens = load_tokens(args.token, args.token_file)
    except (ValueError, OSError) as e:
        print(f"gateway receiver: {e}")
        return 2
    serve(
        args.db,
        args.host,
        args.port,
        tokens,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_decompressed_bytes=int(args.max_decompressed_mb * 2**20),
        log_level=args.log_level,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``gateway receiver`` entry point; returns the exit code."""
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

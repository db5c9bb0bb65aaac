"""Reference ingestion receiver: an ASGI app landing gateway batches exactly once in DuckDB or PostgreSQL.

Public API: :func:`build_app`, :func:`serve`, :func:`main`, :class:`ReceiverServer`, the backends
(:class:`DuckDBBackend`, :class:`PostgresBackend`, :func:`open_backend`), hashed tokens (:class:`TokenTable`,
:func:`hash_token`). See ``docs/ingestion.md`` and ``docs/receiver-fleet.md``.
"""

from cloud_sync.receiver.app import build_app, openapi_document
from cloud_sync.receiver.backends import Backend, DuckDBBackend, LandResult, PostgresBackend, open_backend
from cloud_sync.receiver.server import ReceiverServer, build_parser, load_tokens, main, run_from_args, serve
from cloud_sync.receiver.tokens import TokenTable, hash_token

__all__ = [
    "Backend",
    "DuckDBBackend",
    "LandResult",
    "PostgresBackend",
    "ReceiverServer",
    "TokenTable",
    "build_app",
    "build_parser",
    "hash_token",
    "load_tokens",
    "main",
    "open_backend",
    "openapi_document",
    "run_from_args",
    "serve",
]

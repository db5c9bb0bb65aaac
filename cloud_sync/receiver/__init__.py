"""Reference ingestion receiver: an ASGI app landing gateway batches exactly once in DuckDB or PostgreSQL.

Public API: :func:`build_app`, :func:`serve`, :func:`main`, :class:`ReceiverServer`, the backends
(:class:`DuckDBBackend`, :class:`PostgresBackend`, :func:`open_backend`). See ``docs/ingestion.md``.
"""

from cloud_sync.receiver.app import build_app, openapi_document
from cloud_sync.receiver.backends import Backend, DuckDBBackend, LandResult, PostgresBackend, open_backend
from cloud_sync.receiver.server import ReceiverServer, build_parser, load_tokens, main, run_from_args, serve

__all__ = [
    "Backend",
    "DuckDBBackend",
    "LandResult",
    "PostgresBackend",
    "ReceiverServer",
    "build_app",
    "build_parser",
    "load_tokens",
    "main",
    "open_backend",
    "openapi_document",
    "run_from_args",
    "serve",
]

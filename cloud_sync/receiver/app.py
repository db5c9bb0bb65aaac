"""The receiver's ASGI app (Starlette): ``POST /v1/batches``, stats, health, the OpenAPI document, and
``POST /v1/enrol`` (a gateway's first boot: a one-time enrolment token and a CSR in, a client certificate out;
:mod:`cloud_sync.receiver.enrol`).

The contract (headers, payload, responses, idempotency, limits) is documented in ``docs/ingestion.md`` and in
:data:`OPENAPI`; keep the three consistent.

Request flow of ``POST /v1/batches`` (cheap checks first, so unauthenticated clients cost almost nothing):
bearer token known (401) → body within ``max_body_bytes`` (413) → an Arrow stream (400) whose schema metadata
says ``gwsync/1`` and names a gateway (422) → the token belongs to that gateway (403) → decompressed size
within ``max_decompressed_bytes`` (413) → decode (400 unreadable, 422 not gwsync/1) → validate → land readings
and events in one transaction (503 with Retry-After when the database fails) → 200 with counts.

Tokens are kept hashed (:mod:`cloud_sync.receiver.tokens`); plain ones are hashed when the app is built.

Decoding and validation run in worker threads (``asyncio.to_thread``); database work runs in the backend's
single worker thread. The event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_sync.codec import CONTENT_TYPE, FORMAT, DecodedBatch, decode_batch, peek_gateway_id
from cloud_sync.errors import BackendError, CodecError, PayloadTooLarge, SchemaMismatch
from cloud_sync.receiver.backends import Backend
from cloud_sync.receiver.enrol import Enrolment, EnrolmentError
from cloud_sync.receiver.tokens import TokenTable
from cloud_sync.receiver.validate import REASONS, split_rows

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED_BYTES: Final = 512 * 1024 * 1024
MAX_BATCH_KEY_LEN: Final = 256


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _codec_error(e: CodecError) -> JSONResponse:
    """400 for bytes that are not a readable Arrow stream, 422 for a readable stream that is not gwsync/1."""
    if isinstance(e, PayloadTooLarge):
        return _error(413, "too-large", str(e))
    if isinstance(e, SchemaMismatch):
        return _error(422, "unprocessable", str(e))
    return _error(400, "malformed", str(e))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
        except ValueError as e:
            raise CodecError("invalid Content-Length") from e
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    backend: Backend,
    tokens: Mapping[str, str] | TokenTable,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
    enrolment: Enrolment | None = None,
) -> Starlette:
    """The receiver app. ``tokens`` maps gateway id → bearer token, plain or ``sha256:<hex>`` (hashed and
    copied), or is a :class:`TokenTable`. The app owns ``backend``: it is
    closed when the app's lifespan ends (servers run the lifespan; test transports may not, so close the
    backend yourself there). ``clock_ns`` (UTC epoch ns) bounds acceptable timestamps. ``enrolment``: the
    enrolment tokens and CA of ``POST /v1/enrol`` (:mod:`cloud_sync.receiver.enrol`); without a CA that route
    answers 503.
    """
    table = tokens if isinstance(tokens, TokenTable) else TokenTable(tokens)

    async def post_batch(request: Request) -> Response:
        token = _bearer(request)
        if token is None:
            return _error(401, "unauthenticated", "missing bearer token", {"WWW-Authenticate": "Bearer"})
        if not table.known(token):
            return _error(401, "unauthenticated", "unknown token", {"WWW-Authenticate": "Bearer"})
        try:
            body = await _read_body(request, max_body_bytes)
            gateway_id = peek_gateway_id(body)
        except CodecError as e:
            return _codec_error(e)
        if not table.valid_for(gateway_id, token):
            return _error(403, "forbidden", f"token is not valid for gateway {gateway_id!r}")
        try:
            decoded: DecodedBatch = await asyncio.to_thread(
                decode_batch, body, max_decompressed_bytes=max_decompressed_bytes
            )
        except CodecError as e:
            return _codec_error(e)
        rows = decoded.rows
        events = decoded.events
        key = request.headers.get("idempotency-key")
        if key is None:
            if rows.num_rows:
                seqs = rows.column("seq")
                key = f"{gateway_id}:{seqs[0].as_py()}-{seqs[-1].as_py()}"
            elif events.num_rows:
                eseq = events.column("seq")
                key = f"{gateway_id}:e{eseq[0].as_py()}-{eseq[-1].as_py()}"
            else:
                key = f"{gateway_id}:empty"
        elif not key or len(key) > MAX_BATCH_KEY_LEN or not key.isprintable():
            return _error(
                400, "malformed", f"Idempotency-Key must be 1..{MAX_BATCH_KEY_LEN} printable characters"
            )
        now = clock_ns()
        split = await asyncio.to_thread(split_rows, rows, decoded.points, now)
        try:
            result = await backend.land(
                gateway_id, key, split.valid, split.quarantine, decoded.points, now, events=events
            )
        except BackendError as e:
            log.error("receiver database error landing %s: %s", key, e)
            return _error(503, "unavailable", "database error; retry later", {"Retry-After": "1"})
        reasons: dict[str, int] = {}
        if split.quarantine.num_rows:
            for r in split.quarantine.column("reason").to_pylist():
                reasons[r] = reasons.get(r, 0) + 1
        return JSONResponse(
            {
                "gateway_id": gateway_id,
                "batch_key": key,
                "rows": rows.num_rows,
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "quarantined": result.quarantined,
                "quarantine_reasons": reasons,
                "replay": result.replay,
                "events": events.num_rows,
                "events_accepted": result.events_accepted,
                "events_duplicates": result.events_duplicates,
            }
        )

    async def gateway_stats(request: Request) -> Response:
        gateway_id = request.path_params["gateway_id"]
        token = _bearer(request)
        if token is None or not table.known(token):
            return _error(401, "unauthenticated", "missing or unknown token", {"WWW-Authenticate": "Bearer"})
        if not table.valid_for(gateway_id, token):
            return _error(403, "forbidden", f"token is not valid for gateway {gateway_id!r}")
        try:
            stats = await backend.stats(gateway_id)
        except BackendError as e:
            log.error("receiver database error reading stats: %s", e)
            return _error(503, "unavailable", "database error; retry later", {"Retry-After": "1"})
        return JSONResponse({"gateway_id": gateway_id, **stats})

    async def enrol(request: Request) -> Response:
        # 401 no/unknown token, 403 token of another gateway, 409 token used, 400 malformed, 422 CSR refused,
        # 503 no CA configured; 200 {"gateway_id", "cert_pem", "ca_pem"}.
        token = _bearer(request)
        if token is None:
            return _error(401, "unauthenticated", "missing enrolment token", {"WWW-Authenticate": "Bearer"})
        if enrolment is None or enrolment.ca is None:
            return _error(503, "unavailable", "enrolment is not configured on this receiver (start it with "
                          "--ca-cert and --ca-key)")
        ca = enrolment.ca
        try:
            body = await _read_body(request, 64 * 1024)
        except CodecError as e:
            return _codec_error(e)
        try:
            doc = json.loads(body)
        except ValueError:
            return _error(400, "malformed", "expected a JSON object {gateway_id, csr_pem}")
        gateway_id, csr_pem = (doc.get("gateway_id"), doc.get("csr_pem")) if isinstance(doc, dict) else (None, None)
        if not isinstance(gateway_id, str) or not gateway_id or not isinstance(csr_pem, str):
            return _error(400, "malformed", "expected a JSON object {gateway_id, csr_pem} of strings")
        state = await asyncio.to_thread(enrolment.tokens.check, gateway_id, token)
        if state == "unknown":
            return _error(401, "unauthenticated", "unknown enrolment token", {"WWW-Authenticate": "Bearer"})
        if state == "wrong-gateway":
            return _error(403, "forbidden", f"enrolment token is not valid for gateway {gateway_id!r}")
        if state == "used":
            return _error(409, "conflict", "enrolment token was used already: mint a new one "
                          "(gateway receiver-enrol-token)")
        try:
            csr = await asyncio.to_thread(ca.check_csr, csr_pem, gateway_id)
        except EnrolmentError as e:
            return _error(422, "unprocessable", str(e))
        state = await asyncio.to_thread(enrolment.tokens.consume, gateway_id, token)
        if state != "ok":  # another request used it in between
            return _error(409, "conflict", "enrolment token was used already")
        cert_pem = await asyncio.to_thread(ca.sign, csr, gateway_id)
        log.info("enrolled gateway %s: issued a client certificate", gateway_id)
        return JSONResponse({"gateway_id": gateway_id, "cert_pem": cert_pem, "ca_pem": ca.ca_pem})

    async def healthz(request: Request) -> Response:
        try:
            await backend.ping()
        except BackendError as e:
            return JSONResponse(
                {"status": "error", "backend": backend.kind, "pid": os.getpid(), "message": str(e)},
                status_code=503,
            )
        return JSONResponse({"status": "ok", "backend": backend.kind, "pid": os.getpid()})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(max_body_bytes, max_decompressed_bytes))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.aclose()

    return Starlette(
        routes=[
            Route("/v1/batches", post_batch, methods=["POST"]),
            Route("/v1/gateways/{gateway_id}/stats", gateway_stats, methods=["GET"]),
            Route("/v1/enrol", enrol, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _err_schema() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Error"}


def openapi_document(max_body_bytes: int, max_decompressed_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the receiver (hand-written; mirrors docs/ingestion.md)."""

    def err(desc: str) -> dict[str, Any]:
        return {"description": desc, "content": {"application/json": {"schema": _err_schema()}}}

    auth_errors = {
        "401": err("Missing or unknown bearer token."),
        "403": err("The token belongs to another gateway."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Substation gateway ingestion (reference receiver)",
            "version": "1",
            "description": "Receives reading batches from gateways. See docs/ingestion.md.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {
                            "type": "string",
                            "enum": [
                                "unauthenticated",
                                "forbidden",
                                "too-large",
                                "malformed",
                                "unprocessable",
                                "unavailable",
                                "conflict",
                            ],
                        },
                        "message": {"type": "string"},
                    },
                },
                "BatchResult": {
                    "type": "object",
                    "required": [
                        "gateway_id",
                        "batch_key",
                        "rows",
                        "accepted",
                        "duplicates",
                        "quarantined",
                        "replay",
                    ],
                    "properties": {
                        "gateway_id": {"type": "string"},
                        "batch_key": {"type": "string"},
                        "rows": {"type": "integer", "description": "rows in the batch"},
                        "accepted": {"type": "integer", "description": "rows stored by this request"},
                        "duplicates": {"type": "integer", "description": "valid rows already stored"},
                        "quarantined": {"type": "integer", "description": "rows of this batch in quarantine"},
                        "quarantine_reasons": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                            "description": "count per reason: " + ", ".join(REASONS),
                        },
                        "replay": {"type": "boolean", "description": "the batch key was received before"},
                        "events": {"type": "integer", "description": "events in the batch"},
                        "events_accepted": {"type": "integer", "description": "events stored by this request"},
                        "events_duplicates": {"type": "integer", "description": "events already stored"},
                    },
                },
                "GatewayStats": {
                    "type": "object",
                    "properties": {
                        "gateway_id": {"type": "string"},
                        "rows": {"type": "integer"},
                        "last_seq": {"type": "integer"},
                        "quarantined": {"type": "integer"},
                        "batches": {"type": "integer"},
                        "events": {"type": "integer"},
                        "last_event_seq": {"type": "integer"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/enrol": {
                "post": {
                    "summary": "Enrol a gateway: sign its CSR with the receiver's CA (one-time enrolment token)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["gateway_id", "csr_pem"],
                        "properties": {"gateway_id": {"type": "string"},
                                       "csr_pem": {"type": "string", "description": "PEM CSR, CN = gateway_id"}},
                    }}}},
                    "responses": {
                        "200": {"description": "The signed client certificate and the CA chain.", "content": {
                            "application/json": {"schema": {"type": "object", "required": ["cert_pem", "ca_pem"],
                                                            "properties": {"cert_pem": {"type": "string"},
                                                                           "ca_pem": {"type": "string"}}}}}},
                        "400": err("The body is not a JSON object with gateway_id and csr_pem."),
                        "401": err("Missing or unknown enrolment token."),
                        "403": err("The enrolment token was minted for another gateway."),
                        "409": err("The enrolment token was used already."),
                        "422": err("The CSR is refused: bad signature, CN is not the gateway id, weak key."),
                        "503": err("Enrolment is not configured on this receiver (no CA)."),
                    },
                }
            },
            "/v1/batches": {
                "post": {
                    "summary": "Upload one batch of readings and events (exactly-once by (gateway_id, seq)).",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": MAX_BATCH_KEY_LEN},
                            "description": (
                                "<gateway_id>:<first_seq>-<last_seq> (events-only batch: "
                                "<gateway_id>:e<first_event_seq>-<last_event_seq>); a repeated key is a no-op."
                            ),
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "description": (
                            f"Arrow IPC stream, format {FORMAT} (zstd buffers); at most "
                            f"{max_body_bytes} bytes, {max_decompressed_bytes} bytes decompressed."
                        ),
                        "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "Landed (or already landed).",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}
                            },
                        },
                        "400": err("Payload is not an Arrow IPC stream (or is truncated), or a bad header."),
                        **auth_errors,
                        "413": err("Body or decompressed size over the limit."),
                        "422": err("A readable Arrow stream that is not gwsync/1; the message names the problem."),
                        "503": err("Database unavailable; retry after Retry-After seconds."),
                    },
                }
            },
            "/v1/gateways/{gateway_id}/stats": {
                "get": {
                    "summary": "Counters of one gateway (needs that gateway's token).",
                    "parameters": [
                        {"name": "gateway_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "Counters.",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/GatewayStats"}}
                            },
                        },
                        **auth_errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and database reachability.",
                    "security": [],
                    "responses": {
                        "200": {"description": "ok: {status, backend, pid}"},
                        "503": {"description": "database down"},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
    }

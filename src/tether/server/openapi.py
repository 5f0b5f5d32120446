"""The OpenAPI document of ``/api/v1`` (hand-written: the API is small and stable)."""

from __future__ import annotations

from typing import Any

from .. import __version__

_ERROR = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


_UNAVAILABLE = {
    **_ERROR,
    "description": "The database or the object store is down; retry after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}


def _op(
    summary: str,
    *,
    params: list[str] | None = None,
    body: str | None = None,
    ok: str = "200",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params or []
        ],
        "responses": {ok: {"description": "OK"}, "4XX": _ERROR, "503": _UNAVAILABLE},
        "security": [{"bearer": []}],
    }
    if body:
        op["responses"]["413"] = {**_ERROR, "description": "Body over 8 MiB"}
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if extra:
        op.update(extra)
    return op


_PACKED_NOTE = (
    "A version's large chunk lists (more than 4,096 chunks) can travel apart from its "
    "JSON, as packed 40-byte records (32-byte BLAKE3, size as 8 bytes little-endian): "
    "Content-Type (a commit) or Accept (an answer) application/x-tether-packed. The body "
    "is one line of JSON, whose files name their records as stored_chunks: [first, "
    "count] and whose 'records' says how many bytes of them follow the line. A commit "
    "naming chunks the store lacks is refused with 409 (missing_chunks)."
)


def openapi_document() -> dict[str, Any]:
    model = ["name"]
    alias = ["name", "alias"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tether registry API",
            "version": __version__,
            "description": "Versioned REST API over the Tether registry use cases.",
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "hint": {"type": ["string", "null"]},
                    },
                },
                "NewVersion": {
                    "type": "object",
                    "required": ["values"],
                    "additionalProperties": False,
                    "properties": {
                        "values": {"type": "object"},
                        "bump": {"type": ["string", "null"]},
                    },
                },
                "AliasMove": {
                    "type": "object",
                    "required": ["version"],
                    "additionalProperties": False,
                    "properties": {
                        "version": {"type": ["string", "integer"]},
                        "reason": {"type": "string"},
                        "create": {"type": "boolean", "default": False},
                    },
                },
                "Reason": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"reason": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/health": {"get": _op("Liveness and server version")},
            "/ready": {
                "get": _op(
                    "Readiness: the database and the store answer (503 naming what is down)",
                    extra={"security": [], "responses": {"200": {"description": "Ready"},
                                                         "503": _UNAVAILABLE}},
                )
            },
            "/whoami": {"get": _op("The caller's principal and roles")},
            "/models": {"get": _op("List models")},
            "/models/{name}/versions": {
                "get": _op("List a model's versions", params=model),
                "post": _op(
                    "Register a version whose chunks are uploaded",
                    params=model,
                    body="NewVersion",
                    ok="201",
                    extra={"parameters": [
                        {"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string"}},
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "Sent again with a retry, answers the version the "
                         "first attempt registered (Idempotent-Replayed: true)",
                         "schema": {"type": "string", "minLength": 8, "maxLength": 128}},
                    ], "description": _PACKED_NOTE},
                ),
            },
            "/models/{name}/versions/{selector}": {
                "get": _op(
                    "One version by any selector (1.2.0, ~1.2, 7, sha:ab12, an alias, latest)",
                    params=["name", "selector"],
                    extra={"description": _PACKED_NOTE},
                )
            },
            "/datasets/{name}/versions": {
                "get": _op("List a dataset's versions (large chunk lists as chunk_count)",
                           params=model),
                "post": _op(
                    "Register a dataset version whose chunks are uploaded (the server "
                    "checks every field and recomputes every digest)",
                    params=model, ok="201", extra={"description": _PACKED_NOTE},
                ),
            },
            "/datasets/{name}/versions/{selector}": {
                "get": _op("One dataset version by any selector", params=["name", "selector"],
                           extra={"description": _PACKED_NOTE}),
            },
            "/models/{name}/aliases/{alias}": {
                "get": _op("Where an alias points; ETag / If-None-Match give 304", params=alias),
                "put": _op("Move an alias (policy checks apply)", params=alias, body="AliasMove"),
                "delete": _op("Delete an alias", params=alias),
            },
            "/models/{name}/aliases/{alias}/rollback": {
                "post": _op(
                    "Move an alias back to its previous target", params=alias, body="Reason"
                )
            },
            "/models/{name}/aliases/{alias}/history": {
                "get": _op("Every move of an alias", params=alias)
            },
            "/audit": {"get": _op("Audit events, newest first (model, action, limit)")},
            "/audit/verify": {"get": _op("Verify the audit log's hash chain")},
            "/settings": {"get": _op("Registry settings")},
            "/chunks/missing": {"post": _op("Which of these chunk digests the store lacks")},
            "/packs/{pack}": {"put": _op("Upload a pack (local store)", params=["pack"])},
            "/packs/{pack}/commit": {"post": _op("Index an uploaded pack", params=["pack"])},
            "/chunks/locate": {"post": _op("Where chunks live: pack, offset, length, URL")},
        },
    }

"""The OpenAPI 3 description served at /openapi.json."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _json_body(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}}
        },
    }


def _responses(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        out[str(code)] = {
            "description": str(code),
            "content": {"application/json": {"schema": {"type": "object"} if code < 400 else _error}},
        }
    return out


_s = {"type": "string"}
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "surgecap reference registration server", "version": "1"},
    "paths": {
        "/api/register": {
            "post": {
                "operationId": "register",
                "requestBody": _json_body(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "email": {"type": "string", "format": "email"},
                        "nik": {"type": "string", "pattern": "^[0-9]{16}$"},
                        "birth_date": {"type": "string", "format": "date"},
                        "phone": {"type": "string"},
                    }
                ),
                "responses": _responses(201, 400, 409, 413, 422, 503),
            }
        },
        "/api/verify-email": {
            "post": {
                "operationId": "verifyEmail",
                "requestBody": _json_body({"token": _s}),
                "responses": _responses(200, 400, 404, 409, 422, 503),
            }
        },
        "/api/photo": {
            "post": {
                "operationId": "uploadPhoto",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"registrant_id": _s, "photo": {"type": "string", "format": "binary"}},
                                "required": ["registrant_id", "photo"],
                            }
                        }
                    },
                },
                "responses": _responses(200, 400, 404, 409, 413, 415, 422, 503),
            }
        },
        "/api/verify-nik": {
            "post": {
                "operationId": "verifyNik",
                "requestBody": _json_body({"registrant_id": _s, "nik": _s}),
                "responses": _responses(200, 400, 404, 409, 422, 503),
            }
        },
        "/api/join-batch": {
            "post": {
                "operationId": "joinBatch",
                "requestBody": _json_body({"registrant_id": _s, "batch_id": _s}),
                "responses": _responses(200, 400, 404, 409, 422, 503),
            }
        },
        "/api/registrants/{rid}": {
            "get": {
                "operationId": "registrantStatus",
                "parameters": [{"name": "rid", "in": "path", "required": True, "schema": _s}],
                "responses": _responses(200, 404),
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"operationId": "metrics", "responses": {"200": {"description": "Prometheus text"}}}},
        "/metrics/speed": {
            "get": {
                "operationId": "speed",
                "responses": {
                    "200": {
                        "description": "JSON: the requests' own computation in short buckets of the server's clock "
                        "(bucket, clock, work: [bucket start, request type, CPU seconds, requests])"
                    }
                },
            }
        },
    },
}

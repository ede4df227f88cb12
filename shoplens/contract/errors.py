"""Machine-readable error codes shared by the device SDK and the cloud service.

One table, so a client can switch on ``code`` without parsing messages and the
server cannot invent a code the client does not know.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Every error the wire protocol can carry, with the HTTP status it maps to."""

    INVALID_VECTOR = "invalid_vector"  # bad base64, wrong length, NaN/inf, zero norm
    WRONG_DIMENSION = "wrong_dimension"
    UNKNOWN_ENCODING = "unknown_encoding"
    MODEL_MISMATCH = "model_mismatch"  # vector from another embedder
    MODEL_RETIRED = "model_retired"  # vector from an embedder the service no longer serves: update the app
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"  # the same Idempotency-Key is still being processed
    VALIDATION_ERROR = "validation_error"
    UNKNOWN_FILTER_FIELD = "unknown_filter_field"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMITED = "rate_limited"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INVALID_MANIFEST = "invalid_manifest"
    INVALID_IMAGE = "invalid_image"
    INTERNAL = "internal_error"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_VECTOR: 422,
    ErrorCode.WRONG_DIMENSION: 422,
    ErrorCode.UNKNOWN_ENCODING: 422,
    ErrorCode.MODEL_MISMATCH: 409,
    ErrorCode.MODEL_RETIRED: 410,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNKNOWN_FILTER_FIELD: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.INVALID_MANIFEST: 422,
    ErrorCode.INVALID_IMAGE: 422,
    ErrorCode.INTERNAL: 500,
}


class ShoplensError(Exception):
    """Base error: a code a program can act on and a message a person can read."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}"


class VectorError(ShoplensError, ValueError):
    """A vector that cannot be encoded or decoded; always a client mistake."""

    code = ErrorCode.INVALID_VECTOR


class ManifestError(ShoplensError, ValueError):
    """A bundle manifest that does not validate or does not match its files."""

    code = ErrorCode.INVALID_MANIFEST

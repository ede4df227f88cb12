"""Exceptions the SDK raises: one per thing a caller would handle differently.

Each carries the service's machine-readable ``code`` (from the contract's
ErrorCode) so code can branch on it without parsing messages.
"""

from __future__ import annotations

from shoplens.contract.errors import ErrorCode, ShoplensError


class ShoplensAPIError(ShoplensError):
    """The service answered with an error."""

    def __init__(self, message: str, *, code: ErrorCode, status: int, details: object = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.details = details


class AuthError(ShoplensAPIError):
    """401 (no or unknown key) or 403 (key without the role)."""


class ModelMismatchError(ShoplensAPIError):
    """409: the vectors come from another embedder than the catalog's; re-embed or update the bundle."""


class ModelRetiredError(ShoplensAPIError):
    """410: the service no longer serves this app's embedder; ``current_model_id`` and ``bundle_url`` say what to update to."""

    @property
    def current_model_id(self) -> str | None:
        return (self.details or {}).get("current_model_id") if isinstance(self.details, dict) else None

    @property
    def bundle_url(self) -> str:
        return str((self.details or {}).get("current_bundle_url") or "") if isinstance(self.details, dict) else ""


class IdempotencyConflictError(ShoplensAPIError):
    """409 ``idempotency_conflict`` after the retries allowed: an attempt with the same Idempotency-Key is still running."""


class RequestValidationError(ShoplensAPIError):
    """422 / 413: the request was malformed or too big; retrying will not help."""


class NotFoundError(ShoplensAPIError):
    """404."""


class RateLimitedError(ShoplensAPIError):
    """429 after the retries allowed: wait ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServiceUnavailableError(ShoplensAPIError):
    """5xx after the retries allowed (e.g. Milvus down)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class NetworkError(ShoplensError, ConnectionError):
    """The service could not be reached (connect error or timeout) after the retries allowed."""

    code = ErrorCode.BACKEND_UNAVAILABLE


_BY_STATUS: dict[int, type[ShoplensAPIError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ModelMismatchError,
    410: ModelRetiredError,
    413: RequestValidationError,
    422: RequestValidationError,
}


def error_for_status(status: int, code: ErrorCode, message: str, details: object, retry_after: float | None) -> ShoplensAPIError:
    if status == 429:
        return RateLimitedError(message, retry_after=retry_after, code=code, status=status, details=details)
    if status >= 500:
        return ServiceUnavailableError(message, retry_after=retry_after, code=code, status=status, details=details)
    if code is ErrorCode.IDEMPOTENCY_CONFLICT:
        return IdempotencyConflictError(message, code=code, status=status, details=details)
    cls = _BY_STATUS.get(status, RequestValidationError if 400 <= status < 500 else ShoplensAPIError)
    return cls(message, code=code, status=status, details=details)


class ModelDeprecatedWarning(UserWarning):
    """The service still serves this app's embedder, but deprecated: it will be retired on ``sunset``.

    Raised with :func:`warnings.warn` (once per model id and client), so an app can log it,
    show an update prompt, or turn it into an error with a warnings filter.
    """

    def __init__(self, model_id: str, sunset: str = "", current_model_id: str | None = None, bundle_url: str | None = None) -> None:
        self.model_id, self.sunset = model_id, sunset
        self.current_model_id, self.bundle_url = current_model_id, bundle_url
        to = f"; update to {current_model_id}" if current_model_id else ""
        super().__init__(f"embedder model {model_id} is deprecated by the service (sunset {sunset or 'not given'}){to}")


def warn_deprecated(model_id: str, *, sunset: str = "", current_model_id: str | None = None, bundle_url: str | None = None) -> None:
    import warnings

    warnings.warn(ModelDeprecatedWarning(model_id, sunset, current_model_id, bundle_url), stacklevel=4)

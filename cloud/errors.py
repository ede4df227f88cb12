"""One error shape for every response the service sends, whatever went wrong.

Clients switch on ``error.code`` (the contract's :class:`ErrorCode`), so
FastAPI's own validation errors, unknown routes, wrong methods and unexpected
exceptions are all rewritten into the contract's :class:`ErrorResponse`;
nothing leaks a stack trace or an internal path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoplens.contract.errors import ErrorCode, ShoplensError
from shoplens.contract.schemas import ErrorDetail, ErrorResponse

from shoplens.cloud.store_errors import StoreError

log = logging.getLogger("shoplens.cloud")



class ApiError(ShoplensError):
    """A client-visible error: code (-> HTTP status), message, optional details and headers."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Any | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.details = details
        self.headers = headers or {}


class BodyTooLarge(Exception):
    """Raised while streaming a body past the cap (see limits.py); always answered 413."""


def error_response(
    code: ErrorCode, message: str, details: Any | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=code.http_status, headers=headers)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    # An unknown key inside "filters" is its own code: a typo in a filter must
    # not be mistaken for "no filter" by the client either.
    for err in errors:
        loc = list(err.get("loc", ()))
        if err.get("type") == "extra_forbidden" and "filters" in loc[:-1] and loc.index("filters") == len(loc) - 2:
            field = loc[-1]
            return error_response(
                ErrorCode.UNKNOWN_FILTER_FIELD,
                f"unknown filter field {field!r}; known: category_in, price_min, price_max, attributes",
                details={"field": field},
            )
    details = [
        {"loc": _jsonable(list(e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return error_response(ErrorCode.VALIDATION_ERROR, f"{where}: {first['msg']}", details=details)


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, with those of included routers (FastAPI keeps them behind one entry per router;
    shoplens includes its route modules without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> list[str]:
    """Every method any route serves on this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in _routes(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through :func:`error_response`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return error_response(exc.code, exc.message, exc.details, headers)

    @app.exception_handler(ShoplensError)
    async def _shoplens_error(_: Request, exc: ShoplensError) -> JSONResponse:
        return error_response(exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps body-read errors in a 400
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, str(exc.__cause__) or "request body too large")
        if exc.status_code == 404:
            return error_response(ErrorCode.NOT_FOUND, f"no route {request.url.path}")
        if exc.status_code == 405:
            resp = error_response(ErrorCode.METHOD_NOT_ALLOWED, f"method {request.method} not allowed on {request.url.path}")
            allowed = _allowed_methods(request)
            if allowed:
                resp.headers["Allow"] = ", ".join(allowed)
            return resp
        if exc.status_code == 413:
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, str(exc.detail))
        if exc.status_code == 400:  # e.g. a body that is not UTF-8 JSON: one code, one status (422)
            return error_response(ErrorCode.VALIDATION_ERROR, f"request body could not be parsed: {exc.detail}")
        resp = error_response(ErrorCode.VALIDATION_ERROR, str(exc.detail))
        resp.status_code = exc.status_code
        return resp

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(ErrorCode.PAYLOAD_TOO_LARGE, str(exc) or "request body too large")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback for operators; the client sees a code only.
        log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return error_response(ErrorCode.INTERNAL, "internal error; see the service log")

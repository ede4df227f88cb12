"""API keys never travel in URLs: such requests are refused, and the access log never shows them.

A key in a query string (``?api_key=...``) ends up in access logs, proxy
logs, browser history and Referer headers, and cannot be taken back. So any
request with a query parameter that looks like a credential is answered 401
telling the client to use the ``Authorization`` / ``X-API-Key`` header, even
when the key is right (a key accepted once in a URL would be used that way for
ever). The refusal is logged by uvicorn like any other request, so a filter on
the ``uvicorn.access`` logger replaces such parameters' values first.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from shoplens.contract.errors import ErrorCode

from shoplens.cloud.errors import error_response

#: parameter names (lower case, '-' and '_' removed) treated as credentials
CREDENTIAL_NAMES = frozenset({
    "apikey", "xapikey", "key", "token", "accesstoken", "authtoken", "idtoken", "bearer",
    "auth", "authorization", "secret", "clientsecret", "password", "passwd",
})
REDACTED = "REDACTED"
ACCESS_LOGGER = "uvicorn.access"


def is_credential(name: str) -> bool:
    """Whether a (raw, possibly percent-encoded) query parameter name looks like a credential."""
    return re.sub(r"[-_\s]", "", unquote_plus(name)).lower() in CREDENTIAL_NAMES


def credential_params(query: str) -> list[str]:
    """The credential-like parameter names of a raw query string, decoded."""
    names = (part.partition("=")[0] for part in query.split("&") if part)
    return [unquote_plus(n) for n in names if is_credential(n)]


def redact_query(query: str) -> str:
    """The raw query string with every credential-like parameter's value replaced."""
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}={REDACTED}" if is_credential(name) and eq else part)
    return "&".join(parts)


def redact_url(target: str) -> str:
    """``path?query`` with credential-like parameter values replaced (anything else unchanged)."""
    path, q, query = target.partition("?")
    return f"{path}?{redact_query(query)}" if q else target


class RedactCredentials(logging.Filter):
    """Rewrites uvicorn's access-log arguments so credential-like query values never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(redact_url(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


def install_access_log_filter() -> None:
    """Put :class:`RedactCredentials` on uvicorn's access logger once (whoever started uvicorn)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())


class QueryKeyGuard:
    """ASGI middleware: 401 for any request whose query string carries a credential-like parameter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # built on the first request, after uvicorn configured logging in this process
        install_access_log_filter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            names = credential_params(scope["query_string"].decode("latin-1"))
            if names:
                response = error_response(
                    ErrorCode.UNAUTHENTICATED,
                    f"credentials are not accepted in the URL (query parameter {names[0]!r}): send the API key "
                    "in the 'Authorization: Bearer <key>' or 'X-API-Key: <key>' header, and replace a key "
                    "that was sent in a URL (it may be in logs)",
                    details={"parameters": sorted(set(names))},
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

"""API keys with two roles, and a token-bucket rate limit per key.

Roles: a *device* key may search; an *admin* key may search and write the
catalog. Keys come from settings (``SHOPLENS_DEVICE_KEYS`` / ``SHOPLENS_ADMIN_KEYS``),
are compared in constant time, and never appear in logs (only a short hash).

Safe default: with no admin key configured every write is refused (403), so a
service started without configuration can never have its catalog rewritten;
search needs a device key unless ``SHOPLENS_PUBLIC_SEARCH=1`` opts in, and
anonymous searches then share one bucket per client address.

Failed authentications are budgeted per client address (``auth_failures.py``),
so keys cannot be guessed at line speed. The buckets themselves live in
``token_bucket.py`` (one worker) or ``shared_limits.py`` (several).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from fastapi import Request

from shoplens.contract.errors import ErrorCode
from shoplens.settings import Settings

from shoplens.cloud.auth_failures import FailedAuthThrottle, client_address
from shoplens.cloud.errors import ApiError
from shoplens.cloud.shared_limits import limiter_for
from shoplens.cloud.token_bucket import RateLimiter

__all__ = ["KeyRing", "Principal", "RateLimiter", "Role", "key_id"]


class Role(str, Enum):
    DEVICE = "device"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    role: Role | None  # None: anonymous (public search)
    key_id: str  # short hash of the key, or "anon:<client host>"; safe to log and to label metrics


def key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:10]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise ApiError(ErrorCode.UNAUTHENTICATED, "Authorization header must be 'Bearer <api key>'")
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class KeyRing:
    """The configured keys; lookup compares every key in constant time."""

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[bytes, Role]] = [
            (k.get_secret_value().encode(), Role.ADMIN) for k in settings.admin_keys if k.get_secret_value()
        ] + [(k.get_secret_value().encode(), Role.DEVICE) for k in settings.device_keys if k.get_secret_value()]
        self.public_search = settings.public_search
        self.has_admin = any(role is Role.ADMIN for _, role in self._keys)
        self.failures = FailedAuthThrottle(
            limiter_for(settings, "auth_fail", settings.auth_fail_per_s, settings.auth_fail_burst)
        )

    def role_of(self, key: str) -> Role | None:
        presented = key.encode()
        found: Role | None = None
        # No early exit: the time taken does not depend on which key matched.
        for stored, role in self._keys:
            if hmac.compare_digest(stored, presented) and found is None:
                found = role
        return found

    def authenticate(self, request: Request, *, need: Role) -> Principal:
        """The caller, if allowed ``need``; 401 for a missing/unknown key, 403 for the wrong role,
        429 while the caller's address has spent its failed-authentication budget."""
        address = client_address(request)
        self.failures.check(address)
        try:
            return self._authenticate(request, need, address)
        except ApiError as exc:
            if exc.code is ErrorCode.UNAUTHENTICATED:
                self.failures.record(address)
            raise

    def _authenticate(self, request: Request, need: Role, address: str) -> Principal:
        key = _presented_key(request)
        if key is None:
            if need is Role.DEVICE and self.public_search:
                return Principal(None, f"anon:{address}")
            if need is Role.ADMIN and not self.has_admin:
                raise ApiError(
                    ErrorCode.FORBIDDEN, "catalog writes are disabled: no admin key is configured (SHOPLENS_ADMIN_KEYS)"
                )
            raise ApiError(
                ErrorCode.UNAUTHENTICATED,
                "an API key is required: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        role = self.role_of(key)
        if role is None:
            raise ApiError(ErrorCode.UNAUTHENTICATED, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if need is Role.ADMIN and role is not Role.ADMIN:
            raise ApiError(ErrorCode.FORBIDDEN, "this endpoint needs an admin key; a device key may only search")
        return Principal(role, key_id(key))

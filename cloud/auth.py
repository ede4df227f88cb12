"""API keys with two roles, and a token-bucket rate limit per key.

Roles: a *device* key may search; an *admin* key may search and write the
catalog. Keys come from settings (``SHOPLENS_DEVICE_KEYS`` / ``SHOPLENS_ADMIN_KEYS``),
are compared in constant time, and never appear in logs (only a short hash).

Safe default: with no admin key configured every write is refused (403), so a
service started without configuration can never have its catalog rewritten;
search needs a device key unless ``SHOPLENS_PUBLIC_SEARCH=1`` opts in, and
anonymous searches then share one bucket per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass
from enum import Enum

from fastapi import Request

from shoplens.contract.errors import ErrorCode
from shoplens.settings import Settings

from shoplens.cloud.errors import ApiError


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

    def role_of(self, key: str) -> Role | None:
        presented = key.encode()
        found: Role | None = None
        # No early exit: the time taken does not depend on which key matched.
        for stored, role in self._keys:
            if hmac.compare_digest(stored, presented) and found is None:
                found = role
        return found

    def authenticate(self, request: Request, *, need: Role) -> Principal:
        """The caller, if allowed ``need``; 401 for a missing/unknown key, 403 for the wrong role."""
        key = _presented_key(request)
        if key is None:
            if need is Role.DEVICE and self.public_search:
                host = request.client.host if request.client else "unknown"
                return Principal(None, f"anon:{host}")
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


class RateLimiter:
    """Token bucket per key: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens or raise 429 with the seconds until they are there."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[who] = (tokens - cost, now)
                return
            self._buckets[who] = (tokens, now)
            if len(self._buckets) > self.max_keys:  # anonymous callers must not grow this without bound
                self._buckets.clear()
        wait = max(1, math.ceil((cost - tokens) / self.rate))
        raise ApiError(
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded ({self.rate:g} requests/s, burst {self.burst:g}); retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )

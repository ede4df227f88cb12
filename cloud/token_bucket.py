"""Token-bucket arithmetic, written once, and the in-memory limiter that uses it.

Every limiter in the service (this in-memory one for a single worker, the
SQLite-backed one shared by ``--workers N`` in ``shared_limits.py``) calls
:func:`spend` for refill, take and wait time, so the two cannot drift apart:
they differ only in where a bucket is kept and which clock stamps it.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from shoplens.contract.errors import ErrorCode

from shoplens.cloud.errors import ApiError


@dataclass(frozen=True)
class Bucket:
    """A bucket's state: ``tokens`` as counted at clock reading ``stamp``."""

    tokens: float
    stamp: float


def spend(bucket: Bucket | None, *, now: float, rate: float, burst: float, cost: float = 1.0) -> tuple[Bucket, float]:
    """The bucket after trying to spend ``cost`` tokens at ``now``, and the seconds to wait.

    ``bucket`` None is a caller never seen (a full bucket). The wait is 0.0 when
    the tokens were spent; otherwise nothing was spent and the wait is how long
    the refill (``rate`` per second, capped at ``burst``) needs to cover ``cost``.
    A clock that went backwards (wall clock, shared by processes) refills nothing
    rather than a negative amount.
    """
    if bucket is None:
        tokens = burst
    else:
        tokens = min(burst, bucket.tokens + max(0.0, now - bucket.stamp) * rate)
    if tokens >= cost:
        return Bucket(tokens - cost, now), 0.0
    return Bucket(tokens, now), (cost - tokens) / rate


def retry_after_s(wait: float) -> int:
    """``Retry-After`` is whole seconds; never 0, so a client does not retry at once into the same 429."""
    return max(1, math.ceil(wait))


class TokenBuckets(ABC):
    """Token buckets keyed by caller; subclasses decide where the buckets live."""

    rate: float
    burst: float

    @abstractmethod
    def attempt(self, who: str, cost: float = 1.0, *, commit: bool = True) -> float:
        """Seconds to wait (0.0: ``cost`` tokens were available and, if ``commit``, spent)."""

    def take(self, who: str, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens or raise 429 with the seconds until they are there."""
        wait = self.attempt(who, cost)
        if wait > 0:
            after = retry_after_s(wait)
            raise ApiError(
                ErrorCode.RATE_LIMITED,
                f"rate limit exceeded ({self.rate:g} requests/s, burst {self.burst:g}); retry in {after} s",
                headers={"Retry-After": str(after)},
            )


class RateLimiter(TokenBuckets):
    """Buckets in this process's memory: right for one worker, wrong for several (each would have its own)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def attempt(self, who: str, cost: float = 1.0, *, commit: bool = True) -> float:
        with self._lock:
            bucket, wait = spend(self._buckets.get(who), now=time.monotonic(), rate=self.rate, burst=self.burst, cost=cost)
            if wait > 0 or commit:
                self._buckets[who] = bucket
            if len(self._buckets) > self.max_keys:  # anonymous callers must not grow this without bound
                self._buckets.clear()
        return wait

"""A budget of failed authentications per client address, so API keys cannot be guessed at line speed.

Without it a client could try hundreds of keys a second (each answered 401,
none ever 429: the per-key rate limit only starts once a key is known). Each
401 for a missing or unknown key spends one token of the address's bucket
(``AUTH_FAIL_PER_S`` refill, ``AUTH_FAIL_BURST`` size); once it is empty every
request from that address that needs a key is answered 429 *before* the key
is looked at, so a right guess cannot be told from a wrong one until the
bucket refills. Correct keys from other addresses are not affected.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from shoplens.contract.errors import ErrorCode

from shoplens.cloud.errors import ApiError
from shoplens.cloud.token_bucket import TokenBuckets, retry_after_s


def client_address(request: HTTPConnection) -> str:
    """The peer address (a forwarded one only when uvicorn trusts the proxy: ``TRUSTED_PROXIES``)."""
    return request.client.host if request.client else "unknown"


class FailedAuthThrottle:
    """Per-address buckets of failed authentications (kept wherever ``buckets`` keeps them)."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets

    def _refuse(self, wait: float) -> ApiError:
        after = retry_after_s(wait)
        return ApiError(
            ErrorCode.RATE_LIMITED,
            f"too many failed authentications from this address; retry in {after} s",
            headers={"Retry-After": str(after)},
        )

    def check(self, address: str) -> None:
        """429 while the address has no failure left to spend (spends nothing)."""
        wait = self.buckets.attempt(address, commit=False)
        if wait > 0:
            raise self._refuse(wait)

    def record(self, address: str) -> None:
        """One failed authentication from ``address``; 429 when a concurrent failure spent the last token."""
        wait = self.buckets.attempt(address)
        if wait > 0:
            raise self._refuse(wait)

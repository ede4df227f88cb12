"""``Idempotency-Key`` on catalog writes: a retried write gets the first attempt's answer.

A client retries a write when it did not see the answer (a timeout, a dropped
connection, a 503 from a proxy); the first attempt may well have succeeded.
Without this, a retried ``DELETE`` then answers 404 and a retried upsert runs
twice. With it, a write (PUT/POST/DELETE under ``/v1/catalog/``, and a device's
``POST /v1/feedback``, which an offline queue replays) carrying
``Idempotency-Key`` runs once per key; a retry with the same key, the same
caller and the same request within ``IDEMPOTENCY_TTL_S`` gets the stored
status and body, marked ``Idempotent-Replayed: true``, without running again.

- the same key for a *different* request (method, path + query, or body) is
  a 422 ``validation_error``: reusing a key is a client bug, not a retry;
- the same request while the first is still running is a 409
  ``idempotency_conflict`` with ``Retry-After`` (retry and get the replay);
- keys are scoped by caller (a hash of the presented API key), so one
  caller can neither replay nor block another's answers;
- answers that say the request never ran are not kept: 5xx, 401, 403 and
  429. A retry of those runs again (a kept 429 would refuse the retry for a
  whole day).

Pure ASGI and inside the body cap (``BodyLimitMiddleware`` is outside it), so
the body it buffers to fingerprint is already bounded.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoplens.contract.errors import ErrorCode
from shoplens.settings import Settings

from shoplens.cloud.errors import error_response
from shoplens.cloud.idempotency_store import IdempotencyStore, Outcome, StoredResponse, idempotency_path

log = logging.getLogger("shoplens.cloud")

HEADER = b"idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
#: the writes that honour the header: catalog administration, and confirmations (devices retry them
#: from the offline queue after a lost answer)
PATH_PREFIXES = ("/v1/catalog/", "/v1/feedback")
MAX_KEY_CHARS = 255
#: answers larger than this are sent but not kept (catalog answers are a few hundred bytes)
MAX_STORED_BODY = 1024 * 1024
#: seconds a concurrent duplicate is told to wait
IN_FLIGHT_RETRY_AFTER_S = 1


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an idempotency key, or None."""
    if not key:
        return "Idempotency-Key must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"Idempotency-Key is {len(key)} characters; at most {MAX_KEY_CHARS} are accepted"
    if any(not 0x20 <= ord(c) <= 0x7E for c in key):
        return "Idempotency-Key must be printable ASCII (a UUID is a good key)"
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return bytes(v)
    return None


def caller_scope(scope: Scope) -> str | None:
    """A hash of the credential presented, taken the way auth takes it (Bearer or X-API-Key);
    None without one (a write without a key is refused, and a refusal is not kept)."""
    auth = _header(scope, b"authorization")
    if auth:
        scheme, _, value = auth.decode("latin-1").partition(" ")
        credential = value.strip() if scheme.lower() == "bearer" and value.strip() else "authorization:" + auth.decode("latin-1")
    else:
        credential = (_header(scope, b"x-api-key") or b"").decode("latin-1").strip()
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest() if credential else None


def fingerprint(scope: Scope, body: bytes) -> str:
    """What the request is: method, path + query, and a hash of the body."""
    target = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    h = hashlib.sha256()
    for part in (scope["method"].encode(), bytes(target), b"?", bytes(query), b"\n", hashlib.sha256(body).digest()):
        h.update(part)
    return h.hexdigest()


def kept(status: int) -> bool:
    """Whether an answer is stored for replay (see the module docstring)."""
    return status < 500 and status not in (401, 403, 429)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (already capped outside), or None if the client went away."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class IdempotencyMiddleware:
    """Runs a keyed catalog write once and replays its answer to retries (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings, store: IdempotencyStore | None = None) -> None:
        self.app = app
        self.store = store or IdempotencyStore(idempotency_path(settings), settings.idempotency_ttl_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or not scope["path"].startswith(PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        raw = _header(scope, HEADER)
        if raw is None:
            await self.app(scope, receive, send)
            return
        key = raw.decode("latin-1")
        problem = key_problem(key)
        if problem:
            await error_response(ErrorCode.VALIDATION_ERROR, problem)(scope, receive, send)
            return
        who = caller_scope(scope)
        if who is None:  # no key at all: auth refuses it, nothing to keep or to look up
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        what = fingerprint(scope, body)
        try:
            claim = await run_in_threadpool(self.store.claim, who, key, what)
        except sqlite3.Error as exc:  # neither run unguarded (a retry could run twice) nor answer 500
            log.warning("idempotency store %s unusable: %s", self.store.path, exc)
            await error_response(
                ErrorCode.BACKEND_UNAVAILABLE, "the idempotency store is unavailable; retry later",
                headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
            )(scope, receive, send)
            return
        if claim.outcome is Outcome.REPLAY and claim.response is not None:
            stored = claim.response
            headers = {REPLAYED_HEADER: "true"}
            if stored.content_type:
                headers["content-type"] = stored.content_type
            await Response(stored.body, status_code=stored.status, headers=headers)(scope, receive, send)
            return
        if claim.outcome is Outcome.MISMATCH:
            await error_response(
                ErrorCode.VALIDATION_ERROR,
                "this Idempotency-Key was already used for another request (a different method, path or body); "
                "use a new key for a new request",
            )(scope, receive, send)
            return
        if claim.outcome is Outcome.IN_FLIGHT:
            await error_response(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "a request with this Idempotency-Key is still being processed; retry to get its answer",
                headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
            )(scope, receive, send)
            return
        await self._run_once(scope, receive, send, body, who, key, what)

    async def _run_once(self, scope: Scope, receive: Receive, send: Send, body: bytes, who: str, key: str, what: str) -> None:
        """Run the claimed request; keep its answer (before sending it) or drop the claim."""
        body_sent = False
        start: Message | None = None
        chunks: list[bytes] = []
        settled = False

        async def replay_receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def settle(status: int, content_type: str, answer: bytes) -> None:
            nonlocal settled
            settled = True
            try:
                if kept(status) and len(answer) <= MAX_STORED_BODY:
                    await run_in_threadpool(self.store.save, who, key, what, StoredResponse(status, content_type, answer))
                else:
                    await run_in_threadpool(self.store.release, who, key, what)
            except Exception as exc:  # the write happened: its answer must still reach the client
                log.warning("idempotency store %s: could not settle a key (%s)", self.store.path, type(exc).__name__)

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                answer = b"".join(chunks)
                content_type = next((v.decode("latin-1") for k, v in start.get("headers", []) if k.lower() == b"content-type"), "")
                await settle(int(start["status"]), content_type, answer)
                await send(start)
                await send({"type": "http.response.body", "body": answer, "more_body": False})
                return
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            if not settled:  # an exception, or no complete answer: a retry must run again
                try:  # not awaited: this also runs when the request was cancelled
                    self.store.release(who, key, what)
                except Exception as exc:  # noqa: BLE001 - never mask the request's own error
                    log.warning("idempotency store %s: could not release a key (%s)", self.store.path, type(exc).__name__)

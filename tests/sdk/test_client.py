"""ShoplensClient retry, backoff, idempotency keys and typed errors, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from scripted_http import Scripted, ScriptedServer
from shoplens.contract import decode_vector
from shoplens.contract.errors import ErrorCode
from shoplens.sdk.client import AsyncShoplensClient, RetryPolicy, ShoplensClient
from shoplens.sdk.errors import AuthError, ModelMismatchError, NetworkError, RateLimitedError, RequestValidationError, ServiceUnavailableError

MID = "resnet-256d-0123456789ab"
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=2.0)
OK_SEARCH = {"model_id": MID, "hits": [{"product_id": "p1", "score": 0.9, "image_id": "i1"}], "grouping": "native", "took_ms": 1.0}


def _err(code: str, message: str = "x") -> dict:
    return {"error": {"code": code, "message": message}}


def test_search_encodes_with_the_contract_and_sends_the_key() -> None:
    v = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    with ScriptedServer([Scripted(200, OK_SEARCH)]) as srv, ShoplensClient(srv.url, "dev-key", retry=FAST) as c:
        res = c.search(v, model_id=MID, top_k=5)
    assert res.hits[0].product_id == "p1"
    req = srv.requests[0]
    assert req["path"] == "/v1/search" and req["headers"]["Authorization"] == "Bearer dev-key"
    assert req["body"]["encoding"] == "i8" and req["body"]["top_k"] == 5
    sent = decode_vector(req["body"]["vector"], "i8", 256)
    assert float(sent @ (v / np.linalg.norm(v))) > 0.999


def test_retry_after_is_honoured_then_succeeds() -> None:
    with ScriptedServer([Scripted(429, _err("rate_limited"), {"Retry-After": "0.3"}), Scripted(200, OK_SEARCH)]) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        t0 = time.monotonic()
        c.search(np.ones(4), model_id=MID)
        assert time.monotonic() - t0 >= 0.3
    assert len(srv.requests) == 2


def test_rate_limited_after_retries_exhausted() -> None:
    script = [Scripted(429, _err("rate_limited", "slow down"), {"Retry-After": "0"})] * 4
    with ScriptedServer(script) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        with pytest.raises(RateLimitedError) as info:
            c.search(np.ones(4), model_id=MID)
    assert info.value.retry_after == 0 and info.value.code is ErrorCode.RATE_LIMITED
    assert len(srv.requests) == 4  # 1 + 3 retries, bounded


def test_503_retried_and_write_keeps_its_idempotency_key() -> None:
    script = [Scripted(503, _err("backend_unavailable"), {"Retry-After": "0"}), Scripted(200, {"upserted": 1, "model_id": MID})]
    img = {"image_id": "i1", "product_id": "p1", "vector": "AAAAAA==", "encoding": "f32"}
    with ScriptedServer(script) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        assert c.upsert_images(MID, [img]).upserted == 1
    keys = {r["headers"]["Idempotency-Key"] for r in srv.requests}
    assert len(srv.requests) == 2 and len(keys) == 1


@pytest.mark.parametrize(
    "status, code, exc",
    [(401, "unauthenticated", AuthError), (403, "forbidden", AuthError), (409, "model_mismatch", ModelMismatchError), (422, "wrong_dimension", RequestValidationError), (413, "payload_too_large", RequestValidationError)],
)
def test_client_errors_are_typed_and_not_retried(status: int, code: str, exc: type) -> None:
    with ScriptedServer([Scripted(status, _err(code, "because"))]) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        with pytest.raises(exc) as info:
            c.search(np.ones(4), model_id=MID)
    assert info.value.code.value == code and info.value.status == status and "because" in info.value.message
    assert len(srv.requests) == 1


def test_server_down_is_a_network_error_after_bounded_retries() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with ShoplensClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=2, base_delay=0.01)) as c:
        with pytest.raises(NetworkError, match="after 3 attempt"):
            c.health()


def test_non_json_5xx_is_still_typed() -> None:
    with ScriptedServer([Scripted(500, "oops")]) as srv, ShoplensClient(srv.url, retry=FAST) as c:
        with pytest.raises(ServiceUnavailableError):
            c.stats()


def test_async_client_batch() -> None:
    resp = {"model_id": MID, "results": [{"index": 0, "hits": []}, {"index": 1, "hits": []}], "grouping": "overfetch", "took_ms": 2.0}

    async def go(url: str):
        async with AsyncShoplensClient(url, retry=FAST) as c:
            return await c.search_batch([np.ones(8), np.arange(8.0) + 1], model_id=MID, encoding="f16")

    with ScriptedServer([Scripted(503, _err("backend_unavailable"), {"Retry-After": "0"}), Scripted(200, resp)]) as srv:
        out = asyncio.run(go(srv.url))
    assert len(out.results) == 2 and srv.requests[-1]["body"]["encoding"] == "f16"
    assert len(srv.requests[-1]["body"]["vectors"]) == 2

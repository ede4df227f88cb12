"""Issue 33 finding 8: an ``Idempotency-Key`` on a catalog write makes its retry safe.

Real TestClients over real Milvus Lite files, a real ``shoplens serve`` for the
SDK's retry, and the service's own /metrics to count the Milvus writes done.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from shoplens.settings import Settings

from shoplens.cloud.app import create_app
from shoplens.cloud.idempotency import IdempotencyMiddleware, fingerprint
from shoplens.cloud.idempotency_store import IdempotencyStore, Outcome, idempotency_path

from cloudkit import api_error, ADMIN, ADMIN_H, DEVICE, MODEL, free_port
from servekit import start_serve, stop_serve

ADMIN2 = "second-admin-key-0123"
REPLAYED = "idempotent-replayed"


def _key(name: str) -> dict[str, str]:
    return {**ADMIN_H, "Idempotency-Key": name}


_error = api_error


def _milvus_calls(c: TestClient, op: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'shoplens_milvus_call_seconds_count{{op="{op}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def served(lite_settings, client_for, catalog):
    """A served catalog, and the settings it was opened with."""
    settings = lite_settings(admin_keys=[ADMIN, ADMIN2])
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    return c, settings


def test_a_retried_delete_gets_the_first_answer_not_404(served):
    c, _ = served
    first = c.delete("/v1/catalog/images/img-0-0", headers=_key("del-1"))
    assert first.status_code == 200 and first.json() == {"deleted": 1} and REPLAYED not in first.headers
    retry = c.delete("/v1/catalog/images/img-0-0", headers=_key("del-1"))
    assert retry.status_code == 200 and retry.json() == {"deleted": 1}, retry.text
    assert retry.headers[REPLAYED] == "true" and retry.headers["content-type"].startswith("application/json")
    # the image is gone once, and a write without a key behaves as before
    assert len(c.get("/v1/catalog/products/prod-0", headers=ADMIN_H).json()["images"]) == 2
    _error(c.delete("/v1/catalog/images/img-0-0", headers=ADMIN_H), 404, "not_found")
    assert c.delete("/v1/catalog/images/img-0-1", headers=ADMIN_H).status_code == 200


def test_a_retried_upsert_is_not_run_again(served, catalog):
    c, _ = served
    body = {"model_id": MODEL, "images": [dict(catalog.images[4], title="Renamed")]}
    before = _milvus_calls(c, "upsert")
    first = c.put("/v1/catalog/images", json=body, headers=_key("put-1"))
    assert first.status_code == 200 and _milvus_calls(c, "upsert") == before + 1
    # the catalog changes in between: a re-run would bring the image back
    assert c.delete(f"/v1/catalog/images/{catalog.images[4]['image_id']}", headers=ADMIN_H).status_code == 200
    retry = c.put("/v1/catalog/images", json=body, headers=_key("put-1"))
    assert retry.status_code == 200 and retry.content == first.content and retry.headers[REPLAYED] == "true"
    assert _milvus_calls(c, "upsert") == before + 1  # no second Milvus upsert
    images = c.get(f"/v1/catalog/products/{catalog.images[4]['product_id']}", headers=ADMIN_H).json()["images"]
    assert catalog.images[4]["image_id"] not in {i["image_id"] for i in images}


def test_the_same_key_for_another_request_is_422(served, catalog):
    c, _ = served
    body = {"model_id": MODEL, "images": [catalog.images[0]]}
    assert c.put("/v1/catalog/images", json=body, headers=_key("k-1")).status_code == 200
    other = {"model_id": MODEL, "images": [catalog.images[1]]}
    err = _error(c.put("/v1/catalog/images", json=other, headers=_key("k-1")), 422, "validation_error")
    assert "Idempotency-Key" in err["message"] and "another request" in err["message"]
    _error(c.delete("/v1/catalog/images/img-5-0", headers=_key("k-1")), 422, "validation_error")
    _error(c.put("/v1/catalog/images?collection=x", json=body, headers=_key("k-1")), 422, "validation_error")
    assert c.delete("/v1/catalog/images/img-5-0", headers=ADMIN_H).status_code == 200  # nothing ran meanwhile


def test_keys_are_scoped_by_caller(served):
    c, _ = served
    assert c.delete("/v1/catalog/images/img-2-0", headers=_key("shared")).status_code == 200
    # another admin key with the same Idempotency-Key is another caller: its request runs (and finds nothing)
    r = c.delete("/v1/catalog/images/img-2-0", headers={"X-API-Key": ADMIN2, "Idempotency-Key": "shared"})
    _error(r, 404, "not_found")
    # the same key sent as X-API-Key instead of Bearer is the same caller
    r = c.delete("/v1/catalog/images/img-2-0", headers={"X-API-Key": ADMIN, "Idempotency-Key": "shared"})
    assert r.status_code == 200 and r.headers[REPLAYED] == "true"
    # no key at all: refused by auth as before, nothing kept or replayed
    _error(c.delete("/v1/catalog/images/img-2-0", headers={"Idempotency-Key": "shared"}), 401, "unauthenticated")


def test_malformed_keys_are_422(served):
    c, _ = served
    err = _error(c.delete("/v1/catalog/images/img-3-0", headers=_key("k" * 256)), 422, "validation_error")
    assert "255" in err["message"]
    err = _error(c.delete("/v1/catalog/images/img-3-0", headers={**ADMIN_H, "Idempotency-Key": "clé-1".encode("latin-1")}), 422, "validation_error")
    assert "ASCII" in err["message"]
    assert c.delete("/v1/catalog/images/img-3-0", headers=_key("k" * 255)).status_code == 200


def test_answers_expire_after_the_ttl(lite_settings, client_for, catalog):
    c = client_for(lite_settings(idempotency_ttl_s=0.5))
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    assert c.delete("/v1/catalog/images/img-1-0", headers=_key("short")).status_code == 200
    assert c.delete("/v1/catalog/images/img-1-0", headers=_key("short")).headers[REPLAYED] == "true"
    time.sleep(0.7)
    _error(c.delete("/v1/catalog/images/img-1-0", headers=_key("short")), 404, "not_found")  # ran again


def test_answers_survive_a_service_restart(lite_settings, catalog):
    settings = lite_settings()
    with TestClient(create_app(settings)) as c:
        assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
        assert c.delete("/v1/catalog/images/img-7-0", headers=_key("restart")).status_code == 200
    assert idempotency_path(settings).is_file()
    with TestClient(create_app(settings)) as c:
        r = c.delete("/v1/catalog/images/img-7-0", headers=_key("restart"))
        assert r.status_code == 200 and r.json() == {"deleted": 1} and r.headers[REPLAYED] == "true"


def test_a_duplicate_while_the_first_runs_is_409_then_runs(served):
    c, settings = served
    store = IdempotencyStore(idempotency_path(settings), settings.idempotency_ttl_s)
    path = "/v1/catalog/images/img-4-0"
    who = hashlib.sha256(ADMIN.encode()).hexdigest()
    what = fingerprint({"method": "DELETE", "path": path, "raw_path": path.encode(), "query_string": b""}, b"")
    assert store.claim(who, "busy", what).outcome is Outcome.FRESH  # as if another worker were running it
    r = c.delete(path, headers=_key("busy"))
    _error(r, 409, "idempotency_conflict")
    assert r.headers["retry-after"] == "1"
    store.release(who, "busy", what)  # that attempt died without an answer: the retry runs
    r = c.delete(path, headers=_key("busy"))
    assert r.status_code == 200 and REPLAYED not in r.headers
    store.close()


def test_a_claim_whose_process_was_killed_is_taken_over_at_once(tmp_path):
    """kill -9 mid-request leaves a claim; the client's retry right after the restart must run, not get 409s for a minute."""
    import signal
    import subprocess
    import sys

    db = tmp_path / "idem.db"
    code = (
        "import sys, time; from pathlib import Path; from shoplens.cloud.idempotency_store import IdempotencyStore; "
        "s = IdempotencyStore(Path(sys.argv[1]), 3600); print(s.claim('who', 'k', 'fp').outcome.value, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "fresh"
        store = IdempotencyStore(db, 3600)
        assert store.claim("who", "k", "fp").outcome is Outcome.IN_FLIGHT  # its owner still runs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert store.claim("who", "k", "fp").outcome is Outcome.FRESH  # owner gone: the retry runs now
        assert store.claim("who", "k", "fp").outcome is Outcome.IN_FLIGHT  # and holds the claim itself
        store.close()
    finally:
        proc.kill()


def test_concurrent_duplicates_run_once(served):
    c, _ = served
    results: list[httpx.Response] = []

    def send() -> None:
        results.append(c.delete("/v1/catalog/images/img-6-0", headers=_key("race")))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    assert {r.status_code for r in results} <= {200, 409}, [r.text for r in results]
    assert sum(r.status_code == 200 and REPLAYED not in r.headers for r in results) == 1
    assert all(r.json() == {"deleted": 1} for r in results if r.status_code == 200)


def test_refusals_that_never_ran_are_not_kept(lite_settings, client_for, catalog):
    """A 429 is not replayed: the retry after Retry-After runs (and is then replayed itself)."""
    c = client_for(lite_settings(rate_limit_per_s=1.0, rate_limit_burst=2))
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    for _ in range(20):  # empty the admin bucket, however long the writes above took
        if c.get("/v1/stats", headers=ADMIN_H).status_code == 429:
            break
    _error(c.delete("/v1/catalog/images/img-8-0", headers=_key("limited")), 429, "rate_limited")
    time.sleep(1.1)
    r = c.delete("/v1/catalog/images/img-8-0", headers=_key("limited"))
    assert r.status_code == 200 and REPLAYED not in r.headers
    assert c.delete("/v1/catalog/images/img-8-0", headers=_key("limited")).headers[REPLAYED] == "true"
    # a wrong key's 401 is not kept either: the same request with the right key then runs
    r = c.delete("/v1/catalog/images/img-8-1", headers={"X-API-Key": "wrong-key-000000000", "Idempotency-Key": "auth"})
    _error(r, 401, "unauthenticated")
    time.sleep(1.0)
    assert c.delete("/v1/catalog/images/img-8-1", headers={"X-API-Key": ADMIN, "Idempotency-Key": "auth"}).status_code == 200


def test_5xx_answers_are_not_kept(tmp_path: Path):
    """The middleware alone over an endpoint that fails once: the retry runs again, the third replays."""
    runs: list[int] = []

    async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(1)
        status = 503 if len(runs) == 1 else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps({"run": len(runs)}).encode()})

    app = IdempotencyMiddleware(flaky, Settings(idempotency_db=tmp_path / "idem.db"))
    c = TestClient(app)
    assert c.post("/v1/catalog/flush", headers=_key("five")).status_code == 503
    r = c.post("/v1/catalog/flush", headers=_key("five"))
    assert r.status_code == 200 and r.json() == {"run": 2} and REPLAYED not in r.headers
    r = c.post("/v1/catalog/flush", headers=_key("five"))
    assert r.json() == {"run": 2} and r.headers[REPLAYED] == "true" and len(runs) == 2


def test_an_oversized_body_is_413_and_leaves_no_claim(lite_settings, client_for, catalog):
    """The body cap sits outside: the 413 comes first, and the key stays free for the real request."""
    c = client_for(lite_settings(max_body_bytes=2000))
    big = {"model_id": MODEL, "images": catalog.images[:10]}
    _error(c.put("/v1/catalog/images", json=big, headers=_key("big")), 413, "payload_too_large")
    small = {"model_id": MODEL, "images": catalog.images[:1]}
    r = c.put("/v1/catalog/images", json=small, headers=_key("big"))
    assert r.status_code == 200 and REPLAYED not in r.headers
    assert c.put("/v1/catalog/images", json=small, headers=_key("big")).headers[REPLAYED] == "true"


# ---- the SDK's retry through a real `shoplens serve` ----------------------------------------


class _LossyProxy(ThreadingHTTPServer):
    """Forwards to the service; the first write's answer is thrown away and the client told 503,
    as a load balancer does when the upstream answers too late."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.lose_next_write = True
        self.seen: list[tuple[str, str, str | None, int, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _LossyProxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        up = httpx.request(self.command, self.server.upstream + self.path, content=body, headers=headers, timeout=30)
        self.server.seen.append((self.command, self.path, self.headers.get("Idempotency-Key"), up.status_code, up.headers.get(REPLAYED)))
        status, content, extra = up.status_code, up.content, {k: up.headers[k] for k in ("Retry-After", REPLAYED) if k in up.headers}
        if self.command != "GET" and self.server.lose_next_write:
            self.server.lose_next_write = False
            status, extra = 503, {"Retry-After": "0"}
            content = json.dumps({"error": {"code": "backend_unavailable", "message": "upstream timed out"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_PUT = do_POST = do_DELETE = _forward


@pytest.fixture
def served_process(tmp_path: Path, catalog) -> Iterator[tuple[str, Path]]:
    idem_db = tmp_path / "idempotency.db"
    env = dict(os.environ, SHOPLENS_MILVUS_URI=str(tmp_path / "served.db"), SHOPLENS_COLLECTION="served",
               SHOPLENS_ADMIN_KEYS=f'["{ADMIN}"]', SHOPLENS_DEVICE_KEYS=f'["{DEVICE}"]',
               SHOPLENS_IDEMPOTENCY_DB=str(idem_db))
    port = free_port()
    proc = start_serve(env, port, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.put(f"{base}/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H, timeout=30).status_code == 200
        yield base, idem_db
    finally:
        stop_serve(proc)


@pytest.mark.slow
def test_the_sdk_retry_of_a_write_gets_the_replay(served_process):
    from shoplens.sdk.client import RetryPolicy, ShoplensClient

    base, idem_db = served_process
    proxy = _LossyProxy(base)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    fast = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=2.0)
    try:
        with ShoplensClient(proxy.url, ADMIN, retry=fast) as sdk:
            assert sdk.delete_image("img-9-0").deleted == 1  # not NotFoundError: the retry was replayed
        (m1, p1, k1, s1, r1), (m2, p2, k2, s2, r2) = proxy.seen
        assert (m1, p1, s1, r1) == ("DELETE", "/v1/catalog/images/img-9-0", 200, None)  # ran, answer lost
        assert (m2, p2, s2, r2) == ("DELETE", "/v1/catalog/images/img-9-0", 200, "true") and k1 == k2

        # a retry that arrives while the first attempt still runs (409) is retried until it gets the answer
        proxy.lose_next_write, proxy.seen = False, []
        store = IdempotencyStore(idem_db, 3600)
        who = hashlib.sha256(ADMIN.encode()).hexdigest()
        path = "/v1/catalog/images/img-9-1"
        what = fingerprint({"method": "DELETE", "path": path, "raw_path": path.encode(), "query_string": b""}, b"")
        assert store.claim(who, "slow-first", what).outcome is Outcome.FRESH
        threading.Timer(0.5, store.release, args=(who, "slow-first", what)).start()
        with ShoplensClient(proxy.url, ADMIN, retry=fast) as sdk:
            assert sdk.delete_image("img-9-1", idempotency_key="slow-first").deleted == 1
        assert proxy.seen[0][3] == 409 and proxy.seen[-1][3] == 200
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_unusable_store_is_503_and_nothing_runs(tmp_path: Path):
    """A keyed write is neither run unguarded (its retry could run twice) nor answered 500."""
    runs: list[int] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    c = TestClient(IdempotencyMiddleware(endpoint, Settings(idempotency_db=tmp_path)))  # a folder: not a SQLite file
    r = c.post("/v1/catalog/flush", headers=_key("broken"))
    _error(r, 503, "backend_unavailable")
    assert r.headers["retry-after"] == "1" and runs == []
    assert c.post("/v1/catalog/flush", headers=ADMIN_H).status_code == 200  # without a key: as before

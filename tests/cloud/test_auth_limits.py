"""Issue 33 findings 6 and 7: key guessing is throttled per address, spoofed X-Forwarded-For does not
buy fresh buckets, keys in URLs are refused and never logged, and rate limits hold across workers.

Every load loop here is bounded in count and time and stays on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient


from shoplens.cloud.app import create_app
from shoplens.cloud.shared_limits import SharedRateLimiter
from shoplens.cloud.token_bucket import Bucket, spend

from cloudkit import api_error, ADMIN, ADMIN_H, DEVICE, DEVICE_H, free_port, query
from servekit import start_serve, stop_serve

WRONG_H = {"X-API-Key": "not-a-key-0000000000"}


_error = api_error


# ---- the token-bucket arithmetic (one function for every limiter) ------------------------


def test_spend_refills_caps_and_waits():
    b, wait = spend(None, now=100.0, rate=2.0, burst=3, cost=1)
    assert (b, wait) == (Bucket(2.0, 100.0), 0.0)  # a new caller starts full
    b, wait = spend(Bucket(0.5, 100.0), now=100.0, rate=2.0, burst=3, cost=1)
    assert wait == pytest.approx(0.25) and b.tokens == 0.5  # refused: nothing spent, 0.5 token / 2 per s
    b, _ = spend(Bucket(0.0, 100.0), now=1000.0, rate=2.0, burst=3, cost=1)
    assert b.tokens == 2.0  # refill capped at burst, then one spent
    b, wait = spend(Bucket(1.0, 100.0), now=50.0, rate=2.0, burst=3, cost=1)
    assert wait == 0.0 and b.tokens == 0.0  # a clock that went backwards refills nothing


def test_a_shared_bucket_can_be_looked_at_without_spending(tmp_path: Path):
    limiter = SharedRateLimiter(tmp_path / "limits.db", "auth_fail", rate=0.01, burst=2)
    assert all(limiter.attempt("10.0.0.1", commit=False) == 0.0 for _ in range(5))
    assert limiter.attempt("10.0.0.1") == 0.0 and limiter.attempt("10.0.0.1") == 0.0
    assert limiter.attempt("10.0.0.1", commit=False) > 0 and limiter.attempt("10.0.0.1") > 0
    assert limiter.attempt("10.0.0.2") == 0.0  # another caller, another bucket


# ---- failed authentication is budgeted per client address --------------------------------


@pytest.fixture
def app_for(lite_settings):
    """One app (one Lite file), and TestClients for it from any client address."""
    opened: list[TestClient] = []

    def make(**overrides):
        app = create_app(lite_settings(**overrides))

        def client(address: str) -> TestClient:
            c = TestClient(app, client=(address, 40000))
            if not opened:
                c.__enter__()  # the lifespan runs once per app
            opened.append(c)
            return c

        return client

    yield make
    for c in opened[:1]:
        c.__exit__(None, None, None)


def test_key_guessing_gets_429_with_the_default_budget(app_for):
    client = app_for()  # defaults: 20 failures, 1 per second back
    guesser, other = client("10.0.0.66"), client("10.0.0.7")
    statuses = Counter()
    t0 = time.monotonic()
    for i in range(60):
        r = guesser.get("/v1/models", headers={"X-API-Key": f"guess-{i:04d}"})
        statuses[r.status_code] += 1
        if r.status_code == 429:
            err = _error(r, 429, "rate_limited")
            assert "failed authentication" in err["message"] and int(r.headers["retry-after"]) >= 1
    elapsed = time.monotonic() - t0
    assert set(statuses) <= {401, 429}
    assert statuses[401] <= 20 + elapsed * 1.0 + 1, (statuses, elapsed)
    assert statuses[429] >= 60 - (20 + elapsed + 1)
    # the right key from another address is not affected
    assert other.get("/v1/models", headers=DEVICE_H).status_code == 200


@pytest.mark.parametrize("buckets", ["memory", "shared"])
def test_an_empty_failure_bucket_refuses_even_the_right_key_until_it_refills(app_for, buckets, tmp_path):
    shared = {"shared_state_path": tmp_path / "limits.db"} if buckets == "shared" else {}
    client = app_for(auth_fail_per_s=4.0, auth_fail_burst=3, **shared)
    guesser, other = client("10.0.0.66"), client("10.0.0.7")
    for _ in range(3):
        _error(guesser.get("/v1/models", headers=WRONG_H), 401, "unauthenticated")
    r = guesser.get("/v1/models", headers=WRONG_H)
    _error(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "1"
    # before the key is looked at: a correct key from the throttled address is refused as well
    _error(guesser.get("/v1/models", headers=DEVICE_H), 429, "rate_limited")
    _error(guesser.put("/v1/catalog/images", json={}, headers=ADMIN_H), 429, "rate_limited")
    assert other.get("/v1/models", headers=DEVICE_H).status_code == 200
    time.sleep(0.4)  # 4 per second: one failure back
    assert guesser.get("/v1/models", headers=DEVICE_H).status_code == 200


def test_missing_keys_count_as_failures_too(app_for):
    client = app_for(auth_fail_per_s=0.1, auth_fail_burst=2)
    c = client("10.0.0.9")
    for _ in range(2):
        _error(c.post("/v1/search", json={}), 401, "unauthenticated")
    _error(c.post("/v1/search", json={}), 429, "rate_limited")
    # unguarded probes stay open
    assert c.get("/v1/health").status_code == 200


# ---- keys in URLs --------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["api_key", "API_KEY", "apikey", "api-key", "key", "Token", "access_token", "x-api-key", "X_Api_Key"])
def test_keys_in_the_query_string_are_refused(app_for, param):
    c = app_for()("10.0.0.5")
    # even with the right key in the header: a key that was in a URL must be replaced, not accepted
    r = c.get(f"/v1/models?{param}={DEVICE}", headers=DEVICE_H)
    err = _error(r, 401, "unauthenticated")
    assert "Authorization" in err["message"] and "X-API-Key" in err["message"] and "URL" in err["message"]
    assert DEVICE not in r.text  # the value is not echoed
    assert c.get("/v1/models?collection=x", headers=DEVICE_H).status_code == 200  # other parameters are fine


@pytest.mark.slow
def test_keys_in_the_query_string_never_reach_the_access_log(tmp_path: Path):
    env = dict(os.environ, SHOPLENS_MILVUS_URI=str(tmp_path / "served.db"), SHOPLENS_COLLECTION="served",
               SHOPLENS_ADMIN_KEYS=f'["{ADMIN}"]', SHOPLENS_DEVICE_KEYS=f'["{DEVICE}"]')
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_serve(env, port, log, "--log-level", "info")
    try:
        base = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{base}/v1/models?api_key=SECRET123&x=1", timeout=10)
        _error(r, 401, "unauthenticated")
        r = httpx.post(f"{base}/v1/search?Access-Token=SECRET456", json={}, headers=DEVICE_H, timeout=10)
        _error(r, 401, "unauthenticated")
        deadline = time.monotonic() + 10
        while "Access-Token=" not in log.read_text() and time.monotonic() < deadline:  # the access line is written
            time.sleep(0.1)
    finally:
        stop_serve(proc)
    text = log.read_text()
    assert "/v1/models?api_key=REDACTED&x=1" in text, text[-2000:]  # the request is logged ...
    assert "Access-Token=REDACTED" in text
    assert "SECRET123" not in text and "SECRET456" not in text  # ... without the key


# ---- X-Forwarded-For is trusted only from configured proxies --------------------------------


def _anonymous_statuses(base: str, forwarded_for: list[str]) -> Counter:
    statuses: Counter = Counter()
    for address in forwarded_for:
        statuses[httpx.get(f"{base}/v1/models", headers={"X-Forwarded-For": address}, timeout=10).status_code] += 1
    return statuses


@pytest.mark.slow
def test_spoofed_forwarded_for_shares_one_bucket_unless_the_proxy_is_trusted(tmp_path: Path):
    env = dict(os.environ, SHOPLENS_MILVUS_URI=str(tmp_path / "served.db"), SHOPLENS_COLLECTION="served",
               SHOPLENS_ADMIN_KEYS=f'["{ADMIN}"]', SHOPLENS_PUBLIC_SEARCH="1",
               SHOPLENS_RATE_LIMIT_PER_S="0.1", SHOPLENS_RATE_LIMIT_BURST="3")
    spoofed = [f"203.0.113.{i}" for i in range(1, 9)]

    port = free_port()
    proc = start_serve(env, port, tmp_path / "untrusted.log")
    try:
        statuses = _anonymous_statuses(f"http://127.0.0.1:{port}", spoofed)
    finally:
        stop_serve(proc)
    assert statuses[200] == 3 and statuses[429] == 5, statuses  # one bucket: the TCP peer's

    port = free_port()
    proc = start_serve(dict(env, SHOPLENS_TRUSTED_PROXIES='["127.0.0.1"]'), port, tmp_path / "trusted.log")
    try:
        base = f"http://127.0.0.1:{port}"
        statuses = _anonymous_statuses(base, spoofed)
        assert statuses == Counter({200: 8}), statuses  # behind a trusted proxy: one bucket per client
        repeated = _anonymous_statuses(base, ["198.51.100.7"] * 5)
        assert repeated == Counter({200: 3, 429: 2}), repeated  # and each client still has its limit
    finally:
        stop_serve(proc)


# ---- rate limits across worker processes ----------------------------------------------------

_TAKER = textwrap.dedent("""
    import sys, time
    from shoplens.cloud.shared_limits import SharedRateLimiter
    limiter = SharedRateLimiter(sys.argv[1], "requests", rate=2.0, burst=10)
    while time.time() < float(sys.argv[2]):
        time.sleep(0.005)
    first = time.time()
    granted = sum(limiter.attempt("device") == 0.0 for _ in range(40))
    print(granted, first, time.time())
""")


def test_shared_buckets_hold_across_processes(tmp_path: Path):
    """Two processes spending from one SQLite bucket file get one limit between them, not two."""
    path, start = tmp_path / "limits.db", time.time() + 3.0
    SharedRateLimiter(path, "requests", rate=2.0, burst=10).attempt("warm-up")  # create the file once
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, str(path), str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    granted = sum(int(o[0]) for o in outs)
    elapsed = max(float(o[2]) for o in outs) - min(float(o[1]) for o in outs)
    assert 10 <= granted <= 10 + 2.0 * elapsed + 1, (granted, elapsed)


@pytest.mark.slow
@pytest.mark.milvus_server
def test_two_workers_share_one_rate_limit(milvus_server, tmp_path: Path, catalog):
    env = dict(os.environ, SHOPLENS_MILVUS_URI=milvus_server.uri, SHOPLENS_COLLECTION="shared_limit_two_workers",
               SHOPLENS_ADMIN_KEYS=f'["{ADMIN}"]', SHOPLENS_DEVICE_KEYS=f'["{DEVICE}"]',
               SHOPLENS_RATE_LIMIT_PER_S="2", SHOPLENS_RATE_LIMIT_BURST="10")
    env.pop("SHOPLENS_SHARED_STATE_PATH", None)
    port = free_port()
    proc = start_serve(env, port, tmp_path / "serve.log", "--workers", "2")
    try:
        import psutil

        workers = {c.pid for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()}
        assert len(workers) >= 2
        base = f"http://127.0.0.1:{port}"
        assert httpx.put(f"{base}/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H, timeout=30).status_code == 200
        body = query(catalog.centres[3], top_k=3)
        statuses: Counter = Counter()
        t0 = time.monotonic()
        for _ in range(40):  # a new connection each: the kernel hands them to either worker
            statuses[httpx.post(f"{base}/v1/search", json=body, headers=DEVICE_H, timeout=30).status_code] += 1
            if time.monotonic() - t0 > 30:
                break
        elapsed = time.monotonic() - t0
    finally:
        stop_serve(proc)
    print(f"two workers, 2/s burst 10: {dict(statuses)} in {elapsed:.2f} s")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] <= 10 + 2 * elapsed + 1, (statuses, elapsed)
    assert statuses[429] > 0

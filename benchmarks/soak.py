"""Soak: 8 clients of mixed search / upsert / delete for 60 s, a kill -9 and restart in the middle.

Usage: .venv/bin/python benchmarks/soak.py [--backend lite|server|both] [--clients 8] [--seconds 60]

On each backend (a Milvus Lite file; the PyPI ``milvus`` 2.3.5 server on loopback)
this starts ``shoplens serve`` on 127.0.0.1, seeds a catalog, runs the clients for
a bounded time and request count, SIGKILLs the service's whole process group
(Milvus Lite runs in a child process) halfway, and starts it again on the same
storage while the clients keep going. Writes carry an Idempotency-Key and are
retried with it on a transport error, a 5xx or a 409 idempotency_conflict (the
first attempt is still running), as the SDK does.

Afterwards every acknowledged write is checked against the catalog: an
acknowledged upsert that is not there is *lost*, an acknowledged delete whose
product is back is *resurrected*, an image id that appears twice is a
*duplicate*. Reports requests, answers by status inside and outside the
restart window, p50/p99 per kind and the service's RSS (with its children)
before and after. Target: 0 lost, 0 resurrected, 0 duplicates, and outside the
restart window no error other than 429. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cloud_search import start_server  # noqa: E402
from common import Service, write_result  # noqa: E402
from load import pct, tree_rss_mb  # noqa: E402

from shoplens.contract.codecs import encode_vector  # noqa: E402

ADMIN = "soak-admin-key-0000000000"
DEVICE = "soak-device-key-000000000"
MODEL_ID = "soaktest-64d-0123456789ab"
DIM = 64
SEED_PRODUCTS = 500
IMAGES_PER_WRITE = 5
#: transport errors and 503s are retried this often, 0.5 s apart, with the same Idempotency-Key:
#: long enough to outlast the restart, as an app's retry policy does
WRITE_RETRIES = 180


def _unit(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    v = centre + 0.2 * rng.standard_normal(DIM)
    return v / np.linalg.norm(v)


@dataclass
class Ledger:
    """What the clients were told: the truth the catalog is checked against afterwards."""

    upserted: dict[str, list[str]] = field(default_factory=dict)  # product id -> image ids, acknowledged
    deleted: set[str] = field(default_factory=set)  # product ids whose delete was acknowledged
    delete_unconfirmed: set[str] = field(default_factory=set)  # deletes sent, never answered (applied or not)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "upsert": [], "delete": []})
    status: dict[str, int] = field(default_factory=dict)
    status_in_window: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    transport_errors_in_window: int = 0
    requests: int = 0


class Window:
    """The restart window: from the kill until the restarted service is ready (plus a short grace)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def contains(self, t0: float, t1: float) -> bool:
        if self.start is None:
            return False
        end = self.end if self.end is not None else float("inf")
        return t1 >= self.start and t0 <= end + 1.0


def _in_progress(r: httpx.Response) -> bool:
    """409 idempotency_conflict: the first attempt with this key is still running (or died mid-way): retry."""
    if r.status_code != 409:
        return False
    try:
        return r.json()["error"]["code"] == "idempotency_conflict"
    except (ValueError, KeyError, TypeError):
        return False


async def _client(i: int, base: list[str], centres: np.ndarray, stop_at: float, max_requests: int,
                  ledger: Ledger, window: Window) -> None:
    rng = np.random.default_rng(100 + i)
    mine: list[str] = []  # this client's acknowledged products, candidates for a delete
    async with httpx.AsyncClient(timeout=30) as http:

        async def send(kind: str, method: str, path: str, body: Any | None, key: str, retry: bool) -> httpx.Response | None:
            headers = {"Authorization": f"Bearer {key}"}
            if retry:
                headers["Idempotency-Key"] = uuid.uuid4().hex
            for attempt in range(WRITE_RETRIES + 1 if retry else 1):
                t0 = time.monotonic()
                try:
                    r = await http.request(method, base[0] + path, json=body, headers=headers)
                except httpx.TransportError:
                    r = None
                t1 = time.monotonic()
                in_window = window.contains(t0, t1)
                ledger.requests += 1
                if r is None:
                    ledger.transport_errors += 1
                    ledger.transport_errors_in_window += in_window
                else:
                    counts = ledger.status_in_window if in_window else ledger.status
                    counts[f"{kind}:{r.status_code}"] = counts.get(f"{kind}:{r.status_code}", 0) + 1
                    if r.status_code < 500 and not _in_progress(r):
                        ledger.latencies[kind].append((t1 - t0) * 1000)
                        return r
                if attempt < WRITE_RETRIES and retry:
                    await asyncio.sleep(0.5)
            return r

        for n in range(max_requests):
            if time.monotonic() >= stop_at:
                return
            roll = rng.random()
            if roll < 0.2:
                pid = f"soak-{i}-{n}"
                images = [{"image_id": f"{pid}-{j}", "product_id": pid, "encoding": "f32",
                           "vector": encode_vector(_unit(rng, centres[rng.integers(len(centres))]), "f32")}
                          for j in range(IMAGES_PER_WRITE)]
                r = await send("upsert", "PUT", "/v1/catalog/images", {"model_id": MODEL_ID, "images": images}, ADMIN, True)
                if r is not None and r.status_code == 200:
                    ledger.upserted[pid] = [img["image_id"] for img in images]
                    mine.append(pid)
            elif roll < 0.27 and mine:
                pid = mine.pop(int(rng.integers(len(mine))))
                r = await send("delete", "DELETE", f"/v1/catalog/products/{pid}", None, ADMIN, True)
                # 404 for a product of its own: an earlier attempt of this delete was applied and the
                # service died before it could record the answer for the retry: deleted all the same
                if r is not None and r.status_code in (200, 404):
                    ledger.deleted.add(pid)
                else:
                    ledger.delete_unconfirmed.add(pid)
            else:
                body = {"model_id": MODEL_ID, "vector": encode_vector(_unit(rng, centres[rng.integers(len(centres))]), "i8"), "top_k": 10}
                await send("search", "POST", "/v1/search", body, DEVICE, False)
            await asyncio.sleep(rng.random() * 0.02)


async def _soak(service: Service, centres: np.ndarray, clients: int, seconds: float, max_requests: int,
                kill_at: float, ledger: Ledger) -> dict[str, Any]:
    window = Window()
    base = [service.url]
    t0 = time.monotonic()
    facts: dict[str, Any] = {}

    async def killer() -> None:
        await asyncio.sleep(seconds * kill_at)
        facts["rss_before_kill_mb"] = round(tree_rss_mb(service.pid), 1)
        window.start = time.monotonic()
        service.kill()
        facts["restart_s"] = round(await asyncio.to_thread(service.start), 2)
        window.end = time.monotonic()
        facts["restart_window_s"] = round(window.end - window.start, 2)

    await asyncio.gather(killer(), *(_client(i, base, centres, t0 + seconds, max_requests, ledger, window) for i in range(clients)))
    await asyncio.sleep(1.0)
    facts["rss_after_mb"] = round(tree_rss_mb(service.pid), 1)
    return facts


def _seed(url: str, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((64, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    images = [{"image_id": f"seed-{p}-{j}", "product_id": f"seed-{p}", "encoding": "f32",
               "vector": encode_vector(_unit(rng, centres[p % 64]), "f32")} for p in range(SEED_PRODUCTS) for j in range(4)]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as c:
        for s in range(0, len(images), 1000):
            c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images[s:s + 1000]}).raise_for_status()
        c.post("/v1/catalog/flush").raise_for_status()
    return centres


def _verify(url: str, ledger: Ledger) -> dict[str, int]:
    """Check every acknowledged write against the catalog as the restarted service serves it
    (a product whose delete was sent but never answered may be either way: not counted)."""
    lost = resurrected = duplicates = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        for pid, image_ids in ledger.upserted.items():
            r = c.get(f"/v1/catalog/products/{pid}")
            found = [img["image_id"] for img in r.json().get("images", [])] if r.status_code == 200 else []
            duplicates += len(found) - len(set(found))
            if pid in ledger.deleted:
                resurrected += bool(found)
            elif pid not in ledger.delete_unconfirmed:
                lost += len(set(image_ids) - set(found))
    return {"lost": lost, "resurrected": resurrected, "duplicates": duplicates}


def service_env(backend: str, work: Path, name: str, admin: str, device: str, rate: int) -> tuple[dict[str, str], Any]:
    """The environment of a ``shoplens serve`` over a Lite file in ``work`` or a started Milvus server
    (returned too, to stop it), with its own keys, alias ``name`` and a rate limit out of the way."""
    server = None
    env = {**os.environ, "SHOPLENS_ADMIN_KEYS": f'["{admin}"]', "SHOPLENS_DEVICE_KEYS": f'["{device}"]',
           "SHOPLENS_COLLECTION": name, "SHOPLENS_RATE_LIMIT_PER_S": str(rate), "SHOPLENS_RATE_LIMIT_BURST": str(2 * rate),
           "SHOPLENS_CACHE_DIR": str(work / "cache")}
    if backend == "lite":
        env["SHOPLENS_MILVUS_URI"] = str(work / f"{name}.db")
    else:
        server = start_server(work / "milvus", {})
        env["SHOPLENS_MILVUS_URI"] = f"http://127.0.0.1:{server.listen_port}"
    return env, server


def run_backend(backend: str, clients: int, seconds: float, max_requests: int, kill_at: float, work: Path) -> dict[str, Any]:
    env, server = service_env(backend, work, "soak", ADMIN, DEVICE, 1000)
    service = Service(env, work / "service.log")
    try:
        service.start()
        rng = np.random.default_rng(0)
        centres = _seed(service.url, rng)
        rss_before = round(tree_rss_mb(service.pid), 1)
        ledger = Ledger()
        facts = asyncio.run(_soak(service, centres, clients, seconds, max_requests, kill_at, ledger))
        checked = _verify(service.url, ledger)
    finally:
        service.stop()
        if server is not None:
            server.stop()
    outside_errors = {k: v for k, v in ledger.status.items() if int(k.split(":")[1]) >= 400 and not k.endswith(":429")}
    return {
        "backend": backend,
        "clients": clients,
        "seconds": seconds,
        "requests": ledger.requests,
        "acknowledged_upserts": len(ledger.upserted),
        "acknowledged_deletes": len(ledger.deleted),
        "unconfirmed_deletes": len(ledger.delete_unconfirmed),
        **checked,
        "errors_outside_restart": sum(outside_errors.values()) + ledger.transport_errors - ledger.transport_errors_in_window,
        "status_outside_restart": dict(sorted(ledger.status.items())),
        "status_in_restart": dict(sorted(ledger.status_in_window.items())),
        "transport_errors_in_restart": ledger.transport_errors_in_window,
        "search_p50_ms": round(pct(ledger.latencies["search"], 0.50), 1),
        "search_p99_ms": round(pct(ledger.latencies["search"], 0.99), 1),
        "upsert_p50_ms": round(pct(ledger.latencies["upsert"], 0.50), 1),
        "upsert_p99_ms": round(pct(ledger.latencies["upsert"], 0.99), 1),
        "delete_p50_ms": round(pct(ledger.latencies["delete"], 0.50), 1),
        "rss_before_mb": rss_before,
        **facts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["lite", "server", "both"], default="both")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=5000, help="per client: the loop is bounded in count as well as time")
    ap.add_argument("--kill-at", type=float, default=0.5, help="when to kill -9 the service, as a fraction of --seconds")
    ap.add_argument("--no-write", action="store_true", help="print the table only (smoke runs)")
    args = ap.parse_args()
    rows = []
    for backend in (["lite", "server"] if args.backend == "both" else [args.backend]):
        with tempfile.TemporaryDirectory(prefix=f"shoplens-soak-{backend}-") as tmp:
            print(f"soak on {backend}: {args.clients} clients, {args.seconds:g} s, kill -9 at {args.kill_at:.0%}", flush=True)
            rows.append(run_backend(backend, args.clients, args.seconds, args.max_requests, args.kill_at, Path(tmp)))
    targets = [{"metric": m, "target": 0, **{r["backend"]: r[m] for r in rows}}
               for m in ("lost", "resurrected", "duplicates", "errors_outside_restart")]
    if args.no_write:
        from common import print_table

        print_table(rows, "soak")
        print_table(targets, "targets")
    else:
        write_result("soak", rows, targets=targets, notes=[
            "lost: acknowledged upserted images missing afterwards; resurrected: acknowledged deletes (200, or 404 for a retry whose "
            "first attempt was applied before the kill) whose product is back; "
            "duplicates: an image id returned twice for a product.",
            "Writes retry transport errors and 503s with the same Idempotency-Key (as the SDK does); the restart window "
            "runs from the kill -9 until the restarted service answers /v1/ready, plus 1 s.",
        ])
    return 0 if all(t[r["backend"]] == 0 for t in targets for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

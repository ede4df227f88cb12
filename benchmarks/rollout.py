"""A model rollout under load: 8 clients on the old embedder and 8 on the new one, from indexing to retirement.

Usage: .venv/bin/python benchmarks/rollout.py [--backend lite|server] [--rows 5000] [--phase-seconds 15]

Starts ``shoplens serve`` on 127.0.0.1 (a Milvus Lite file, or the PyPI ``milvus``
2.3.5 server), seeds the catalog for the OLD model, and runs the rollout of
docs/cloud.md while clients search:

1. baseline: 8 clients search with OLD vectors;
2. indexing: ``reindex`` (through the admin API, as ``shoplens reindex --url``)
   builds the NEW model's collection beside OLD while the 8 OLD clients search;
3. both served: 8 NEW clients start (the app update shipped); NEW is promoted;
4. OLD deprecated (its answers must carry Deprecation + Sunset), then retired:
   OLD clients get the designed 410, which names NEW, and switch to it, as an
   updated app would.

Reports answers by status per phase (target: no error other than the 410s after
the retirement), p50/p99 of OLD searches while NEW is indexed against before,
and the rollout's total time. Every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Service, write_result  # noqa: E402
from load import pct  # noqa: E402
from soak import service_env  # noqa: E402

from shoplens.contract.codecs import encode_vector  # noqa: E402

ADMIN = "rollout-admin-key-00000000"
DEVICE = "rollout-device-key-0000000"
OLD = "oldembed-64d-0123456789ab"
NEW = "newembed-64d-abcdef012345"
DIM = 64
CLIENTS = 8
MAX_REQUESTS = 20_000  # per client and phase: the loops are bounded in count as well as time


@dataclass
class Phase:
    name: str
    status: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {OLD: [], NEW: []})
    deprecation_headers: int = 0


@dataclass
class Clients:
    """What each client currently embeds with: OLD clients move to NEW after the 410, as an updated app does."""

    model: list[str]
    stop: bool = False


def _space(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rot = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]  # the NEW model's vector space
    return x, x @ rot


async def _client(i: int, url: str, clients: Clients, vectors: dict[str, np.ndarray], phase: list[Phase], deadline: float) -> None:
    rng = np.random.default_rng(100 + i)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {DEVICE}"}, timeout=30) as http:
        for _ in range(MAX_REQUESTS * 4):
            if clients.stop or time.monotonic() > deadline:
                return
            model = clients.model[i]
            v = vectors[model][rng.integers(len(vectors[model]))]
            t0 = time.perf_counter()
            r = await http.post("/v1/search", json={"model_id": model, "vector": encode_vector(v, "i8"), "top_k": 10})
            ms = (time.perf_counter() - t0) * 1000
            p = phase[0]
            key = f"{'old' if model == OLD else 'new'}:{r.status_code}"
            p.status[key] = p.status.get(key, 0) + 1
            if r.status_code == 200:
                p.latencies[model].append(ms)
                p.deprecation_headers += "deprecation" in r.headers and "sunset" in r.headers
            elif r.status_code == 410 and r.json()["error"]["details"]["current_model_id"] == NEW:
                clients.model[i] = NEW  # the app updates its bundle
            await asyncio.sleep(0.005)


def _admin(url: str) -> Any:
    from shoplens.sdk.admin import ServiceAdmin
    from shoplens.sdk.client import ShoplensClient

    return ServiceAdmin(ShoplensClient(url, ADMIN, timeout=120))


async def _rollout(url: str, rows: Path, phase_s: float, vectors: dict[str, np.ndarray]) -> tuple[list[Phase], dict[str, float]]:
    from shoplens.cloud.reindex import reindex

    admin = _admin(url)
    phases: list[Phase] = []
    current = [Phase("baseline")]
    clients = Clients([OLD] * CLIENTS + [NEW] * CLIENTS)
    tasks: list[asyncio.Task[None]] = []
    deadline = time.monotonic() + 20 * phase_s + 600

    def start(idx: range) -> None:
        tasks.extend(asyncio.create_task(_client(i, url, clients, vectors, current, deadline)) for i in idx)

    def next_phase(name: str) -> None:
        phases.append(current[0])
        current[0] = Phase(name)

    times: dict[str, float] = {}
    start(range(CLIENTS))
    await asyncio.sleep(phase_s)
    next_phase("indexing NEW")
    t0 = time.monotonic()
    await asyncio.to_thread(reindex, admin, NEW, rows)
    times["index_new_s"] = round(time.monotonic() - t0, 1)
    next_phase("both served")
    start(range(CLIENTS, 2 * CLIENTS))
    await asyncio.sleep(phase_s / 2)
    await asyncio.to_thread(admin.change, NEW, "promote", bundle_url="https://cdn.example/bundles/new.zip")
    await asyncio.sleep(phase_s / 2)
    next_phase("OLD deprecated")
    await asyncio.to_thread(admin.change, OLD, "deprecate", sunset="2027-12-31")
    await asyncio.sleep(phase_s)
    next_phase("OLD retired")
    await asyncio.to_thread(admin.change, OLD, "retire")
    await asyncio.sleep(phase_s)
    clients.stop = True
    await asyncio.gather(*tasks)
    phases.append(current[0])
    times["rollout_s"] = round(time.monotonic() - t0, 1)
    admin.client.close()
    return phases, times


def run(backend: str, rows: int, phase_s: float, work: Path) -> dict[str, Any]:
    env, server = service_env(backend, work, "rollout", ADMIN, DEVICE, 100_000)
    old, new = _space(0, rows)
    images = lambda x: [{"image_id": f"i{i}", "product_id": f"p{i // 4}", "vector": encode_vector(v, "f32"), "encoding": "f32"}  # noqa: E731
                        for i, v in enumerate(x)]
    rows_file = work / "new-rows.jsonl"
    rows_file.write_text("".join(json.dumps(img) + "\n" for img in images(new)))
    service = Service(env, work / "service.log")
    try:
        service.start()
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as c:
            seed = images(old)
            for s in range(0, len(seed), 1000):
                c.put("/v1/catalog/images", json={"model_id": OLD, "images": seed[s:s + 1000]}).raise_for_status()
            c.post("/v1/catalog/flush").raise_for_status()
        phases, times = asyncio.run(_rollout(service.url, rows_file, phase_s, {OLD: old, NEW: new}))
    finally:
        service.stop()
        if server is not None:
            server.stop()
    table = []
    for p in phases:
        errors = {k: v for k, v in p.status.items() if not k.endswith(":200") and not (p.name == "OLD retired" and k == "old:410")}
        table.append({"backend": backend, "phase": p.name, "answers": dict(sorted(p.status.items())), "unexpected": sum(errors.values()),
                      "old_p50_ms": round(pct(p.latencies[OLD], 0.5), 1), "old_p99_ms": round(pct(p.latencies[OLD], 0.99), 1),
                      "new_p50_ms": round(pct(p.latencies[NEW], 0.5), 1), "new_p99_ms": round(pct(p.latencies[NEW], 0.99), 1),
                      "deprecation_headers": p.deprecation_headers})
    return {"rows": table, "times": times, "catalog_rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["lite", "server"], default="lite")
    ap.add_argument("--rows", type=int, default=5000, help="catalog images per model")
    ap.add_argument("--phase-seconds", type=float, default=15.0)
    ap.add_argument("--no-write", action="store_true", help="print the table only (smoke runs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoplens-rollout-") as tmp:
        out = run(args.backend, args.rows, args.phase_seconds, Path(tmp))
    rows = out["rows"]
    unexpected = sum(r["unexpected"] for r in rows)
    base, during = rows[0], rows[1]
    targets = [
        {"metric": "errors other than the designed 410s", "target": 0, "measured": unexpected},
        {"metric": "OLD p99 while NEW is indexed / before", "target": "reported", "measured": f"{during['old_p99_ms']} / {base['old_p99_ms']} ms"},
        {"metric": "OLD answers with Deprecation + Sunset after deprecation", "target": "> 0", "measured": rows[3]["deprecation_headers"]},
    ]
    if args.no_write:
        from common import print_table

        print_table(rows, "rollout")
        print_table(targets, "targets")
        print(out["times"])
    else:
        write_result("rollout", rows, targets=targets, extra={"times": out["times"], "catalog_rows_per_model": out["catalog_rows"]}, notes=[
            "Phases: baseline (8 OLD clients), indexing NEW beside OLD (reindex through the admin API), both served (8 NEW clients "
            "start; NEW promoted halfway), OLD deprecated, OLD retired (OLD clients get 410 naming NEW and switch to it).",
            "unexpected: answers other than 200, and other than 410 for OLD after its retirement.",
        ])
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Bounded load test of the search service on 127.0.0.1: concurrent searches and catalog writes.

Usage: .venv/bin/python benchmarks/load.py [--clients 50] [--seconds 60] [--rows 20000]

Starts `shoplens serve` in a subprocess over a fresh Milvus Lite file, seeds a
catalog, then runs N async clients for a bounded time and request count: 90%
searches with device keys, 10% bulk upserts with the admin key, plus one
client that deliberately exceeds its key's rate limit (its 429s are intended).
Reports status counts, latency percentiles per kind, and the service's RSS
over time (sampled from /proc), which must stay flat. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ADMIN = "load-admin-key-000000000"
DEVICES = [f"load-device-key-{i:08d}" for i in range(256)]  # one key per client, like one per app install
GREEDY = "load-greedy-key-00000000"  # shares nothing with the others: its own bucket, hammered on purpose
MODEL_ID = "loadtest-256d-0123456789ab"
DIM = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """RSS of the service and its children (Milvus Lite runs its server in a child process)."""
    total = rss_mb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        try:
            total += tree_rss_mb(int(c))
        except (OSError, ValueError):
            pass
    return total


class Service:
    def __init__(self, workdir: Path, rate_per_s: float = 200.0, burst: int = 400) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SHOPLENS_MILVUS_URI": str(workdir / "load.db"),
            "SHOPLENS_ADMIN_KEYS": f'["{ADMIN}"]',
            "SHOPLENS_DEVICE_KEYS": "[" + ",".join(f'"{k}"' for k in [*DEVICES, GREEDY]) + "]",
            "SHOPLENS_RATE_LIMIT_PER_S": str(rate_per_s),
            "SHOPLENS_RATE_LIMIT_BURST": str(burst),
        }
        self.log = open(workdir / "service.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "shoplens", "serve", "--port", str(self.port), "--log-level", "warning"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Service":
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("service exited during start-up")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("service did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _vec(rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    c = centers[rng.integers(len(centers))]
    v = c + 0.3 * rng.standard_normal(DIM)
    return v / np.linalg.norm(v)


def seed(url: str, rows: int, seed_: int = 0) -> np.ndarray:
    from shoplens.contract import encode_vector

    rng = np.random.default_rng(seed_)
    centers = rng.standard_normal((64, DIM))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as c:
        for start in range(0, rows, 1000):
            images = [{"image_id": f"seed-{i}", "product_id": f"p{i // 4}", "vector": encode_vector(_vec(rng, centers), "f32"), "category": f"c{i % 7}", "price": float(i % 100)} for i in range(start, min(rows, start + 1000))]
            r = c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images})
            r.raise_for_status()
        c.post("/v1/catalog/flush").raise_for_status()
    return centers


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "write": [], "greedy": []})
    status: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def record(self, kind: str, status: int, ms: float, intended_429: bool = False) -> None:
        self.latencies[kind].append(ms)
        key = f"{kind}:{status}"
        self.status[key] = self.status.get(key, 0) + 1
        if status >= 400 and not (status == 429 and intended_429):
            self.unexpected.append(key)


async def _greedy(url: str, centers: np.ndarray, stop_at: float, max_requests: int, burst: int, stats: Stats) -> None:
    """Fires bursts larger than its key's bucket: the service must answer 429 + Retry-After, not fall over."""
    from shoplens.contract import encode_vector

    rng = np.random.default_rng(999)
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def one() -> None:
            t = time.perf_counter()
            r = await c.post("/v1/search", json={"model_id": MODEL_ID, "vector": encode_vector(_vec(rng, centers), "i8")}, headers={"Authorization": f"Bearer {GREEDY}"})
            stats.record("greedy", r.status_code, (time.perf_counter() - t) * 1000, intended_429=True)
            if r.status_code == 429 and not r.headers.get("Retry-After"):
                stats.unexpected.append("greedy:429 without Retry-After")

        while time.monotonic() < stop_at and sent < max_requests:
            n = min(burst + 10, max_requests - sent)
            await asyncio.gather(*(one() for _ in range(n)))
            sent += n
            await asyncio.sleep(1.0)


async def _client(i: int, url: str, centers: np.ndarray, stop_at: float, max_requests: int, stats: Stats) -> None:
    from shoplens.contract import encode_vector

    rng = np.random.default_rng(1000 + i)
    key = DEVICES[i % len(DEVICES)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for n in range(max_requests):
            if time.monotonic() >= stop_at:
                return
            write = rng.random() < 0.10
            t = time.perf_counter()
            if write:
                images = [{"image_id": f"c{i}-{n}-{j}", "product_id": f"w{i}-{n}", "vector": encode_vector(_vec(rng, centers), "f16"), "encoding": "f16"} for j in range(8)]
                r = await c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images}, headers={"Authorization": f"Bearer {ADMIN}"})
                stats.record("write", r.status_code, (time.perf_counter() - t) * 1000)
            else:
                body = {"model_id": MODEL_ID, "vector": encode_vector(_vec(rng, centers), "i8"), "top_k": 10}
                if rng.random() < 0.2:
                    body["filters"] = {"category_in": [f"c{rng.integers(7)}"], "price_max": 50.0}
                r = await c.post("/v1/search", json=body, headers={"Authorization": f"Bearer {key}"})
                stats.record("search", r.status_code, (time.perf_counter() - t) * 1000)
            await asyncio.sleep(rng.random() * 0.01)  # a little think time, as real clients have


async def _run(url: str, centers: np.ndarray, clients: int, seconds: float, max_requests: int, pid: int, rss: list[tuple[float, float]], burst: int) -> Stats:
    stats = Stats()
    t0 = time.monotonic()
    stop_at = t0 + seconds

    async def sample() -> None:
        while time.monotonic() < stop_at:
            rss.append((time.monotonic() - t0, tree_rss_mb(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample(), _greedy(url, centers, stop_at, max_requests, burst, stats), *(_client(i, url, centers, stop_at, max_requests, stats) for i in range(clients)))
    return stats


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def run_load(clients: int, seconds: float, rows: int, max_requests: int = 100_000, rate_per_s: float = 200.0, burst: int = 400) -> dict:
    """Everything a report needs; bounded by ``seconds`` and ``max_requests`` per client."""
    with tempfile.TemporaryDirectory(prefix="shoplens-load-") as tmp, Service(Path(tmp), rate_per_s, burst) as svc:
        centers = seed(svc.url, rows)
        time.sleep(2)  # let Milvus Lite index the seed before measuring
        rss: list[tuple[float, float]] = []
        stats = asyncio.run(_run(svc.url, centers, clients, seconds, max_requests, svc.proc.pid, rss, burst))
        rss.append((seconds, tree_rss_mb(svc.proc.pid)))
    rows_out = []
    for kind, lat in stats.latencies.items():
        rows_out.append({"kind": kind, "requests": len(lat), "rps": len(lat) / seconds, "p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95), "p99_ms": pct(lat, 0.99), "max_ms": max(lat) if lat else float("nan")})
    warm = [m for t, m in rss if t >= min(10.0, seconds / 3)] or [m for _, m in rss]
    return {
        "rows": rows_out,
        "status": stats.status,
        "unexpected_errors": len(stats.unexpected),
        "unexpected_samples": stats.unexpected[:10],
        "rss_mb": {"start": rss[0][1], "end": rss[-1][1], "max": max(m for _, m in rss), "growth_after_warmup": warm[-1] - warm[0]},
        "clients": clients,
        "seconds": seconds,
        "catalog_rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client; the run also stops at --seconds")
    ap.add_argument("--rate", type=float, default=20.0, help="token-bucket refill per key (requests/s): a phone needs far less")
    ap.add_argument("--burst", type=int, default=40, help="token-bucket size per key")
    args = ap.parse_args()
    from common import write_result

    res = run_load(args.clients, args.seconds, args.rows, args.max_requests, rate_per_s=args.rate, burst=args.burst)
    rows = res.pop("rows")
    notes = [
        f"{args.clients} async clients for {args.seconds:.0f} s on 127.0.0.1 against `shoplens serve` (one uvicorn worker) over Milvus Lite with {args.rows} seeded 256-d rows; 90% i8 searches (20% with filters), 10% upserts of 8 f16 images; one more client fires bursts larger than its key's bucket to trigger intended 429s; rate limit {args.rate:g}/s, burst {args.burst} per key",
        f"status counts: {res['status']}; unexpected errors: {res['unexpected_errors']}",
        f"service RSS (incl. the Milvus Lite child) MB: start {res['rss_mb']['start']:.0f}, end {res['rss_mb']['end']:.0f}, max {res['rss_mb']['max']:.0f}, growth after warm-up {res['rss_mb']['growth_after_warmup']:.0f}",
    ]
    write_result("load", rows, notes=notes, extra={"summary": res}, targets=[{"metric": "unexpected errors", "target": "0"}, {"metric": "RSS growth after warm-up", "target": "< 100 MB"}])


if __name__ == "__main__":
    main()

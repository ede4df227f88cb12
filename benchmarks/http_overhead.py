"""Where the HTTP layer's time goes, and whether more uvicorn workers help.

Usage:
  .venv/bin/python benchmarks/http_overhead.py --n 20000 --profile
Options: --uri (an existing Milvus server instead of starting the PyPI ``milvus`` one),
--queries 1000 (sequential, interleaved bare/HTTP), --clients 8 --qps-seconds 10,
--variants (comma list of the names below), --profile (py-spy the service under load, GIL-holding
samples only: where its Python CPU goes), --loadgen stdlib|httpx (the load generator's client).

For each service variant (uvicorn h11+asyncio vs httptools+uvloop, 1 vs 2 workers) it
measures, against the same Milvus server and collection:

- single-client latency, bare pymilvus and HTTP interleaved query by query (same load);
- 8-client QPS, bare before and after the HTTP run;
- CPU milliseconds per request of each party (the service's processes, the Milvus
  server's processes, this load-generating process), from /proc CPU times: on a small
  machine QPS is CPU-bound and this says who spends it;
- with ``--profile``: a py-spy sample of the service under 8 clients, summarised by layer
  (HTTP server/event loop, FastAPI/Starlette, pydantic, pymilvus/gRPC, shoplens code, ...).

Writes ``benchmarks/results/http_overhead.json`` (one row per variant).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cloud_search import (  # noqa: E402
    ADMIN, DEVICE, MODEL, KeepAliveClient, concurrent_qps, exact_top10, flush_and_wait_indexed, free_port, insert_vectors,
    make_data, pct, recall,
)
from common import write_result  # noqa: E402

from shoplens.contract.codecs import encode_vector  # noqa: E402

#: ``search``: "async" = pymilvus' asyncio client on the event loop, the service's only search path
#: (the thread-pool variant measured before is in results/http_overhead.json and docs/cloud.md)
VARIANTS: dict[str, dict[str, Any]] = {
    "h11+asyncio x1": {"workers": 1, "loop": "asyncio", "http": "h11", "search": "async"},
    "httptools+uvloop x1": {"workers": 1, "loop": "uvloop", "http": "httptools", "search": "async"},
    "httptools+uvloop x2": {"workers": 2, "loop": "uvloop", "http": "httptools", "search": "async"},
}

#: py-spy frames are ``function (path:line)``; the first layer whose marker appears in the
#: innermost frame's path names the sample (order matters: specific before generic)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("pymilvus + grpc client", ("pymilvus/", "grpc/", "google/protobuf/")),
    ("pydantic validation/serialisation", ("pydantic/", "pydantic_core/")),
    ("FastAPI routing/dependencies", ("fastapi/",)),
    ("Starlette", ("starlette/",)),
    ("uvicorn + HTTP parser", ("uvicorn/", "h11/", "httptools/")),
    ("event loop", ("asyncio/", "uvloop/", "selectors.py")),
    ("thread pool hand-off", ("anyio/", "threading.py", "concurrent/futures", "queue.py")),
    ("json", ("json/", "orjson")),
    ("prometheus metrics", ("prometheus_client/",)),
    ("shoplens (codecs, filters, grouping, auth)", ("shoplens/", "cloud/", "contract/")),
    ("numpy", ("numpy/",)),
    ("python stdlib (enum, typing, ...)", ("enum.py", "typing.py", "functools.py", "contextlib.py", "inspect.py")),
]


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """User + system CPU of these processes (and, with ``children``, all their live children)."""
    import psutil

    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *(p.children(recursive=True) if children else [])]:
                if q.pid in seen:
                    continue
                seen.add(q.pid)
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def layer_of(stack: str) -> str:
    leaf = stack.rsplit(";", 1)[-1]
    for name, markers in LAYERS:
        if any(m in leaf for m in markers):
            return name
    # native frames (no path) belong to the innermost Python frame that has one
    for frame in reversed(stack.split(";")):
        for name, markers in LAYERS:
            if any(m in frame for m in markers):
                return name
    return "other"


def profile_service(pid: int, seconds: float, out: Path, load: Any) -> dict[str, float]:
    """py-spy the service (and its workers) while ``load()`` runs; share of active samples per layer."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds)),
                             "--rate", "200", "--gil", "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    load()
    _, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[layer_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in counts.most_common()}


def start_service(variant: dict[str, Any], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "shoplens.cloud.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(variant["workers"]), "--loop", variant["loop"],
           "--http", variant["http"], "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--qps-seconds", type=float, default=10.0)
    ap.add_argument("--uri", default="")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--loadgen", choices=["stdlib", "httpx"], default="stdlib",
                    help="HTTP client of the load generator (stdlib keep-alive: least CPU)")
    args = ap.parse_args()

    import httpx

    from shoplens.cloud.store import CatalogStore
    from shoplens.settings import Settings

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="shoplens-http-"))
    server = None
    milvus_pids: list[int] = []
    if not args.uri:
        from milvus import default_server

        default_server.set_base_dir(str(work / "milvus"))
        default_server.listen_port = free_port()
        default_server.start()
        server = default_server
        milvus_pids = [default_server.server_proc.pid] if default_server.server_proc else []
        uri = f"http://127.0.0.1:{default_server.listen_port}"
    else:
        uri = args.uri
    settings = Settings(milvus_uri=uri, collection="bench", admin_keys=[ADMIN], device_keys=[DEVICE], cache_dir=work,
                        index_type="HNSW", index_params={"M": 16, "efConstruction": 64}, search_params={"ef": 64},
                        rate_limit_per_s=1e9, rate_limit_burst=10**9, milvus_timeout_s=60)
    x, q = make_data(args.n, args.queries)
    truth = exact_top10(x, q)
    rows: list[dict[str, Any]] = []
    try:
        store = CatalogStore(settings)
        version = store.ping()
        binding = store.create_collection(MODEL, activate=True)
        insert_vectors(store, binding, x, progress=False)
        flush_and_wait_indexed(store, binding.collection, args.n)

        def bare(i: int, v: np.ndarray) -> list[int]:
            hits, _ = store.search(binding, v[None, :], top_k=10)
            return [int(h.image_id) for h in hits[0]]

        for v in q[:200]:
            bare(0, v)
        bodies = np.array([json.dumps({"model_id": MODEL, "encoding": "i8", "top_k": 10, "vector": encode_vector(v, "i8")})
                           for v in q], dtype=object)
        env = dict(os.environ, SHOPLENS_MILVUS_URI=uri, SHOPLENS_COLLECTION="bench",
                   SHOPLENS_ADMIN_KEYS=json.dumps([ADMIN]), SHOPLENS_DEVICE_KEYS=json.dumps([DEVICE]),
                   SHOPLENS_SEARCH_PARAMS=json.dumps({"ef": 64}), SHOPLENS_RATE_LIMIT_PER_S="1e9",
                   SHOPLENS_RATE_LIMIT_BURST=str(10**9), SHOPLENS_CACHE_DIR=str(work))
        me = os.getpid()
        for name in names:
            variant = VARIANTS[name]
            port = free_port()
            proc = start_service(variant, env, port, work / f"serve-{port}.log")
            base = f"http://127.0.0.1:{port}"
            row: dict[str, Any] = {"variant": name, **variant, "loadgen": args.loadgen, "n": args.n, "server_version": version}
            try:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if httpx.get(base + "/v1/ready", timeout=5).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("service did not start: " + (work / f"serve-{port}.log").read_text()[-2000:])
                    time.sleep(0.3)
                clients: list[Any] = [KeepAliveClient(port, {"X-API-Key": DEVICE}) for _ in range(args.clients)]
                if args.loadgen == "httpx":
                    clients = [httpx.Client(base_url=base, headers={"X-API-Key": DEVICE, "content-type": "application/json"},
                                            timeout=60) for _ in range(args.clients)]

                def http_search(i: int, body: str) -> list[int]:
                    c = clients[i]
                    if isinstance(c, KeepAliveClient):
                        return [int(h["image_id"]) for h in c.post_json("/v1/search", body)["hits"]]
                    r = c.post("/v1/search", content=body)
                    r.raise_for_status()
                    return [int(h["image_id"]) for h in r.json()["hits"]]

                for i in range(args.clients):  # warm every connection (and, with workers, every process)
                    for b in bodies[:50]:
                        http_search(i, b)
                lat_b, lat_h, found_h = [], [], []
                for v, b in zip(q, bodies):
                    t = time.perf_counter()
                    bare(0, v)
                    lat_b.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    found_h.append(http_search(0, b))
                    lat_h.append(time.perf_counter() - t)
                row.update({f"bare_{k}": v for k, v in pct(lat_b).items()})
                row.update({f"http_{k}": v for k, v in pct(lat_h).items()})
                row["http_over_bare_p50_ms"] = row["http_p50_ms"] - row["bare_p50_ms"]
                row["http_recall@10"] = recall(found_h, truth)

                def qps_with_cpu(fn: Any, items: Any, prefix: str) -> float:
                    before = (cpu_seconds([proc.pid]), cpu_seconds(milvus_pids), cpu_seconds([me], children=False))
                    t0 = time.monotonic()
                    qps = concurrent_qps(fn, items, args.clients, args.qps_seconds)
                    requests = qps * (time.monotonic() - t0)
                    after = (cpu_seconds([proc.pid]), cpu_seconds(milvus_pids), cpu_seconds([me], children=False))
                    for label, b0, b1 in zip(("service", "milvus", "loadgen"), before, after):
                        if prefix == "bare" and label == "service":
                            continue
                        row[f"{prefix}_cpu_ms_per_req_{label}"] = 1000 * (b1 - b0) / max(1.0, requests)
                    return qps

                qps_before = qps_with_cpu(bare, q, "bare")
                row["http_qps_8"] = qps_with_cpu(http_search, bodies, "http")
                qps_after = concurrent_qps(bare, q, args.clients, args.qps_seconds)
                row["bare_qps_8"] = (qps_before + qps_after) / 2
                row["http_qps_over_bare"] = row["http_qps_8"] / row["bare_qps_8"]
                if args.profile:
                    row["profile_share_of_service_samples"] = profile_service(
                        proc.pid, args.qps_seconds, Path(os.environ.get("SPY_DIR", str(work))) / f"spy-{port}.txt",
                        lambda: concurrent_qps(http_search, bodies, args.clients, args.qps_seconds - 2))
                for c in clients:
                    c.close()
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            rows.append(row)
            print(json.dumps(row, default=str))
        store.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    notes = [
        f"Milvus {rows[0]['server_version'] if rows else '?'} server (PyPI milvus) on the same 2-core machine as the "
        f"service and this load generator; {args.n} synthetic catalog-shaped 256-d vectors (cloud_search.make_data), HNSW M=16 efConstruction=64 ef=64",
        "cpu_ms_per_req_*: CPU seconds used by each party during the QPS run / requests completed in it",
    ]
    write_result("http_overhead", rows, notes=notes)
    for r in rows:
        if "profile_share_of_service_samples" in r:
            print(r["variant"], json.dumps(r["profile_share_of_service_samples"]))


if __name__ == "__main__":
    main()

"""Where the nq=1 latency tail of a Milvus server comes from, and whether server or client knobs move it.

Usage:
  .venv/bin/python benchmarks/milvus_tail.py [--n 100000] [--queries 2000] [--passes 2]
  .venv/bin/python benchmarks/milvus_tail.py --work DIR --ef 96 --variants default --result milvus_tail_1m
      (DIR: a collection kept by ``cloud_search.py --backend server --work DIR``, e.g. the 1M build)

Why: the cloud issue's target is HTTP p99 <= 15 ms, and ``cloud_search.py`` measured the
service's own Milvus query (no HTTP) at p99 22-24 ms on this machine. This script builds one
collection (the PyPI ``milvus`` 2.3.5 server, the service's schema and HNSW index, the same seeded
synthetic catalog as ``cloud_search.py``), then restarts the server on the same data once per
variant (a server config key, an environment variable of the server process, or a client-side
change) and measures, interleaved query by query so drift hits both alike:

- ``raw``: a bare pymilvus search, limit 10, no output fields: the least a search can ask;
- ``service``: the service's query (``CatalogStore.search``: over-fetch for grouping on 2.3.5,
  every catalog field returned, results grouped by product).

Each variant measures the query set ``--passes`` times. Whether the slow queries are the same
queries in every pass says what kind of tail it is: a property of the query (a hard HNSW search:
fix it with index or ef) or of the moment (the machine stalls: no per-query fix, not even a hedged
second request, helps). Rows carry the rank correlation of per-query latency between the first two
passes, how many of the first pass's slowest 1% are among the second's slowest 1%, and the p99 of
each query's fastest pass.

Writes ``benchmarks/results/<--result>.json`` (default ``milvus_tail``; one row per variant).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cloud_search import (  # noqa: E402
    ADMIN, DEVICE, MODEL, flush_and_wait_indexed, insert_vectors, load_build, make_data, pct, start_server,
)
from common import print_table, write_result  # noqa: E402

#: name -> (server config keys, server environment, client options)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = {
    "default": ({}, {}, {}),
    "knowhere pool ratio 1": ({"queryNode.segcore.knowhereThreadPoolNumRatio": 1}, {}, {}),
    "server GOGC=400": ({}, {"GOGC": "400"}, {}),
    "client gc off": ({}, {}, {"gc_off": True}),
    "Eventually consistency": ({}, {}, {"consistency": "Eventually"}),
    "thread pools 1x cores": ({"common.threadCoreCoefficient.highPriority": 1, "common.threadCoreCoefficient.middlePriority": 1,
                               "queryNode.segcore.knowhereThreadPoolNumRatio": 1}, {}, {}),
}


def tail(seconds: list[float]) -> dict[str, float]:
    """cloud_search's percentiles plus the worst query and how many exceed the 15 ms target."""
    ms = np.asarray(seconds) * 1000
    return {**pct(seconds), "max_ms": float(ms.max()), "over_15ms": int((ms > 15).sum())}


def repeatability(passes: list[list[float]]) -> dict[str, float]:
    """Is the tail the same queries every pass (rank correlation ~1, overlap ~1) or random (~0, ~0.01)?"""
    a, b = (np.asarray(x) for x in passes[:2])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 - Spearman = Pearson of the ranks
    k = max(1, len(a) // 100)
    slow_a, slow_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
    fastest = np.min(np.asarray(passes), axis=0) * 1000
    return {"rank_corr": float(np.corrcoef(ranks(a), ranks(b))[0, 1]), "slowest1pct_overlap": len(slow_a & slow_b) / k,
            "fastest_pass_p99_ms": float(np.percentile(fastest, 99))}


def kept_build(work: Path) -> dict[str, Any]:
    """The build key ``cloud_search.py --work DIR`` left in DIR (n, index, data shape, server config)."""
    built = load_build(work, own_server=True)
    if built is None:
        raise SystemExit(f"{work}: no build.json; build one with benchmarks/cloud_search.py --backend server --work {work} --build-only")
    key = built["key"]
    if key.get("backend") != "server":
        raise SystemExit(f"{work} holds a {key.get('backend')} build; this script measures a server")
    return key



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--passes", type=int, default=2, help="measure the query set this many times per variant (>= 2)")
    ap.add_argument("--work", type=Path, default=None,
                    help="measure a collection kept by cloud_search.py --backend server --work DIR instead of building one "
                         "(its n, data shape and server config; --n is ignored)")
    ap.add_argument("--result", default="milvus_tail", help="result file name under benchmarks/results/")
    ap.add_argument("--variants", default=",".join([*VARIANTS, "default"]),
                    help="comma list of: " + ", ".join(VARIANTS) + " (a name may repeat: the default runs first, "
                    "right after the build, and again last as the control)")
    args = ap.parse_args()
    if args.passes < 2:
        ap.error("--passes must be >= 2 (the repeatability figures compare two passes)")

    from shoplens.cloud import schema as cs
    from shoplens.cloud.store import CatalogStore
    from shoplens.settings import Settings

    server_config: dict[str, Any] = {}
    if args.work is not None:  # a kept cloud_search build: same data, same segments
        key = kept_build(args.work)
        work, args.n, built = args.work.resolve(), key["n"], True
        server_config = key.get("server_config", {})
        _, q = make_data(args.n, args.queries, kind=key["data"])
    else:
        work, built = Path(tempfile.mkdtemp(prefix="shoplens-tail-")), False
        x, q = make_data(args.n, args.queries)
    rows: list[dict[str, Any]] = []
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    for run, name in enumerate(names):
        config, env, client = VARIANTS[name]
        server = start_server(work / "milvus", {**server_config, **config}, env)
        try:
            settings = Settings(
                milvus_uri=f"http://127.0.0.1:{server.listen_port}", collection="bench", admin_keys=[ADMIN],
                device_keys=[DEVICE], cache_dir=work, index_type="HNSW", index_params={"M": 16, "efConstruction": 64},
                search_params={"ef": args.ef}, rate_limit_per_s=1e9, rate_limit_burst=10**9, milvus_timeout_s=60,
                **({"read_consistency": client["consistency"]} if "consistency" in client else {}),
            )
            store = CatalogStore(settings)
            version = store.ping()
            if not built:
                binding = store.create_collection(MODEL, activate=True)
                insert_vectors(store, binding, x)
                flush_and_wait_indexed(store, binding.collection, args.n)
                built = True
            binding = store.require_binding()
            level = settings.read_consistency

            def raw(v: np.ndarray) -> None:
                with store._call("search") as c:
                    c.search(collection_name=binding.collection, data=[v.tolist()], limit=10, output_fields=[],
                             anns_field=cs.VECTOR, consistency_level=level,
                             search_params={"metric_type": binding.metric, "params": {"ef": args.ef}})

            def service(v: np.ndarray) -> None:
                store.search(binding, v[None, :], top_k=10)

            fns: dict[str, Callable[[np.ndarray], None]] = {"raw": raw, "service": service}
            for v in q[:200]:  # warm-up (also lets loading and post-flush work settle)
                raw(v)
                service(v)
            passes: dict[str, list[list[float]]] = {k: [] for k in fns}
            if client.get("gc_off"):
                gc.disable()
            try:
                for _ in range(args.passes):
                    lat: dict[str, list[float]] = {k: [] for k in fns}
                    for v in q:
                        for k, fn in fns.items():
                            t = time.perf_counter()
                            fn(v)
                            lat[k].append(time.perf_counter() - t)
                    for k in fns:
                        passes[k].append(lat[k])
            finally:
                gc.enable()
            row: dict[str, Any] = {"run": run + 1, "variant": name, "after_build": run == 0 and args.work is None, "server_version": version,
                                   "n": args.n, "queries": args.queries, "passes": args.passes, "ef": args.ef, "consistency": level,
                                   "server_config": {**server_config, **config} or None}
            for k, seconds in passes.items():
                row.update({f"{k}_{m}": v for m, v in tail([s for p in seconds for s in p]).items()})
                row.update({f"{k}_{m}": v for m, v in repeatability(seconds).items()})
            rows.append(row)
            print_table([row], title=name)
            store.close()
        finally:
            server.stop()
    print_table(rows, title="milvus_tail")
    base = rows[-1] if len(rows) > 1 and rows[-1]["variant"] == "default" else rows[0]
    write_result(args.result, rows, notes=[
        f"one collection of {args.n} seeded synthetic catalog vectors (cloud_search.py's generator), HNSW M=16 "
        f"efConstruction=64 ef={args.ef}, the PyPI milvus server restarted on the same data for each variant"
        + (f" (the collection kept by cloud_search.py in {args.work}, server config {server_config})" if args.work else ""),
        f"raw and service queries alternate query by query, single client, after 200 warm-up queries each; the query set "
        f"is measured {args.passes} times per variant and the percentiles pool all passes",
        "rank_corr / slowest1pct_overlap: Spearman correlation of per-query latency between passes 1 and 2 and the share of "
        "pass 1's slowest 1% among pass 2's slowest 1% (near 1: the same queries are slow, a property of the query; near 0 / "
        "0.01: chance, a property of the moment); fastest_pass_p99_ms: p99 of each query's fastest pass",
        f"default (run {base['run']}): raw p99 {base['raw_p99_ms']:.1f} ms, service p99 {base['service_p99_ms']:.1f} ms; "
        "compare the variants' p99 with the control default's to see what a knob moves"
        + ("" if args.work else "; run 1 follows the build directly (after_build) and carries the server's post-build work"),
        "2 CPUs shared by Milvus (etcd, proxy, query node, ... in one process tree) and this client",
    ])


if __name__ == "__main__":
    main()

"""The 30M deployment plan, computed from measured per-row and per-query costs (docs/scaling.md, "The 30M plan").

Usage:
  .venv/bin/python benchmarks/scale_plan.py [--run TAG] [--images 30000000] [--qps 500 --qps 2000]
      [--node-gb 64] [--node-cores 16] [--import-cores 100]

Measured inputs (read from benchmarks/results, never typed in): the 10M server row of ``cloud_search.json``
(``--run``: its tag; default the newest row of 5M rows or more that met its recall target): the Milvus RSS after
loading the index and its peak while building, Milvus CPU per search, the service's CPU per search, insert rate,
index build time, disk; and ``catalog_import.json``'s images embedded per second by one worker on one core.
Assumptions are options, printed with the plan: scalar bytes per row that the benchmark's rows lack (real titles,
URLs: ``--scalar-bytes``), the share of a node's memory to plan for (``--usable``), the share of a node's cores a
query node turns into searches (``--efficiency``), and that search CPU grows linearly with the rows a node holds
(IVF lists of a fixed size: a query scans nprobe lists per segment, and segments grow with the rows).
Writes benchmarks/results/scale_plan.json: one row per scenario (target QPS), the inputs and the formulas.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, write_result  # noqa: E402

GIB = 2**30


def pick_search_row(rows: list[dict[str, Any]], tag: str = "") -> dict[str, Any]:
    """The measured 10M row: by tag, else the newest server row of >= 5M rows whose recall target was met."""
    if tag:
        found = [r for r in rows if r.get("tag") == tag and r.get("backend") == "server"]
        if not found:
            raise SystemExit(f"cloud_search.json has no server row tagged {tag!r}")
        return found[0]
    big = [r for r in rows if r.get("backend") == "server" and r.get("n", 0) >= 5_000_000
           and any(t["target"].startswith("recall") and t["met"] for t in r.get("targets", []))
           and r.get("milvus_cpu_ms_per_search")]
    if not big:
        raise SystemExit("cloud_search.json has no server row of >= 5M rows that met its recall target and has CPU per search; "
                         "run benchmarks/cloud_search.py at 10M first (its docstring)")
    return max(big, key=lambda r: r["measured_at"])


def import_rate(rows: list[dict[str, Any]]) -> float:
    """Images embedded per second by one worker on one core (catalog_import.json)."""
    one = [r for r in rows if r.get("workers") == 1 and r.get("threads_per_worker") == 1]
    if not one:
        raise SystemExit("catalog_import.json has no 1-worker, 1-thread row; run benchmarks/catalog_import.py")
    return float(one[0]["images_per_s"])


def index_rate(search: dict[str, Any]) -> float:
    """Rows indexed per second on the measuring machine: the build's own rate when the run recorded one (a bulk
    build indexes while it inserts, so its rate counts the rows indexed once the insert ended), else rows / build time."""
    return float(search.get("index_rows_per_s") or search["n"] / search["index_build_s"])


def plan(search: dict[str, Any], images_per_s_core: float, *, images: int, qps: int, node_gb: float, node_cores: int,
         import_cores: int, scalar_bytes: float, usable: float, efficiency: float) -> dict[str, Any]:
    """One scenario: shards by memory, replicas by CPU per search, the HTTP tier, the import and the storage."""
    n = search["n"]
    row_bytes = search["milvus_rss_mb"] * 2**20 / n  # what a loaded query node holds per row (idle server included)
    rows_per_node = int(node_gb * GIB * usable / (row_bytes + scalar_bytes))
    shards = math.ceil(images / rows_per_node)
    shard_rows = images / shards
    cpu_ms = search["milvus_cpu_ms_per_search"] * shard_rows / n  # one shard's share of a query
    replica_qps = node_cores * efficiency * 1000 / cpu_ms  # every shard sees every query: a replica set answers this many
    replicas = math.ceil(qps / replica_qps)
    service_cores = math.ceil(qps * search["service_cpu_ms_per_search"] / 1000 / efficiency)
    build_core_s = 2 * images / index_rate(search)  # the build had both cores of the measuring machine
    return {
        "scenario": f"{images / 1e6:g}M images, {qps} QPS",
        "images": images,
        "target_qps": qps,
        "shards": shards,
        "replicas": replicas,
        "query_nodes": shards * replicas,
        "rows_per_shard_m": shard_rows / 1e6,
        "memory_per_query_node_gb": shard_rows * (row_bytes + scalar_bytes) / GIB,
        "qps_per_replica_set": replica_qps,
        "search_p50_ms_estimate": search["bare_p50_ms"] * shard_rows / n,
        "service_cores": service_cores,
        "object_storage_gb": search["disk_mb"] / 1024 * images / n,
        "embed_hours": images / (images_per_s_core * import_cores) / 3600,
        "insert_hours_one_writer": images / search["insert_rows_per_s"] / 3600,
        "index_build_core_hours": build_core_s / 3600,
        "index_build_hours_per_shard": build_core_s / shards / node_cores / 3600,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="", help="the cloud_search.json row (tag) to plan from")
    ap.add_argument("--images", type=int, default=30_000_000)
    ap.add_argument("--qps", type=int, action="append", default=[], help="peak queries per second to plan for (repeatable; default 500 and 2000)")
    ap.add_argument("--node-gb", type=float, default=64.0, help="memory of a query node")
    ap.add_argument("--node-cores", type=int, default=16, help="cores of a query node (and of an index node)")
    ap.add_argument("--import-cores", type=int, default=100, help="cores of the Ray cluster embedding the catalog")
    ap.add_argument("--scalar-bytes", type=float, default=250.0,
                    help="bytes per row the benchmark's rows lack (titles, URLs, attributes: ~150-300 B in docs/scaling.md)")
    ap.add_argument("--usable", type=float, default=0.7, help="share of a node's memory to fill (the rest: loads, compaction, growth)")
    ap.add_argument("--efficiency", type=float, default=0.7, help="share of a node's cores that turns into searches at peak")
    args = ap.parse_args()

    search = pick_search_row(json.loads((RESULTS_DIR / "cloud_search.json").read_text())["rows"], args.run)
    rate = import_rate(json.loads((RESULTS_DIR / "catalog_import.json").read_text())["rows"])
    options = {k: getattr(args, k) for k in ("images", "node_gb", "node_cores", "import_cores", "scalar_bytes", "usable", "efficiency")}
    rows = [plan(search, rate, qps=q, **options) for q in (args.qps or [500, 2000])]
    inputs = {
        "cloud_search_run": f"{search['tag']} ({search['measured_at']}, {search['index']})",
        "rows_measured": search["n"],
        "milvus_bytes_per_row": search["milvus_rss_mb"] * 2**20 / search["n"],
        "milvus_peak_bytes_per_row": (search.get("milvus_rss_peak_mb") or float("nan")) * 2**20 / search["n"],
        "milvus_cpu_ms_per_search": search["milvus_cpu_ms_per_search"],
        "service_cpu_ms_per_search": search["service_cpu_ms_per_search"],
        "bare_p50_ms": search["bare_p50_ms"],
        "insert_rows_per_s": search["insert_rows_per_s"],
        "index_rows_per_s": index_rate(search),
        "disk_mb": search["disk_mb"],
        "embed_images_per_s_per_core": rate,
    }
    notes = [
        "inputs (measured): " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in inputs.items()),
        "assumptions: " + ", ".join(f"{k} {v}" for k, v in options.items() if k != "images"),
        "shards = ceil(images / rows_per_node), rows_per_node = node_gb x usable / (milvus_bytes_per_row + scalar_bytes)",
        "qps_per_replica_set = node_cores x efficiency x 1000 / (milvus_cpu_ms_per_search x rows_per_shard / rows_measured); "
        "replicas = ceil(target_qps / qps_per_replica_set); query_nodes = shards x replicas (every shard answers every query)",
        "search_p50_ms_estimate = bare_p50_ms x rows_per_shard / rows_measured (one query on one shard, as measured; the shards run in parallel)",
        "service_cores = ceil(target_qps x service_cpu_ms_per_search / 1000 / efficiency) (shoplens serve replicas, one uvicorn worker per core)",
        "embed_hours = images / (embed_images_per_s_per_core x import_cores); insert_hours_one_writer = images / insert_rows_per_s (one "
        "writer into one 2-core standalone; Ray's parallel sinks divide it by the data nodes); index_build_core_hours = 2 "
        "cores x images / index_rows_per_s; object_storage_gb = disk_mb x images / rows_measured",
    ]
    write_result("scale_plan", rows, notes=notes, extra={"inputs": inputs, "assumptions": options})


if __name__ == "__main__":
    main()

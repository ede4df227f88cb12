"""benchmarks/scale_plan.py: the 30M plan is arithmetic on measured rows; its layouts must actually hold the
catalog in the memory planned for and serve the target QPS at the measured CPU per search."""

from __future__ import annotations

import pytest

from benchkit import load_benchmark

SEARCH = {  # the shape cloud_search.py writes for a 10M server run
    "backend": "server", "n": 10_000_000, "tag": "10m", "measured_at": "2026-12-07T18:00:00+00:00", "index": "IVF_SQ8 nlist=2048 nprobe=32",
    "milvus_rss_mb": 9000.0, "milvus_rss_peak_mb": 11000.0, "milvus_cpu_ms_per_search": 12.0, "service_cpu_ms_per_search": 2.5,
    "bare_p50_ms": 8.0, "insert_rows_per_s": 7500.0, "index_build_s": 1800.0, "disk_mb": 30000.0,
    "targets": [{"target": "recall@10 >= 0.95", "met": True}],
}
OPTIONS = {"images": 30_000_000, "node_gb": 64.0, "node_cores": 16, "import_cores": 100, "scalar_bytes": 250.0, "usable": 0.7, "efficiency": 0.7}


@pytest.fixture(scope="module")
def sp():  # type: ignore[no-untyped-def]
    return load_benchmark("scale_plan")


@pytest.mark.parametrize("qps", [50, 500, 2000, 20000])
@pytest.mark.parametrize("node_gb", [16.0, 64.0, 256.0])
def test_layout_holds_the_catalog_and_serves_the_target(sp, qps: int, node_gb: float) -> None:  # type: ignore[no-untyped-def]
    p = sp.plan(SEARCH, 12.0, **{**OPTIONS, "node_gb": node_gb}, qps=qps)
    assert p["query_nodes"] == p["shards"] * p["replicas"]
    assert p["rows_per_shard_m"] * p["shards"] == pytest.approx(30.0)
    assert p["memory_per_query_node_gb"] <= node_gb * OPTIONS["usable"] + 1e-9
    assert p["qps_per_replica_set"] * p["replicas"] >= qps
    assert p["qps_per_replica_set"] * (p["replicas"] - 1) < qps  # no replica more than needed
    fewer = sp.plan(SEARCH, 12.0, **{**OPTIONS, "node_gb": node_gb}, qps=qps * 2)
    assert fewer["replicas"] >= p["replicas"]


def test_costs_scale_with_the_measured_inputs(sp) -> None:  # type: ignore[no-untyped-def]
    base = sp.plan(SEARCH, 12.0, **OPTIONS, qps=500)
    dearer = sp.plan({**SEARCH, "milvus_cpu_ms_per_search": 24.0}, 12.0, **OPTIONS, qps=500)
    assert dearer["qps_per_replica_set"] == pytest.approx(base["qps_per_replica_set"] / 2)
    assert sp.plan(SEARCH, 24.0, **OPTIONS, qps=500)["embed_hours"] == pytest.approx(base["embed_hours"] / 2)
    bigger = sp.plan({**SEARCH, "milvus_rss_mb": 2 * SEARCH["milvus_rss_mb"]}, 12.0, **OPTIONS, qps=500)
    assert bigger["shards"] >= base["shards"]
    # 30M images at 12 images/s on 100 cores: 30e6 / 1200 s = 6.94 h
    assert base["embed_hours"] == pytest.approx(30e6 / 1200 / 3600)


def test_picks_the_10m_row_or_says_what_to_run(sp) -> None:  # type: ignore[no-untyped-def]
    small = {**SEARCH, "n": 1_000_000, "tag": "1m"}
    assert sp.pick_search_row([small, SEARCH])["tag"] == "10m"
    assert sp.pick_search_row([small, SEARCH], "1m")["tag"] == "1m"
    missed = {**SEARCH, "targets": [{"target": "recall@10 >= 0.95", "met": False}]}
    with pytest.raises(SystemExit, match="run benchmarks/cloud_search.py at 10M"):
        sp.pick_search_row([small, missed])
    with pytest.raises(SystemExit, match="no server row tagged"):
        sp.pick_search_row([SEARCH], "nope")
    with pytest.raises(SystemExit, match="1-worker"):
        sp.import_rate([{"workers": 2, "threads_per_worker": 1, "images_per_s": 20.0}])

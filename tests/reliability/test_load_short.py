"""The short version of benchmarks/load.py: bounded, loopback only, must stay error-free and flat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.slow
def test_short_mixed_load_has_only_intended_429s() -> None:
    from load import run_load

    res = run_load(clients=12, seconds=8, rows=2000, max_requests=400, rate_per_s=20, burst=20)
    kinds = {r["kind"]: r for r in res["rows"]}
    assert res["unexpected_errors"] == 0, res["unexpected_samples"]
    assert kinds["search"]["requests"] > 50 and kinds["write"]["requests"] > 3
    assert res["status"].get("greedy:429", 0) > 0, "the greedy client must be rate limited"
    assert res["rss_mb"]["growth_after_warmup"] < 150, res["rss_mb"]

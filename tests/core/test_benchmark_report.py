"""benchmarks/report.py handles any results file: a chart chosen from the columns, headlines from
the targets, wide tables kept readable, charts byte-stable and tied to their data."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchkit import load_benchmark


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    return load_benchmark("report")


# the shape benchmarks/soak.py writes: per-backend rows, and targets with a value per backend
SOAK = {
    "name": "soak",
    "rows": [
        {"backend": "lite", "clients": 8, "requests": 4000, "lost": 0, "duplicates": 0, "status_outside_restart": {"search:200": 10},
         "search_p50_ms": 3.1, "search_p99_ms": 9.5, "upsert_p50_ms": 5.0, "upsert_p99_ms": 20.0, "rss_before_mb": 300.0},
        {"backend": "server", "clients": 8, "requests": 5000, "lost": 1, "duplicates": 0, "status_outside_restart": {"search:200": 12},
         "search_p50_ms": 2.1, "search_p99_ms": 7.5, "upsert_p50_ms": 4.0, "upsert_p99_ms": 15.0, "rss_before_mb": 280.0},
    ],
    "targets": [{"metric": "lost", "target": 0, "lite": 0, "server": 1}, {"metric": "duplicates", "target": 0, "lite": 0, "server": 0}],
}


def test_an_unknown_benchmark_gets_a_latency_chart(report) -> None:  # type: ignore[no-untyped-def]
    chart = report.choose_chart("soak", SOAK["rows"])
    assert chart.kind == "bars" and chart.label == ("backend",)
    assert chart.panels == (("search_p50_ms", "search_p99_ms"),)
    data = report.chart_data(chart, SOAK["rows"])
    assert data == {"labels": ["lite", "server"], "panels": [{"search_p50_ms": [3.1, 2.1], "search_p99_ms": [9.5, 7.5]}]}


def test_fallbacks_without_latency_or_numbers(report) -> None:  # type: ignore[no-untyped-def]
    rows = [{"model": "a", "recall@10": 0.9, "size_mb": 3.0}, {"model": "b", "recall@10": 0.8, "size_mb": 4.0}]
    assert report.choose_chart("x", rows).panels == (("recall@10",),)
    assert report.choose_chart("x", [{"model": "a", "size_mb": 3.0}]).panels == (("size_mb",),)
    assert report.choose_chart("x", [{"model": "a", "ok": "yes"}]) is None
    stages = report.choose_chart("x", [{f"{s}_{p}_ms": 1.0 for s in ("a", "b", "c") for p in ("p50", "p99")}])
    assert stages.kind == "stages" and stages.panels == (("p50", "p99"),)


def test_headlines_per_run_targets_and_textual_targets(report) -> None:  # type: ignore[no-untyped-def]
    rows = report._collapse(report.headlines("soak", SOAK))
    assert ("lost (2 runs)", "0 to 1", "= 0", "**1 of 2 runs**") in rows
    assert ("duplicates (2 runs)", "0 to 0", "= 0", "2 of 2 runs") in rows
    assert report.meets(1.99, ">= 1.7x") is True and report.meets(120, "< 100 MB") is False
    assert report.meets(None, "<= 3") is None and report.meets(3, "about three") is None
    text_only = {"targets": [{"metric": "speedup", "target": ">= 2x"}], "rows": []}
    assert report._collapse(report.headlines("unknown", text_only)) == [("speedup", "", ">= 2x", "?")]


def test_wide_tables_are_transposed_or_split(report) -> None:  # type: ignore[no-untyped-def]
    wide = [{f"c{i}": i for i in range(15)} | {"name": n} for n in ("x", "y")]
    lines = report._table(wide, ("name",))
    assert lines[0] == "| column | x | y |" and len(lines) == 2 + 16
    many = [{f"c{i}": i for i in range(15)} | {"name": str(n)} for n in range(12)]
    tables = "\n".join(report._table(many, ("name",))).split("\n\n")
    assert len(tables) == 2 and all(t.startswith("| name |") for t in tables)


def test_charts_are_byte_stable_and_carry_their_data_hash(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    chart = report.choose_chart("soak", SOAK["rows"])
    data = report.chart_data(chart, SOAK["rows"])
    digest = report.data_hash(chart, data)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    report.draw(chart, data, "soak", a, digest)
    report.draw(chart, data, "soak", b, digest)
    assert a.read_bytes() == b.read_bytes()
    assert report.png_text(a) == {report.CHART_KEY: digest}  # no Software, no date


def test_committed_page_and_charts_are_current(report) -> None:  # type: ignore[no-untyped-def]
    page = report.render()
    assert report.DOC.read_text() == page.text
    assert not report.stale_charts(page)
    for path in page.charts:
        assert f"]({path.relative_to(report.DOC.parent).as_posix()})" in page.text

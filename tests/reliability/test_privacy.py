"""Vectors are derived from shoppers' photos: the service must not log them or keep query vectors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shoplens.cloud.app import create_app
from shoplens.contract import encode_vector
from shoplens.settings import Settings

ADMIN, DEVICE = "privacy-admin-key-0000", "privacy-device-key-000"
MODEL_ID = "privacy-16d-0123456789ab"


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_search_vectors_never_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture, level: int) -> None:
    rng = np.random.default_rng(1)
    app = create_app(Settings(milvus_uri=str(tmp_path / "c.db"), admin_keys=[ADMIN], device_keys=[DEVICE], collection="privacy"))
    catalog = [{"image_id": f"i{i}", "product_id": f"p{i}", "vector": encode_vector(rng.standard_normal(16), "f32")} for i in range(10)]
    query = rng.standard_normal(16)
    encoded = {enc: encode_vector(query, enc) for enc in ("f32", "f16", "i8")}
    with TestClient(app) as c:
        assert c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": catalog}, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        caplog.clear()
        with caplog.at_level(level):
            for enc, data in encoded.items():
                r = c.post("/v1/search", json={"model_id": MODEL_ID, "encoding": enc, "vector": data}, headers={"Authorization": f"Bearer {DEVICE}"})
                assert r.status_code == 200, r.text
                bad = c.post("/v1/search", json={"model_id": MODEL_ID, "encoding": enc, "vector": data[:-4]}, headers={"Authorization": f"Bearer {DEVICE}"})
                assert bad.status_code == 422
                assert data[:-4] not in bad.text, "an error must not echo the vector back"
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    for data in encoded.values():
        assert data[:24] not in text
    unit = query / np.linalg.norm(query)
    for v in unit[:4]:
        assert f"{v:.6f}"[:8] not in text, "raw vector components appear in the log"


def test_query_vectors_are_not_stored(tmp_path: Path) -> None:
    """After searches, the catalog holds exactly the catalog: no query rows, no extra collections."""
    rng = np.random.default_rng(2)
    app = create_app(Settings(milvus_uri=str(tmp_path / "c.db"), admin_keys=[ADMIN], device_keys=[DEVICE], collection="privacy"))
    catalog = [{"image_id": f"i{i}", "product_id": f"p{i}", "vector": encode_vector(rng.standard_normal(16), "f32")} for i in range(10)]
    h = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(app) as c:
        c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": catalog}, headers=h)
        before = (c.get("/v1/stats", headers=h).json()["rows"], [x["collection"] for x in c.get("/v1/catalog/collections", headers=h).json()])
        for _ in range(20):
            c.post("/v1/search", json={"model_id": MODEL_ID, "vector": encode_vector(rng.standard_normal(16), "i8")}, headers={"Authorization": f"Bearer {DEVICE}"})
        after = (c.get("/v1/stats", headers=h).json()["rows"], [x["collection"] for x in c.get("/v1/catalog/collections", headers=h).json()])
    assert before == after == (10, before[1])


def test_cors_is_closed_by_default(tmp_path: Path) -> None:
    """No browser page on another origin may call the API unless an operator opens CORS on purpose."""
    app = create_app(Settings(milvus_uri=str(tmp_path / "c.db"), admin_keys=[ADMIN], device_keys=[DEVICE], collection="privacy"))
    with TestClient(app) as c:
        pre = c.options("/v1/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        get = c.get("/v1/health", headers={"Origin": "https://evil.example"})
    for r in (pre, get):
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_query_log_is_opt_in_private_and_bounded(tmp_path: Path) -> None:
    import json
    import stat

    rng = np.random.default_rng(3)
    log = tmp_path / "logs" / "queries.jsonl"
    catalog = [{"image_id": f"i{i}", "product_id": f"p{i}", "vector": encode_vector(rng.standard_normal(16), "f32")} for i in range(10)]
    app = create_app(Settings(milvus_uri=str(tmp_path / "c.db"), admin_keys=[ADMIN], device_keys=[DEVICE], collection="privacy", query_log=log, query_log_max_bytes=2000))
    with TestClient(app) as c:
        c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": catalog}, headers={"Authorization": f"Bearer {ADMIN}"})
        sent = encode_vector(rng.standard_normal(16), "i8")
        r = c.post("/v1/search", json={"model_id": MODEL_ID, "vector": sent, "top_k": 3}, headers={"Authorization": f"Bearer {DEVICE}"})
        entry = json.loads(log.read_text().splitlines()[0])
        assert entry["vectors"] == [sent] and entry["products"] == [[h["product_id"] for h in r.json()["hits"]]]
        assert DEVICE not in log.read_text() and stat.S_IMODE(log.stat().st_mode) == 0o600
        for _ in range(20):
            c.post("/v1/search/batch", json={"model_id": MODEL_ID, "vectors": [sent, sent]}, headers={"Authorization": f"Bearer {DEVICE}"})
    assert log.stat().st_size <= 2000 and log.with_suffix(".jsonl.1").exists()  # rotated, bounded

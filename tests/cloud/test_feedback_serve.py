"""Confirmed sightings end to end: the SDK's ``confirm`` and offline queue against a real ``shoplens serve``
(uvicorn, Milvus Lite), and the ``shoplens sightings`` commands through ``--url`` and straight on Milvus."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN, ADMIN_H, DEVICE, DIM, MODEL, free_port, wait_ready
from servekit import start_serve, stop_serve

pytestmark = pytest.mark.slow

KEYS = [DEVICE, "device-key-sdk-2-abcdef", "device-key-sdk-3-abcdef"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _shelf_of(catalog: Any, p: int) -> np.ndarray:
    return _unit(catalog.centres[p] + 0.5 * _unit(np.random.default_rng(7).normal(size=DIM)))


def _seen(centre: np.ndarray, seed: int) -> np.ndarray:
    return _unit(centre + 0.08 * np.random.default_rng(seed).normal(size=DIM))


def _cli(*args: str) -> Any:
    from shoplens.cli import app

    result = CliRunner().invoke(app, ["sightings", *args])
    return result


def _cli_json(*args: str) -> list[dict[str, Any]]:
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_sdk_confirm_offline_queue_replay_and_cli_review_against_uvicorn(tmp_path: Path, catalog: Any) -> None:
    from shoplens.contract.feedback import FeedbackResult
    from shoplens.sdk.client import RetryPolicy, ShoplensClient
    from shoplens.sdk.offline_queue import DropReason, OfflineQueue, QueuedConfirmation

    env = dict(os.environ, SHOPLENS_MILVUS_URI=str(tmp_path / "served.db"), SHOPLENS_COLLECTION="served",
               SHOPLENS_ADMIN_KEYS=json.dumps([ADMIN]), SHOPLENS_DEVICE_KEYS=json.dumps(KEYS),
               SHOPLENS_CACHE_DIR=str(tmp_path / "cache"), SHOPLENS_FEEDBACK_REFERENCE_COS="0.5")
    shelf = _shelf_of(catalog, 5)
    queue = OfflineQueue(tmp_path / "queue.db")
    fast = RetryPolicy(max_retries=1, base_delay=0.01)

    # offline: the confirmation is queued (vector and product id only), nothing raised
    with ShoplensClient(f"http://127.0.0.1:{free_port()}", KEYS[0], retry=fast) as offline:
        queued = offline.confirm(_seen(shelf, 0), product_id="prod-5", model_id=MODEL, offline_queue=queue)
        gone = offline.confirm(_seen(shelf, 9), product_id="no-such-product", model_id=MODEL, offline_queue=queue)
    assert isinstance(queued, QueuedConfirmation) and isinstance(gone, QueuedConfirmation) and len(queue) == 2

    port = free_port()
    proc = start_serve(env, port, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        with ShoplensClient(url, ADMIN) as admin:
            admin.upsert_images(MODEL, catalog.images)
        with ShoplensClient(url, KEYS[0]) as device:
            outcomes = queue.replay(device)
            assert [type(o.response).__name__ if o.response else o.dropped for o in outcomes] == ["FeedbackResult", DropReason.REJECTED]
            assert outcomes[0].response.status == "pending" and "not_found" in outcomes[1].detail  # type: ignore[union-attr]
            assert len(queue) == 0
            # the answer to a replayed confirmation was lost: the same entry again is answered from the
            # service's idempotency store, not counted a second time
            queue.enqueue_confirmation(_seen(shelf, 0), product_id="prod-5", model_id=MODEL, idempotency_key=queued.id)
            assert [o.response for o in queue.replay(device)] == [outcomes[0].response]
        with ShoplensClient(url, ADMIN) as admin:
            assert [s.status.value for s in admin.sightings().sightings] == ["pending"]

        results = []
        for i in (1, 2):
            with ShoplensClient(url, KEYS[i]) as device:
                results.append(device.confirm(_seen(shelf, i), product_id="prod-5", model_id=MODEL, offline_queue=queue))
        assert all(isinstance(r, FeedbackResult) for r in results) and len(queue) == 0
        assert [r.status.value for r in results] == ["pending", "promoted"]  # type: ignore[union-attr]
        sighting = results[1].sighting_id  # type: ignore[union-attr]
        with ShoplensClient(url, KEYS[0]) as device:
            assert device.search(shelf, model_id=MODEL, encoding="f32").hits[0].image_id == sighting

        # the admin's review through the running service
        listed = _cli_json("list", "--url", url, "--admin-key", ADMIN, "--status", "promoted")
        assert [s["sighting_id"] for s in listed] == [sighting] and len(listed[0]["key_ids"]) == 3
        assert "vector" not in listed[0]
        assert _cli_json("remove", sighting, "--url", url, "--admin-key", ADMIN)[0]["status"] == "promoted"
        with ShoplensClient(url, KEYS[0]) as device:
            assert device.search(shelf, model_id=MODEL, encoding="f32").hits[0].image_id != sighting
        refused = _cli("approve", sighting, "--url", url, "--admin-key", ADMIN)
        assert refused.exit_code == 1 and "no sighting" in refused.output
        assert _cli_json("list", "--url", url, "--admin-key", ADMIN) == []
    finally:
        stop_serve(proc)
        queue.close()


def test_sightings_cli_straight_on_milvus(lite_settings, client_for, catalog, monkeypatch):
    """`shoplens sightings list|approve|reject` on the Lite file in SHOPLENS_MILVUS_URI, no service running."""
    from shoplens.settings import get_settings

    settings = lite_settings(device_keys=KEYS, feedback_reference_cos=0.5)
    c = client_for(settings)
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    shelf = _shelf_of(catalog, 3)
    far = _unit(-catalog.centres[3])  # opposite the product: held
    ids = []
    for i, v in enumerate((shelf, far)):
        r = c.post("/v1/feedback", json={"model_id": MODEL, "encoding": "f32", "vector": encode_vector(v, "f32"),
                                         "product_id": "prod-3"}, headers={"X-API-Key": KEYS[i]})
        assert r.status_code == 200, r.text
        ids.append(r.json()["sighting_id"])
    c.__exit__(None, None, None)  # a Lite file is locked to one process/user: release it for the CLI
    monkeypatch.setenv("SHOPLENS_MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("SHOPLENS_COLLECTION", settings.collection)
    get_settings.cache_clear()

    assert [(s["sighting_id"], s["status"]) for s in _cli_json("list", "--product", "prod-3")] == [(ids[0], "pending"), (ids[1], "held")]
    assert _cli_json("reject", ids[1])[0]["status"] == "held"
    promoted = _cli_json("approve", ids[0], "--model-id", MODEL)[0]
    assert promoted["status"] == "promoted" and promoted["sighting_id"].startswith("sighting-")
    assert [s["status"] for s in _cli_json("list")] == ["promoted"]
    bad = _cli("list", "--status", "maybe")
    assert bad.exit_code != 0 and "pending, held, promoted" in bad.output
    get_settings.cache_clear()

    again = client_for(settings)  # the direct promotion is in the catalog the service serves
    wait_ready(again)  # reopening the Lite file loads its collection first; until then searches get 503
    hits = again.post("/v1/search", json={"model_id": MODEL, "encoding": "f32", "vector": encode_vector(shelf, "f32")},
                      headers={"X-API-Key": KEYS[0]}).json()["hits"]
    assert hits[0]["image_id"] == promoted["sighting_id"]

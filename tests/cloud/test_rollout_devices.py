"""Issue 28, device side: the SDK reads /v1/models at its first search, warns when its embedder is
deprecated, stops at a retired one, and the offline queue drops a retired model's searches.

A real ``shoplens serve`` on 127.0.0.1 over a Lite file, the real MobileNetV1 bundle (wrapped) as
the app's embedder and real Grocery Store photos.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from shoplens.contract.codecs import encode_vector

from cloudkit import ADMIN, ADMIN_H, DEVICE, free_port
from servekit import start_serve, stop_serve

MOBILENET = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
NEXT = "next-1024d-abcdef012345"

pytestmark = pytest.mark.slow


def _images(model_dim: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, model_dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [{"image_id": f"i{i}", "product_id": f"p{i}", "vector": encode_vector(v, "f32"), "encoding": "f32"} for i, v in enumerate(x)]


def test_devices_follow_the_lifecycle_of_their_model(shared_dir: Path, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.sdk.client import ShoplensClient
    from shoplens.sdk.errors import ModelDeprecatedWarning, ModelRetiredError
    from shoplens.sdk.offline_queue import DropReason, OfflineQueue
    from shoplens.sdk.runtime import DeviceRuntime, Embedder
    from shoplens.sdk.wrap import wrap_tflite_embedder

    bundle = tmp_path / "mobilenet"
    wrap_tflite_embedder(shared_dir / "weights" / MOBILENET, bundle, name="mobilenet-v1-imagenet", link=True)
    app_model = Embedder(bundle).model_id
    photo = next(p for p in sorted((grocery_dir / "train").rglob("*.jpg")))
    env = dict(os.environ, SHOPLENS_MILVUS_URI=str(tmp_path / "rollout.db"), SHOPLENS_COLLECTION="rollout",
               SHOPLENS_ADMIN_KEYS=json.dumps([ADMIN]), SHOPLENS_DEVICE_KEYS=json.dumps([DEVICE]), SHOPLENS_CACHE_DIR=str(tmp_path / "cache"))
    port = free_port()
    proc = start_serve(env, port, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers=ADMIN_H, timeout=60) as admin:
            assert admin.put("/v1/catalog/images", json={"model_id": app_model, "images": _images(1024, 0)}).status_code == 200
            staged = admin.post("/v1/catalog/collections", json={"model_id": NEXT}).json()["collection"]
            assert admin.put("/v1/catalog/images", params={"collection": staged}, json={"model_id": NEXT, "images": _images(1024, 1)}).status_code == 200
            assert admin.post(f"/v1/catalog/collections/{staged}/activate").status_code == 200  # NEXT is current now
            r = admin.post(f"/v1/models/{app_model}/deprecate", json={"sunset": "2027-06-30"})
            assert r.status_code == 200, r.text

        runtime = DeviceRuntime.from_bundle(embedder=bundle)
        with ShoplensClient(url, DEVICE) as client, pytest.warns(ModelDeprecatedWarning) as caught:
            info = runtime.check_model(client)
            result, response = runtime.search(photo, client)
        assert info.status == "deprecated" and info.sunset == "2027-06-30"
        assert len(caught) == 1 and caught[0].message.current_model_id == NEXT and caught[0].message.sunset == "2027-06-30"
        assert response is not None and len(response.results) == len(result.objects)  # still served

        with ShoplensClient(url, DEVICE) as fresh, pytest.warns(ModelDeprecatedWarning) as from_headers:
            fresh.search_batch([result.objects[0].encoded], model_id=app_model)  # the Deprecation header alone
        assert from_headers[0].message.sunset == "Wed, 30 Jun 2027 23:59:59 GMT"

        queue = OfflineQueue(tmp_path / "queue.db")
        queue.enqueue([result.objects[0].vector], model_id=app_model)
        with httpx.Client(base_url=url, headers=ADMIN_H, timeout=60) as admin:
            assert admin.post(f"/v1/models/{app_model}/retire").status_code == 200
        with ShoplensClient(url, DEVICE) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no deprecation warning any more: it is retired
                with pytest.raises(ModelRetiredError):
                    runtime.search(photo, client)
            outcomes = queue.replay(client)
        assert [o.dropped for o in outcomes] == [DropReason.MODEL_RETIRED] and NEXT in outcomes[0].detail
        assert len(queue) == 0 and queue.dropped()[0][1] == "model_retired"
        queue.close()
    finally:
        stop_serve(proc)

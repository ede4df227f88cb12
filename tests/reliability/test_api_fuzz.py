"""Schemathesis over the service's own OpenAPI schema: every endpoint, with and without keys.

The property: no input makes the service answer 5xx, and every answer
matches the schema it publishes (status codes and bodies, errors included).
Runs against a real Milvus Lite file holding a small catalog, so searches
and catalog calls exercise real backend paths, not only validation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from shoplens.cloud.app import create_app
from shoplens.contract import encode_vector
from shoplens.settings import Settings

ADMIN, DEVICE = "fuzz-admin-key-000000", "fuzz-device-key-00000"
MODEL_ID = "fuzz-8d-0123456789ab"
_DB = Path(tempfile.mkdtemp(prefix="shoplens-fuzz-")) / "catalog.db"
APP = create_app(Settings(milvus_uri=str(_DB), admin_keys=[ADMIN], device_keys=[DEVICE], rate_limit_per_s=1e6, rate_limit_burst=10**6,
                          auth_fail_per_s=1e6, auth_fail_burst=10**6, collection="fuzz"))


def _seed() -> None:
    from fastapi.testclient import TestClient

    rng = np.random.default_rng(0)
    images = [{"image_id": f"img{i}", "product_id": f"p{i % 5}", "vector": encode_vector(rng.standard_normal(8), "f32"), "category": "c", "price": float(i)} for i in range(20)]
    with TestClient(APP) as c:
        r = c.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text


_seed()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _ready() -> None:
    """Fuzz a service that is up: schemathesis starts the app's lifespan once, at the first case, and the
    warm-up load of a Lite file reopened in this process can outlast ``LOAD_WAIT_S`` (a 503 + Retry-After,
    the contract's answer while loading). The property under test is the API's, not a cold start's."""
    from schemathesis.python import asgi as schemathesis_asgi

    client = schemathesis_asgi.get_client(APP)
    deadline = time.monotonic() + 120
    while client.get("/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, "the fuzzed service never became ready"
        time.sleep(0.5)

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.slow
@schema.parametrize()
@FUZZ
@pytest.mark.parametrize("key", [ADMIN, DEVICE, None], ids=["admin", "device", "no-key"])
def test_api_never_5xx_and_matches_its_schema(case, key) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()  # every rejection is JSON in the one error shape, with a machine-readable code
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    case.validate_response(response)

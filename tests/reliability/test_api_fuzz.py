"""Schemathesis over the service's own OpenAPI schema: every endpoint, with and without keys.

The property: no input makes the service answer 5xx, and every answer
matches the schema it publishes (status codes and bodies, errors included).
Runs against a real Milvus Lite file holding a small catalog, so searches
and catalog calls exercise real backend paths, not only validation.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from schemathesis.checks import positive_data_acceptance

from shoplens.cloud.app import create_app
from shoplens.contract import encode_vector
from shoplens.settings import Settings

ADMIN, DEVICE = "fuzz-admin-key-000000", "fuzz-device-key-00000"
MODEL_ID = "fuzz-8d-0123456789ab"
_DB = Path(tempfile.mkdtemp(prefix="shoplens-fuzz-")) / "catalog.db"
atexit.register(shutil.rmtree, _DB.parent, True)  # made at import, so also when these tests are deselected
APP = create_app(Settings(milvus_uri=str(_DB), admin_keys=[ADMIN], device_keys=[DEVICE], rate_limit_per_s=1e6, rate_limit_burst=10**6,
                          auth_fail_per_s=1e6, auth_fail_burst=10**6, collection="fuzz"))


class _LifespanRunElsewhere:
    """The service as schemathesis sees it: lifespan events are answered here, requests go to the app.

    schemathesis's pytest plugin ends an ASGI app's lifespan after every test and starts it again at
    the next, so the service would close and reopen its Lite file ~60 times in one process, a path a
    deployed service never takes (one lifespan per process). The module fixture runs the real lifespan
    once instead, the way uvicorn does."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


schema = schemathesis.openapi.from_asgi("/openapi.json", _LifespanRunElsewhere(APP))


@pytest.fixture(scope="module", autouse=True)
def _service() -> Iterator[None]:
    """One running service for the module, holding a small catalog; fuzzed once it is ready (while the
    collection loads the service answers the contract's 503, and the property under test is the API's)."""
    from fastapi.testclient import TestClient

    rng = np.random.default_rng(0)
    images = [{"image_id": f"img{i}", "product_id": f"p{i % 5}", "vector": encode_vector(rng.standard_normal(8), "f32"),
               "category": "c", "price": float(i)} for i in range(20)]
    with TestClient(APP) as client:
        r = client.put("/v1/catalog/images", json={"model_id": MODEL_ID, "images": images},
                       headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 120
        while client.get("/v1/ready").status_code != 200:
            assert time.monotonic() < deadline, "the fuzzed service never became ready"
            time.sleep(0.5)
        yield

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
    # A schema-valid body can still be refused with the contract's 422: a base64 vector of the wrong length for
    # the model, a filter naming no field. The schema cannot say that, so schemathesis's "valid data is accepted"
    # check is left out; every other check (status codes, bodies, headers) runs.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])

"""Auth, rate limits, body caps and the one error shape, on a Milvus Lite file."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi import FastAPI

from shoplens.contract.schemas import ErrorResponse

from cloudkit import ADMIN, ADMIN_H, DEVICE, DEVICE_H, DIM, MODEL, free_port, query


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    ErrorResponse.model_validate(body)  # the contract's one shape
    assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def served(lite_settings, client_for, catalog):
    c = client_for(lite_settings())
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    return c


def test_missing_unknown_and_malformed_keys_are_401(served):
    body = query(np.ones(DIM))
    err = assert_error(served.post("/v1/search", json=body), 401, "unauthenticated")
    assert "API key" in err["message"]
    assert served.post("/v1/search", json=body).headers["www-authenticate"] == "Bearer"
    assert_error(served.post("/v1/search", json=body, headers={"X-API-Key": "nope"}), 401, "unauthenticated")
    assert_error(served.post("/v1/search", json=body, headers={"Authorization": f"Basic {DEVICE}"}), 401,
                 "unauthenticated")
    assert_error(served.post("/v1/search", json=body, headers={"Authorization": f"Bearer {DEVICE}x"}), 401,
                 "unauthenticated")


def test_roles_device_searches_admin_writes(served, catalog):
    body = query(catalog.centres[0])
    assert served.post("/v1/search", json=body, headers={"Authorization": f"Bearer {DEVICE}"}).status_code == 200
    assert served.post("/v1/search", json=body, headers={"X-API-Key": ADMIN}).status_code == 200
    assert_error(served.put("/v1/catalog/images", json=catalog.upsert_body(), headers=DEVICE_H), 403, "forbidden")
    assert_error(served.delete("/v1/catalog/images/img-0-0", headers=DEVICE_H), 403, "forbidden")
    assert_error(served.delete("/v1/catalog/products/prod-0", headers=DEVICE_H), 403, "forbidden")
    assert_error(served.get("/v1/stats", headers=DEVICE_H), 403, "forbidden")
    assert_error(served.post("/v1/catalog/collections", json={"model_id": MODEL}, headers=DEVICE_H), 403, "forbidden")
    assert served.get("/v1/catalog/products/prod-0", headers=DEVICE_H).status_code == 200


def test_public_search_is_opt_in_and_no_admin_key_means_no_writes(lite_settings, client_for, catalog):
    c = client_for(lite_settings(public_search=True, admin_keys=[], device_keys=[]))
    err = assert_error(c.put("/v1/catalog/images", json=catalog.upsert_body()), 403, "forbidden")
    assert "SHOPLENS_ADMIN_KEYS" in err["message"]
    # anonymous search is allowed (404: nothing indexed yet, not 401)
    assert_error(c.post("/v1/search", json=query(catalog.centres[0])), 404, "not_found")
    assert_error(c.post("/v1/search", json=query(catalog.centres[0]), headers={"X-API-Key": "wrong"}), 401,
                 "unauthenticated")


def test_rate_limit_is_per_key_with_retry_after(lite_settings, client_for, catalog):
    c = client_for(lite_settings(rate_limit_per_s=0.5, rate_limit_burst=3))
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    body = query(catalog.centres[0])
    for _ in range(3):
        assert c.post("/v1/search", json=body, headers=DEVICE_H).status_code == 200
    r = c.post("/v1/search", json=body, headers=DEVICE_H)
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    # the admin key has its own bucket (one token left after the upsert)
    assert c.post("/v1/search", json=body, headers=ADMIN_H).status_code == 200
    # a batch costs one token per vector
    c2 = client_for(lite_settings(rate_limit_per_s=0.5, rate_limit_burst=3, milvus_uri=c.app.state.shoplens.settings.milvus_uri.replace("catalog.db", "other.db")))
    batch = {"model_id": MODEL, "vectors": [body["vector"]] * 4}
    assert_error(c2.post("/v1/search/batch", json=batch, headers=DEVICE_H), 429, "rate_limited")


def test_body_cap_by_content_length_and_by_streamed_size(lite_settings, client_for):
    c = client_for(lite_settings(max_body_bytes=2000))
    big = json.dumps({"model_id": MODEL, "vector": "A" * 5000}).encode()
    err = assert_error(c.post("/v1/search", content=big, headers={**DEVICE_H, "content-type": "application/json"}),
                       413, "payload_too_large")
    assert "2000" in err["message"]

    def chunks():  # no Content-Length: chunked transfer, counted while streaming
        for i in range(0, len(big), 500):
            yield big[i:i + 500]

    r = c.post("/v1/search", content=chunks(), headers={**DEVICE_H, "content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_framework_errors_use_the_one_shape(served):
    assert_error(served.get("/v1/nope"), 404, "not_found")
    r = served.delete("/v1/search", headers=DEVICE_H)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
    err = assert_error(served.post("/v1/search", content=b"{not json", headers={**DEVICE_H, "content-type": "application/json"}),
                       422, "validation_error")
    assert err["details"]
    err = assert_error(served.post("/v1/search", json={"vector": "x"}, headers=DEVICE_H), 422, "validation_error")
    assert "model_id" in err["message"]
    assert_error(served.post("/v1/search", json={**query(np.ones(DIM)), "extra": 1}, headers=DEVICE_H), 422,
                 "validation_error")


def test_unexpected_exceptions_are_500_without_internals(lite_settings):
    from fastapi.testclient import TestClient

    from shoplens.cloud.app import create_app

    app: FastAPI = create_app(lite_settings())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret /internal/path detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    err = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "/internal/path" not in r.text and "Traceback" not in r.text
    assert err["message"] == "internal error; see the service log"


def test_milvus_down_is_503_with_retry_after(lite_settings, client_for):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    c = client_for(lite_settings(milvus_uri=f"http://127.0.0.1:{port}", milvus_timeout_s=2.0))
    assert c.get("/v1/health").json()["status"] == "ok"  # liveness does not need Milvus
    r = c.get("/v1/ready")
    assert_error(r, 503, "backend_unavailable")
    assert int(r.headers["retry-after"]) > 0
    r = c.post("/v1/search", json=query(np.ones(DIM)), headers=DEVICE_H)
    assert_error(r, 503, "backend_unavailable")
    assert "retry-after" in r.headers and str(port) not in r.text
    assert time.monotonic() - t0 < 30


def test_metrics_count_routes_and_milvus_calls(served, catalog):
    served.post("/v1/search", json=query(catalog.centres[0]), headers=DEVICE_H)
    served.post("/v1/search", json=query(catalog.centres[0]), headers={"X-API-Key": "bad"})
    served.get("/v1/catalog/products/prod-1", headers=DEVICE_H)
    text = served.get("/metrics").text
    assert 'shoplens_http_requests_total{method="POST",route="/v1/search",status="200"} 1.0' in text
    assert 'shoplens_http_requests_total{method="POST",route="/v1/search",status="401"} 1.0' in text
    assert 'route="/v1/catalog/products/{product_id}"' in text and "prod-1" not in text
    assert 'shoplens_search_seconds_count{grouping="native",kind="single"} 1.0' in text
    assert 'shoplens_milvus_call_seconds_count{op="search"} 1.0' in text


def test_openapi_documents_every_route_and_the_error_model(served):
    spec = served.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/search/batch", "/v1/catalog/images", "/v1/catalog/images/{image_id}",
                 "/v1/catalog/products/{product_id}", "/v1/models", "/v1/stats", "/v1/health", "/v1/ready",
                 "/v1/catalog/collections", "/v1/catalog/collections/{name}/activate"):
        assert path in spec["paths"], path
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "409" in spec["paths"]["/v1/search"]["post"]["responses"]


def test_vectors_are_never_logged(lite_settings, client_for, catalog, caplog):
    caplog.set_level("DEBUG")
    c = client_for(lite_settings())
    c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H)
    c.post("/v1/search", json=query(catalog.centres[0], "f32"), headers=DEVICE_H)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert catalog.images[0]["vector"][:40] not in logged
    assert ADMIN not in logged and DEVICE not in logged


def test_lite_growth_warning_in_stats_and_log(lite_settings, client_for, catalog, caplog):
    caplog.set_level("WARNING", logger="shoplens.cloud")
    c = client_for(lite_settings(lite_warn_rows=len(catalog.images) - 1))
    assert c.put("/v1/catalog/images", json=catalog.upsert_body(), headers=ADMIN_H).status_code == 200
    warnings = c.get("/v1/stats", headers=ADMIN_H).json()["warnings"]
    assert len(warnings) == 1 and "SHOPLENS_MILVUS_URI=http://" in warnings[0]
    assert any("SHOPLENS_MILVUS_URI=http://" in r.getMessage() for r in caplog.records)
    assert "shoplens_catalog_rows 36.0" in c.get("/metrics").text


def test_405_allow_lists_every_method_of_the_path_and_control_chars_in_ids(served, catalog):
    r = served.request("OPTIONS", "/v1/catalog/products/prod-0", headers=DEVICE_H)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert_error(served.get("/v1/catalog/products/a%01b", headers=DEVICE_H), 404, "not_found")
    assert_error(served.delete("/v1/catalog/images/a%01b", headers=ADMIN_H), 404, "not_found")
    bad = dict(catalog.images[0], image_id="a\x01b")
    err = assert_error(served.put("/v1/catalog/images", json={"model_id": MODEL, "images": [bad]}, headers=ADMIN_H),
                       422, "validation_error")
    assert "image_id" in err["message"]
    # a body that is not UTF-8 JSON is a 422 like every other malformed body, not a bare 400
    r = served.post("/v1/search", content=b"\xff\xfe{", headers={**DEVICE_H, "content-type": "application/json"})
    assert_error(r, 422, "validation_error")
    # strict admin bodies: 0 is not a boolean
    assert_error(served.post("/v1/catalog/collections", json={"model_id": MODEL, "activate": 0}, headers=ADMIN_H),
                 422, "validation_error")

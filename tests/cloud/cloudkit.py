"""Shared constants and builders for the cloud tests (seeded, small, normalised vectors)."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np

from shoplens.contract.codecs import encode_vector

DIM = 16
MODEL = "test-16d-0123456789ab"
MODEL_NEXT = "next-16d-abcdef012345"
ADMIN = "admin-key-0123456789"
DEVICE = "device-key-0123456789"
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
DEVICE_H = {"X-API-Key": DEVICE}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Catalog:
    """A small seeded catalog: ``n_products`` products x ``per_product`` images, clustered by product."""

    def __init__(self, n_products: int = 12, per_product: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(n_products, DIM))
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.images: list[dict[str, Any]] = []
        self.vectors: dict[str, np.ndarray] = {}
        for p in range(n_products):
            for j in range(per_product):
                v = self.centres[p] + 0.15 * rng.normal(size=DIM)
                v /= np.linalg.norm(v)
                image_id = f"img-{p}-{j}"
                self.vectors[image_id] = v
                self.images.append(
                    {
                        "image_id": image_id,
                        "product_id": f"prod-{p}",
                        "vector": encode_vector(v, "f32"),
                        "encoding": "f32",
                        "title": f"Product {p}",
                        "category": "shoes" if p % 2 == 0 else "bags",
                        "price": float(10 * p),
                        "currency": "EUR",
                        "image_url": f"https://cdn.example/{image_id}.jpg",
                        "attributes": {"colour": "red" if p % 3 == 0 else "blue", "size": p % 4},
                    }
                )

    def upsert_body(self, model_id: str = MODEL) -> dict[str, Any]:
        return {"model_id": model_id, "images": self.images}


def query(v: np.ndarray, encoding: str = "i8", **kw: Any) -> dict[str, Any]:
    return {"model_id": MODEL, "vector": encode_vector(v, encoding), "encoding": encoding, **kw}


def api_error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The contract error body of ``r`` (an httpx/TestClient response), after checking status and code."""
    from shoplens.contract.schemas import ErrorResponse

    assert r.status_code == status, r.text
    body = r.json()
    ErrorResponse.model_validate(body)
    assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


def wait_ready(c: Any, timeout_s: float = 60.0) -> None:
    """Poll /v1/ready until 200, as a deployment's readiness probe does after a start on an existing
    catalog (loading its collections can take seconds on a busy machine; meanwhile requests get 503)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        r = c.get("/v1/ready")
        if r.status_code == 200:
            return
        assert r.status_code == 503 and "retry-after" in r.headers and time.monotonic() < deadline, r.text
        time.sleep(0.2)

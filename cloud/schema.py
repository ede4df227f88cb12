"""The catalog collection: its fields, its index, and the row <-> contract mapping.

One row per catalog image. Every collection is bound to one embedder model id
(recorded in the collection properties, with dim and metric), because vectors
of two embedders are not comparable. The index is declared at create time:
a late ``create_index`` on a large Lite collection blocked for minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from shoplens.contract.codecs import decode_vector
from shoplens.contract.errors import VectorError
from shoplens.contract.schemas import CatalogImage, ProductHit
from shoplens.contract.urls import ImageUrlError, check_image_url, safe_image_url

from shoplens.cloud.store_errors import InvalidRequest
from shoplens.cloud.filters import NO_PRICE, has_control

METRIC = "COSINE"
PK = "image_id"
VECTOR = "vector"
#: the scalar fields returned with every hit (never the vector: it is large and private)
OUTPUT_FIELDS = ["product_id", "title", "category", "price", "currency", "image_url", "attributes", "created_at"]

PROP_MODEL_ID = "shoplens.model_id"
PROP_DIM = "shoplens.dim"
PROP_METRIC = "shoplens.metric"
PROP_ALIAS = "shoplens.alias"
PROP_STORAGE = "shoplens.vector_storage"

#: vector storage -> (Milvus field type, numpy dtype of rows and query vectors)
STORAGE_TYPES: dict[str, tuple[DataType, type[np.floating[Any]]]] = {
    "f32": (DataType.FLOAT_VECTOR, np.float32),
    "f16": (DataType.FLOAT16_VECTOR, np.float16),
}

_NAME_SAFE = re.compile(r"[^A-Za-z0-9_]")


def collection_name(alias: str, model_id: str) -> str:
    """A fresh physical name for ``model_id`` behind ``alias`` (ms timestamp keeps rebuilds distinct)."""
    return f"{alias}__{_NAME_SAFE.sub('_', model_id)}__{time.time_ns() // 1_000_000}"


def build_schema(dim: int, storage: str = "f32") -> Any:
    """Fields of the catalog collection.

    price -1 means "no price" (2.3 servers lack nullable fields); VARCHAR lengths
    are bytes, so they are 4x the contract's character limits (UTF-8 worst case).
    ``storage`` f16 keeps vectors as FLOAT16_VECTOR (half the memory; unit vectors
    lose ~1e-3 of cosine, far below the i8 wire codec's error).
    """
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field(PK, DataType.VARCHAR, is_primary=True, max_length=512)
    s.add_field("product_id", DataType.VARCHAR, max_length=512)
    s.add_field(VECTOR, STORAGE_TYPES[storage][0], dim=dim)
    s.add_field("category", DataType.VARCHAR, max_length=512)
    s.add_field("title", DataType.VARCHAR, max_length=2048)
    s.add_field("price", DataType.DOUBLE)
    s.add_field("currency", DataType.VARCHAR, max_length=32)
    s.add_field("image_url", DataType.VARCHAR, max_length=8192)
    s.add_field("attributes", DataType.JSON)
    s.add_field("created_at", DataType.INT64)
    return s


def build_index_params(client: MilvusClient, *, lite: bool, index_type: str, params: dict[str, Any]) -> Any:
    """Lite only has AUTOINDEX (declared HNSW parameters are not kept); servers get the configured index."""
    ip = client.prepare_index_params()
    if lite:
        ip.add_index(VECTOR, index_type="AUTOINDEX", metric_type=METRIC)
    else:
        ip.add_index(VECTOR, index_type=index_type, metric_type=METRIC, params=dict(params))
    return ip


def _epoch_ms(value: datetime | None) -> int:
    if value is None:
        return time.time_ns() // 1_000_000
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def as_stored(vectors: np.ndarray, storage: str) -> list[Any]:
    """Vectors in the form pymilvus sends for the field type (float lists for f32, numpy rows for f16)."""
    if storage == "f32":
        return np.asarray(vectors, np.float32).tolist()
    dtype = STORAGE_TYPES[storage][1]
    return list(np.asarray(vectors, dtype))


def image_to_row(image: CatalogImage, dim: int, index: int, storage: str = "f32") -> dict[str, Any]:
    """Decode and check the image's vector (contract codec) and build the Milvus row.

    Ids and the category are looked up by expression later, so they must be
    expressible: control characters (other than tab/newline/CR) are refused here.
    """
    for field in ("image_id", "product_id", "category"):
        if has_control(getattr(image, field)):
            raise InvalidRequest(f"images[{index}].{field} must not contain control characters",
                details={"index": index, "field": field},
            )
    try:
        vector = decode_vector(image.vector, image.encoding, dim)
    except VectorError as exc:
        raise VectorError(f"images[{index}] ({image.image_id}): {exc.message}", code=exc.code) from None
    return {
        PK: image.image_id,
        "product_id": image.product_id,
        VECTOR: as_stored(vector[None, :], storage)[0],
        "category": image.category,
        "title": image.title,
        "price": NO_PRICE if image.price is None else float(image.price),
        "currency": image.currency,
        "image_url": image.image_url,
        "attributes": dict(image.attributes),
        "created_at": _epoch_ms(image.created_at),
    }


def require_allowed_image_urls(images: Sequence[CatalogImage], *, allow_http: bool) -> None:
    """Refuse the whole upsert (422, nothing written) if an image_url is http:// and the service
    takes https:// only. The contract already refused every other bad URL; whether plain http
    is acceptable is this deployment's choice (``allow_http_image_urls``), so it is checked here."""
    for i, image in enumerate(images):
        field = f"images[{i}].image_url"
        try:
            check_image_url(image.image_url, allow_http=allow_http, field=field)
        except ImageUrlError as exc:
            raise InvalidRequest(str(exc), details={"index": i, "field": "image_url"}) from None


def hit_id(hit: dict[str, Any]) -> str:
    """The primary key of a search hit: Lite names it ``image_id``, servers ``id``."""
    if PK in hit:
        return str(hit[PK])
    if "id" in hit:
        return str(hit["id"])
    return str(hit.get("entity", {}).get(PK, ""))


def _iso_from_ms(value: Any) -> str:
    """A stored epoch-ms as ISO 8601; "" for a value no date can hold (a row Milvus Lite recovered
    garbled from a write torn by kill -9 was seen with such values: it must not turn a read into a 500)."""
    try:
        return datetime.fromtimestamp(int(value or 0) / 1000, tz=timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError, TypeError):
        return ""


def _price(value: Any) -> float | None:
    if value is None or float(value) < 0:
        return None
    return float(value)


def row_to_hit(image_id: str, score: float, entity: dict[str, Any]) -> ProductHit:
    return ProductHit(
        product_id=str(entity.get("product_id", "")),
        score=float(score),
        image_id=image_id,
        title=str(entity.get("title", "")),
        category=str(entity.get("category", "")),
        price=_price(entity.get("price")),
        currency=str(entity.get("currency", "")),
        image_url=safe_image_url(entity.get("image_url")),  # rows stored before the URL rule may hold paths
        attributes=dict(entity.get("attributes") or {}),
    )


def row_to_image_info(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as returned by GET /v1/catalog/products/{id} (no vector)."""
    return {
        "image_id": str(row.get(PK) or row.get("id")),
        "product_id": row.get("product_id", ""),
        "title": row.get("title", ""),
        "category": row.get("category", ""),
        "price": _price(row.get("price")),
        "currency": row.get("currency", ""),
        "image_url": safe_image_url(row.get("image_url")),
        "attributes": dict(row.get("attributes") or {}),
        "created_at": _iso_from_ms(row.get("created_at")),
    }

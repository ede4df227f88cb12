"""Request and response bodies of the search API, shared by the service and the SDK.

Limits live here too (top_k, vectors per request, upsert batch), so a client
can validate before it spends a round trip and the server enforces the same
numbers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shoplens.contract.codecs import Encoding
from shoplens.contract.errors import ErrorCode
from shoplens.contract.model_id import MODEL_ID_PATTERN
from shoplens.contract.storable import unstorable
from shoplens.contract.urls import ACCEPTED as IMAGE_URL_ACCEPTED
from shoplens.contract.urls import SCHEMA_PATTERN as IMAGE_URL_SCHEMA_PATTERN
from shoplens.contract.urls import check_image_url, safe_image_url

MAX_TOP_K = 100
MAX_BATCH_VECTORS = 16
MAX_UPSERT_IMAGES = 1000
MAX_ATTRIBUTE_FILTERS = 16
#: image and product ids: 1-128 characters, no control characters (they must survive logs,
#: URLs and Milvus filter expressions unchanged)
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"

AttributeValue = str | int | float | bool


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Refuse what JSON parses but Milvus cannot hold (lone surrogates, NaN/inf, huge ints): a 422, not a 500."""
        problem = unstorable(data)
        if problem:
            raise ValueError(problem)
        return data


class SearchFilters(_Body):
    """Catalog filters; an unknown field is an error, never silently ignored."""

    category_in: list[str] | None = Field(default=None, max_length=100, description="keep these categories only")
    price_min: float | None = Field(default=None, ge=0)
    price_max: float | None = Field(default=None, ge=0)
    attributes: dict[str, AttributeValue] | None = Field(
        default=None, max_length=MAX_ATTRIBUTE_FILTERS, description="attribute equals value, all must hold"
    )


class _DeviceVectors(_Body):
    """What every body carrying a phone's vector(s) starts with: which embedder made them, and how they travel."""

    model_id: str = Field(pattern=MODEL_ID_PATTERN, description="the embedder that produced the vector(s)")
    encoding: Encoding = Field(default=Encoding.I8, description="wire encoding of the vector(s)")


class _SearchOptions(_DeviceVectors):
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="distinct products to return")
    filters: SearchFilters | None = None
    min_score: float | None = Field(default=None, ge=-1, le=1, description="drop hits with a lower cosine")


class SearchRequest(_SearchOptions):
    vector: str = Field(description="base64 of the encoded, L2-normalised vector")


class BatchSearchRequest(_SearchOptions):
    vectors: list[str] = Field(min_length=1, max_length=MAX_BATCH_VECTORS, description="one per detected object")


class FeedbackRequest(_DeviceVectors):
    """A confirmed sighting: the vector the phone already searched with, and the product the shopper tapped.

    Only the vector travels (never the photo); the service keeps it as a candidate reference
    of ``product_id`` (docs/cloud.md, "Confirmed sightings")."""

    vector: str = Field(description="base64 of the encoded, L2-normalised vector that was searched")
    product_id: str = Field(pattern=ID_PATTERN, description="the product the shopper confirmed")


class StoredImage(BaseModel):
    """What the service returns about a stored catalog image (never its vector)."""

    product_id: str
    image_id: str
    title: str = ""
    category: str = ""
    price: float | None = None
    currency: str = ""
    image_url: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("image_url", mode="before")
    @classmethod
    def _only_safe_urls(cls, value: object) -> str:
        """A remote URL or nothing: a client never renders a local path or a script URL, even from a
        service that stored one before the rule existed."""
        return safe_image_url(value)


class ProductHit(StoredImage):
    """A product in search results, by its best-matching image."""

    score: float = Field(description="cosine similarity of the best-matching image of this product")


GroupingPath = Literal["native", "overfetch"]


class SearchResponse(BaseModel):
    model_id: str
    hits: list[ProductHit]
    grouping: GroupingPath = Field(description="native: Milvus grouping search; overfetch: grouped by the service")
    took_ms: float


class ObjectResults(BaseModel):
    index: int = Field(description="position of the vector in the request")
    hits: list[ProductHit]


class BatchSearchResponse(BaseModel):
    model_id: str
    results: list[ObjectResults]
    grouping: GroupingPath
    took_ms: float


class CatalogImage(_Body):
    """One catalog image: the unit of upsert (idempotent by image_id)."""

    image_id: str = Field(pattern=ID_PATTERN, description="unique per image; upserts replace by this id")
    product_id: str = Field(pattern=ID_PATTERN, description="images of one product share it; results are grouped by it")
    vector: str = Field(description="base64 encoded vector")
    encoding: Encoding = Encoding.F32
    title: str = Field(default="", max_length=512)
    category: str = Field(default="", max_length=128)
    price: float | None = Field(default=None, ge=0)
    currency: str = Field(default="", max_length=8)
    image_url: str = Field(
        default="", max_length=2048, description=f"sent to every device that gets this product: {IMAGE_URL_ACCEPTED}",
        # the published schema states the rule for API clients and fuzzers; the validator below enforces it
        json_schema_extra={"pattern": IMAGE_URL_SCHEMA_PATTERN},
    )
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_validator("image_url")
    @classmethod
    def _image_url_is_remote(cls, value: str) -> str:
        """Local paths, file:/javascript:/data: URLs and UNC paths must never be stored (contract/urls.py)."""
        return check_image_url(value, allow_http=True)


class UpsertRequest(_Body):
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    images: list[CatalogImage] = Field(min_length=1, max_length=MAX_UPSERT_IMAGES)


class UpsertResponse(BaseModel):
    upserted: int
    model_id: str


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    """The one error shape every endpoint returns."""

    error: ErrorDetail

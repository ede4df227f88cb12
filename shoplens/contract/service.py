"""Response bodies of the service's catalog, admin and ops endpoints, shared by the service and the SDK.

Search bodies live in :mod:`shoplens.contract.schemas`; these are the rest, so
both sides of every endpoint are typed by one definition.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shoplens import __version__
from shoplens.contract.model_id import MODEL_ID_PATTERN
from shoplens.contract.schemas import StoredImage


class Health(BaseModel):
    status: str = "ok"
    version: str = __version__


class Ready(BaseModel):
    status: str
    backend: str = Field(description="lite or server")
    server_version: str
    grouping: str = Field(description="how search results are grouped by product on this backend")


class ModelInfo(BaseModel):
    model_id: str
    dim: int
    metric: str
    collection: str
    active: bool = Field(description="true for the current model (what new apps should use)")
    status: str = Field(default="current", description="current, supported, deprecated (served until its sunset) or retired (410)")
    sunset: str | None = Field(default=None, description="deprecated models: the date (YYYY-MM-DD) they will be retired")
    bundle_url: str | None = Field(default=None, description="where apps get this model's bundle, if the operator said")


class ModelChange(BaseModel):
    """A lifecycle change of one model id (admin): ``POST /v1/models/{model_id}/{promote|support|deprecate|retire}``."""

    model_config = ConfigDict(extra="forbid")
    sunset: str | None = Field(default=None, description="deprecate: the date (YYYY-MM-DD) the model will be retired")
    bundle_url: str | None = Field(default=None, max_length=2048, description="where apps download this model's bundle")


class Models(BaseModel):
    alias: str
    models: list[ModelInfo]


class Stats(BaseModel):
    alias: str
    backend: str
    server_version: str
    grouping: str
    model_id: str | None
    collection: str | None
    vector_storage: str | None = Field(default=None, description="f32 or f16: how the served collection stores vectors")
    rows: int
    segments: int | None = Field(default=None, description="sealed segments of the served collection loaded for search "
                                 "(servers; Milvus Lite does not report them): each search visits every one")
    warnings: list[str]


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    activate: bool = Field(default=False, description="serve it now (alias swap); otherwise build it, then activate")


class CollectionInfo(BaseModel):
    collection: str
    model_id: str
    dim: int
    vector_storage: str = "f32"
    active: bool


class DeleteResult(BaseModel):
    deleted: int


class Flushed(BaseModel):
    collection: str
    rows: int


class ImageInfo(StoredImage):
    """One stored catalog image as ``GET /v1/catalog/products/{id}`` returns it."""

    created_at: str = Field(description="ISO 8601, UTC (empty when the stored value is not a date)")


class ProductImages(BaseModel):
    product_id: str
    model_id: str
    images: list[ImageInfo]

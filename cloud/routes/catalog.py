"""Catalog writes and reads by id: upsert, flush, delete, and one product's images."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request

from shoplens.contract.errors import ErrorCode
from shoplens.contract.schemas import UpsertRequest, UpsertResponse
from shoplens.contract.service import DeleteResult, Flushed, ProductImages

from shoplens.cloud.auth import Principal
from shoplens.cloud.errors import ApiError
from shoplens.cloud.schema import require_allowed_image_urls
from shoplens.cloud.state import ServiceState, check_model, require_admin, require_search, service_state
from shoplens.cloud.store import Binding

log = logging.getLogger("shoplens.cloud")
router = APIRouter(tags=["catalog"])


def _write_target(state: ServiceState, model_id: str, collection: str | None) -> Binding:
    """Where an upsert goes: a named (staging) collection, or the collection serving ``model_id``
    (while several models are served, the admin writes each model's vectors; the very first
    upsert creates the catalog and makes its model the current one)."""
    if collection:
        target = state.store.collection_binding(collection)
        check_model(target, model_id, f"collection {collection!r}")
        return target
    if not state.store.models():
        with state.create_lock:  # two first upserts must not create two collections
            if not state.store.models(refresh=True):
                return state.store.create_collection(model_id, activate=True)
    return state.store.route(model_id)[0]


@router.put("/v1/catalog/images", response_model=UpsertResponse)
def upsert_images(
    body: UpsertRequest,
    request: Request,
    collection: str | None = Query(
        default=None, description="write into this (staging) collection instead of the served one; see reindex"
    ),
    _: Principal = Depends(require_admin),
) -> UpsertResponse:
    """Insert or replace images by image_id (idempotent). The first upsert creates the collection
    for the request's model_id and binds the alias to it."""
    state = service_state(request)
    require_allowed_image_urls(body.images, allow_http=state.settings.allow_http_image_urls)
    target = _write_target(state, body.model_id, collection)
    n = state.store.upsert(target, body.images)
    state.flusher.note_write(target.collection, n)
    if state.store.lite and not collection and not state.lite_warned:
        warning = state.lite_warning(state.store.count(target))
        if warning:
            log.warning(warning)
            state.lite_warned = True
    return UpsertResponse(upserted=n, model_id=target.model_id)


@router.post("/v1/catalog/flush", response_model=Flushed)
def flush(
    request: Request,
    collection: str | None = Query(default=None, description="flush this (staging) collection instead of the served one"),
    _: Principal = Depends(require_admin),
) -> Flushed:
    """Seal recent writes so they get indexed at once, e.g. at the end of a bulk import (the service
    also flushes by itself; docs/cloud.md, 'Automatic flush')."""
    state = service_state(request)
    target = state.store.collection_binding(collection) if collection else state.store.require_binding()
    for binding in [target] if collection else _every_model(state):
        state.store.flush(binding)
        state.flusher.note_flushed(binding.collection)
    return Flushed(collection=target.collection, rows=state.store.count(target))


def _every_model(state: ServiceState) -> list[Binding]:
    """The collections of every registered model (deletes and flushes reach all of them)."""
    return state.store.served_bindings() or [state.store.require_binding()]


@router.delete("/v1/catalog/images/{image_id}", response_model=DeleteResult)
def delete_image(image_id: str, request: Request, _: Principal = Depends(require_admin)) -> DeleteResult:
    state = service_state(request)
    found = False
    for binding in _every_model(state):
        if state.store.delete_image(binding, image_id):
            found = True
            state.flusher.note_write(binding.collection, 1)
    if not found:
        raise ApiError(ErrorCode.NOT_FOUND, f"no image {image_id!r} in the catalog")
    return DeleteResult(deleted=1)


@router.delete("/v1/catalog/products/{product_id}", response_model=DeleteResult)
def delete_product(product_id: str, request: Request, _: Principal = Depends(require_admin)) -> DeleteResult:
    state = service_state(request)
    deleted = 0
    for binding in _every_model(state):  # one product, one count: the most images any model held
        n = state.store.delete_product(binding, product_id)
        state.flusher.note_write(binding.collection, n)
        deleted = max(deleted, n)
    if deleted == 0:
        raise ApiError(ErrorCode.NOT_FOUND, f"no product {product_id!r} in the catalog")
    return DeleteResult(deleted=deleted)


@router.get("/v1/catalog/products/{product_id}", response_model=ProductImages)
def get_product(product_id: str, request: Request, _: Principal = Depends(require_search)) -> ProductImages:
    store = service_state(request).store
    binding = store.require_binding()
    images = store.product_images(binding, product_id)
    if not images:
        raise ApiError(ErrorCode.NOT_FOUND, f"no product {product_id!r} in the catalog")
    return ProductImages(product_id=product_id, model_id=binding.model_id, images=images)

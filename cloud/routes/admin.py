"""Collections behind the alias: list, create (staging), activate (atomic swap), drop."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from shoplens.contract.errors import ErrorCode
from shoplens.contract.service import CollectionInfo, CreateCollection, DeleteResult, ModelChange, ModelInfo
from shoplens.contract.urls import ImageUrlError, check_image_url

from shoplens.cloud.auth import Principal
from shoplens.cloud.errors import ApiError
from shoplens.cloud.registry import MODEL_ACTIONS
from shoplens.cloud.lifecycle import model_info
from shoplens.cloud.state import require_admin, service_state

router = APIRouter(tags=["admin"])


@router.get("/v1/catalog/collections", response_model=list[CollectionInfo])
def list_collections(request: Request, _: Principal = Depends(require_admin)) -> list[CollectionInfo]:
    return [CollectionInfo(**c) for c in service_state(request).store.collections()]


@router.post("/v1/catalog/collections", response_model=CollectionInfo, status_code=201)
def create_collection(body: CreateCollection, request: Request, _: Principal = Depends(require_admin)) -> CollectionInfo:
    """A new empty collection bound to ``model_id`` (dim from the id). It is served at once if
    ``activate`` or if nothing is served yet; otherwise fill it with
    ``PUT /v1/catalog/images?collection=...`` and activate it."""
    state = service_state(request)
    with state.create_lock:
        b = state.store.create_collection(body.model_id, activate=body.activate)
    current = state.store.binding(refresh=True)
    return CollectionInfo(collection=b.collection, model_id=b.model_id, dim=b.dim, vector_storage=b.storage,
                          active=current is not None and current.collection == b.collection)


@router.post("/v1/catalog/collections/{name}/activate", response_model=CollectionInfo)
def activate_collection(
    name: str,
    request: Request,
    promote: bool = Query(default=True, description="make its model the current one; false: serve it beside the current one"),
    _: Principal = Depends(require_admin),
) -> CollectionInfo:
    """Serve this collection for its model id (alias swaps, atomic for readers). Models served before
    stay served (the previous current one as supported) until they are retired."""
    store = service_state(request).store
    b = store.serve(name, promote=promote)
    current = store.current_model()
    return CollectionInfo(collection=b.collection, model_id=b.model_id, dim=b.dim, vector_storage=b.storage,
                          active=current is not None and current.model_id == b.model_id)


@router.delete("/v1/catalog/collections/{name}", response_model=DeleteResult)
def drop_collection(name: str, request: Request, _: Principal = Depends(require_admin)) -> DeleteResult:
    """Drop a collection that no alias serves (e.g. the old model after a reindex); ``name`` may be an
    alias, and is resolved first: the served collection is refused under any of its names."""
    state = service_state(request)
    state.flusher.note_flushed(state.store.drop_collection(name))
    return DeleteResult(deleted=1)


# ---- model lifecycle -------------------------------------------------------------------------

@router.post("/v1/models/{model_id}/{action}", response_model=ModelInfo)
def change_model(model_id: str, action: str, request: Request, body: ModelChange | None = None,
                 _: Principal = Depends(require_admin)) -> ModelInfo:
    """``promote`` (make it current: what new apps should use; the previous current stays supported),
    ``support`` (serve it again, e.g. re-activate a retired model while its collection exists),
    ``deprecate`` (needs ``sunset``: answers carry Deprecation and Sunset headers) or ``retire``
    (410 Gone naming the current model). The current model can only be replaced by promoting another."""
    status = MODEL_ACTIONS.get(action)
    if status is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no model action {action!r}; one of {', '.join(MODEL_ACTIONS)}")
    body = body or ModelChange()
    if body.bundle_url:
        try:
            check_image_url(body.bundle_url, allow_http=False, field="bundle_url")
        except ImageUrlError as exc:
            raise ApiError(ErrorCode.VALIDATION_ERROR, str(exc)) from None
    store = service_state(request).store
    return model_info(store, store.set_status(model_id, status, sunset=body.sunset, bundle_url=body.bundle_url))

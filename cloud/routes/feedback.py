"""Confirmed sightings: devices confirm a result (``POST /v1/feedback``); admins review what came of it.

The rule and the storage live in ``cloud/sightings.py``; this module is the HTTP edge only.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from shoplens.contract.codecs import decode_vector
from shoplens.contract.feedback import FeedbackResult, SightingInfo, SightingList, SightingStatus
from shoplens.contract.model_id import MODEL_ID_PATTERN
from shoplens.contract.schemas import FeedbackRequest

from shoplens.cloud.auth import Principal
from shoplens.cloud.sightings import review_binding
from shoplens.cloud.state import require_admin, require_feedback, service_state

router = APIRouter(tags=["feedback"])

_MODEL = Query(default=None, pattern=MODEL_ID_PATTERN, description="the model id whose sightings (default: the current model)")


@router.post("/v1/feedback", response_model=FeedbackResult)
def feedback(body: FeedbackRequest, request: Request, principal: Principal = Depends(require_feedback)) -> FeedbackResult:
    """The shopper confirmed ``product_id`` for the vector this device searched with: kept as a candidate
    reference of the product, promoted into the catalog when enough device keys agree (or an admin
    approves). 404 for a product the model's catalog does not hold; model and vector errors as for search."""
    state = service_state(request)
    binding = state.store.route(body.model_id)[0]  # 409 unknown model, 410 retired, like a search
    vector = decode_vector(body.vector, body.encoding, binding.dim)  # the search request's decoding and checks
    return state.sightings.confirm(binding, body.product_id, vector, principal.key_id)


@router.get("/v1/catalog/sightings", response_model=SightingList)
def list_sightings(
    request: Request,
    model_id: str | None = _MODEL,
    product_id: str | None = Query(default=None, max_length=128, description="one product's sightings only"),
    status: SightingStatus | None = Query(default=None, description="pending, held or promoted only"),
    _: Principal = Depends(require_admin),
) -> SightingList:
    """Confirmations (pending, held) and promoted sightings, oldest first, with the hashes of the keys
    behind each and how close each is to its product's own images (never a vector)."""
    state = service_state(request)
    binding = review_binding(state.store, model_id)
    return SightingList(model_id=binding.model_id,
                        sightings=state.sightings.list(binding, product_id=product_id, status=status))


@router.post("/v1/catalog/sightings/{sighting_id}/approve", response_model=SightingInfo)
def approve_sighting(sighting_id: str, request: Request, model_id: str | None = _MODEL,
                     _: Principal = Depends(require_admin)) -> SightingInfo:
    """Promote a pending or held confirmation into the catalog as it is (422 at the product's cap)."""
    state = service_state(request)
    return state.sightings.approve(review_binding(state.store, model_id), sighting_id)


@router.post("/v1/catalog/sightings/{sighting_id}/reject", response_model=SightingInfo)
def reject_sighting(sighting_id: str, request: Request, model_id: str | None = _MODEL,
                    _: Principal = Depends(require_admin)) -> SightingInfo:
    """Delete a pending or held confirmation."""
    state = service_state(request)
    return state.sightings.reject(review_binding(state.store, model_id), sighting_id)


@router.delete("/v1/catalog/sightings/{sighting_id}", response_model=SightingInfo)
def remove_sighting(sighting_id: str, request: Request, model_id: str | None = _MODEL,
                    _: Principal = Depends(require_admin)) -> SightingInfo:
    """Delete a sighting; a promoted one is deleted from the catalog too (and so from search)."""
    state = service_state(request)
    return state.sightings.remove(review_binding(state.store, model_id), sighting_id)

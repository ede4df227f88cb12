"""Answers of the confirmed-sightings endpoints (``POST /v1/feedback`` and the admin's review).

The request body, :class:`~shoplens.contract.schemas.FeedbackRequest`, sits beside the search
request it shares its vector fields with; these are the answers, shared by the service and
the SDK so both sides of every endpoint are typed by one definition.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field


class SightingStatus(str, Enum):
    """Where a confirmation stands (docs/cloud.md, "Confirmed sightings")."""

    PENDING = "pending"  # near the product's catalog images; waits for agreeing confirmations of other keys
    HELD = "held"  # far from the product's catalog images (or its group's centroid is): an admin decides
    PROMOTED = "promoted"  # a catalog row of the product: searched like its catalog images


class FeedbackResult(BaseModel):
    """What a device learns about its confirmation (nothing about other devices' keys)."""

    model_id: str
    product_id: str
    status: SightingStatus
    sighting_id: str = Field(description="the confirmation's id; after a promotion, the catalog row's image_id")


class SightingInfo(BaseModel):
    """One confirmation (pending, held) or one promoted sighting, as an admin reviews it (never its vector)."""

    sighting_id: str
    product_id: str
    model_id: str
    status: SightingStatus
    key_ids: list[str] = Field(description="hashes of the device keys behind it (never the keys)")
    created_at: str = Field(description="ISO 8601, UTC")
    reference_cos: float | None = Field(
        default=None, description="best cosine to one of the product's own catalog images now (None: the product has none)")


class SightingList(BaseModel):
    model_id: str
    sightings: list[SightingInfo]

"""Catalog administration through a running service's admin API, for ``shoplens reindex --url``,
``shoplens models --url`` and ``shoplens sightings --url``.

``ServiceAdmin`` has the methods of the cloud's ``CatalogAdmin`` protocol
(``shoplens.cloud.reindex``), so the one re-index algorithm runs over HTTP as
well as straight on Milvus, with the SDK's client (typed answers, retries and
idempotency keys) as the only HTTP client.
"""

from __future__ import annotations

from shoplens.contract.feedback import SightingInfo, SightingStatus
from shoplens.contract.schemas import CatalogImage
from shoplens.contract.service import ModelInfo

from shoplens.sdk.client import ShoplensClient


class ServiceAdmin:
    """The re-index steps as admin API calls on ``client`` (an admin key)."""

    def __init__(self, client: ShoplensClient) -> None:
        self.client = client

    def served(self) -> tuple[str, str] | None:
        active = next((c for c in self.client.collections() if c.active), None)
        return (active.collection, active.model_id) if active else None

    def create(self, model_id: str) -> str:
        return self.client.create_collection(model_id, activate=False).collection

    def upsert(self, collection: str, model_id: str, images: list[CatalogImage]) -> int:
        return self.client.upsert_images(model_id, images, collection=collection).upserted

    def count(self, collection: str) -> int:
        return self.client.flush(collection).rows

    def serve(self, collection: str, promote: bool) -> None:
        self.client.activate_collection(collection, promote=promote)

    def retire(self, model_id: str) -> None:
        self.change(model_id, "retire")

    def drop(self, collection: str) -> None:
        self.client.drop_collection(collection)

    def models(self) -> list[ModelInfo]:
        return self.client.models().models

    def change(self, model_id: str, action: str, *, sunset: str | None = None, bundle_url: str | None = None) -> ModelInfo:
        return self.client.change_model(model_id, action, sunset=sunset, bundle_url=bundle_url)

    # ---- confirmed sightings: the same methods as the cloud's ``SightingAdmin`` (straight on Milvus) ----

    def sightings(self, model_id: str | None = None, product_id: str | None = None,
                  status: SightingStatus | None = None) -> list[SightingInfo]:
        return self.client.sightings(model_id=model_id, product_id=product_id, status=status).sightings

    def approve_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.client.approve_sighting(sighting_id, model_id=model_id)

    def reject_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.client.reject_sighting(sighting_id, model_id=model_id)

    def remove_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.client.remove_sighting(sighting_id, model_id=model_id)

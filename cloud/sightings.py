"""Confirmed sightings: a shopper's confirmation becomes a catalog reference, by a rule, or by an admin.

The device sends the vector it already searched with and the product it confirmed (never a
photo). :class:`Sightings` stores it (``sighting_store.py``), applies the rule
(``sighting_rule.py``) and, on promotion, writes a catalog row of the product, so the normal
grouped search covers it: a product with many references is still one hit. The row copies the
product's catalog metadata (title, price, ... and the admin's own ``image_url``: a hit shows
the product's picture, never anything from a device) and carries the attribute
``shoplens_sighting: true``. An admin lists, approves, rejects and removes; removing a promoted
sighting deletes its catalog row too. docs/cloud.md, "Confirmed sightings", is the reference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoplens.contract.codecs import Encoding, encode_vector
from shoplens.contract.feedback import FeedbackResult, SightingInfo, SightingStatus
from shoplens.contract.schemas import CatalogImage

from shoplens.cloud import schema as cs
from shoplens.cloud.binding import Binding
from shoplens.cloud.filters import eq_expr, has_control
from shoplens.cloud.metrics import Metrics
from shoplens.cloud.sighting_rule import Decision, Rule, Verdict, Vote, decide, is_anchored, reference_cos
from shoplens.cloud.sighting_store import SightingRecord, SightingStore, candidate_id, now_ms, sighting_image_id
from shoplens.cloud.store import MAX_IMAGES_PER_PRODUCT, CatalogStore
from shoplens.cloud.store_errors import InvalidRequest, NotFound

log = logging.getLogger("shoplens.cloud.sightings")

#: the catalog attribute that marks a row as a promoted sighting (hits carry it; filters can name it)
SIGHTING_ATTRIBUTE = "shoplens_sighting"

OPEN = (SightingStatus.PENDING, SightingStatus.HELD)


@dataclass(frozen=True)
class Product:
    """A product's rows in one model's catalog: its own images (the anchors) and its promoted sightings."""

    images: list[dict[str, Any]]  # rows an admin wrote, with their vectors
    references: np.ndarray  # their unit vectors, one per row (shape (n, dim))
    promoted: int  # catalog rows of the product that are promoted sightings

    def nearest(self, vector: np.ndarray) -> dict[str, Any]:
        """The product image nearest ``vector``: the metadata a sighting row copies."""
        return self.images[int(np.argmax(self.references @ vector))]


def _unit_rows(rows: Sequence[dict[str, Any]], dim: int, storage: str) -> np.ndarray:
    """The rows' stored vectors as unit float32 rows (f16 collections hand back raw bytes)."""
    out = np.empty((len(rows), dim), np.float32)
    dtype = cs.STORAGE_TYPES[storage][1]
    for i, row in enumerate(rows):
        value = row[cs.VECTOR]
        if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (bytes, bytearray)):
            value = value[0]
        v = np.frombuffer(value, dtype) if isinstance(value, (bytes, bytearray)) else np.asarray(value)
        v = v.astype(np.float32)
        out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


class Sightings:
    """The confirmations of every served model: take one, promote, review (thread-safe within a process)."""

    def __init__(self, store: CatalogStore, rule: Rule, metrics: Metrics,
                 on_write: Callable[[str, int], None] = lambda collection, rows: None) -> None:
        self.store = store
        self.rule = rule
        self.metrics = metrics
        self.records = SightingStore(store)
        self._on_write = on_write  # the automatic flusher's note_write
        # one decision at a time: two confirmations of one product must not both promote the same group
        self._lock = threading.Lock()

    # ---- the catalog side ---------------------------------------------------------------------

    def product(self, binding: Binding, product_id: str) -> Product:
        """The product's rows in ``binding``'s collection; 404 when it has no image of its own there."""
        rows = [] if has_control(product_id) else self.store._on_collection("query", binding.collection, lambda c: c.query(
            binding.collection, filter=eq_expr("product_id", product_id), output_fields=[cs.PK, cs.VECTOR, *cs.OUTPUT_FIELDS],
            limit=MAX_IMAGES_PER_PRODUCT, consistency_level=self.store.settings.read_consistency))
        images = [r for r in rows if not (r.get("attributes") or {}).get(SIGHTING_ATTRIBUTE)]
        if not images:
            raise NotFound(f"no product {product_id!r} in the catalog of model {binding.model_id!r}",
                           details={"product_id": product_id, "model_id": binding.model_id})
        return Product(images, _unit_rows(images, binding.dim, binding.storage), len(rows) - len(images))

    def _promote(self, binding: Binding, product: Product, sources: Sequence[SightingRecord], vector: np.ndarray,
                 via: str) -> str:
        """Write ``vector`` as a catalog row of the product, record it as promoted, consume ``sources``.

        The order makes a crash at any point harmless: the image id comes from the sources, so a
        promotion retried (the sources are still open until the last step) rewrites the same row."""
        first = sources[0]
        image_id = sighting_image_id(binding.model_id, first.product_id, sources)
        template = cs.row_to_image_info(product.nearest(vector))
        image = CatalogImage(
            image_id=image_id, product_id=first.product_id, vector=encode_vector(vector, Encoding.F32), encoding=Encoding.F32,
            title=template["title"], category=template["category"], price=template["price"],
            currency=template["currency"], image_url=template["image_url"],
            attributes={**template["attributes"], SIGHTING_ATTRIBUTE: True},
        )
        self._on_write(binding.collection, self.store.upsert(binding, [image]))
        keys = tuple(sorted({k for s in sources for k in s.key_ids}))
        self.records.put(binding, [SightingRecord(image_id, first.product_id, binding.model_id, SightingStatus.PROMOTED,
                                                  keys, now_ms(), np.asarray(vector, np.float32))])
        self.records.delete(binding, [s.sighting_id for s in sources])
        self.metrics.sightings_promoted.labels(model_id=binding.model_id, via=via).inc()
        log.info("sighting %s of product %s promoted (%s, %d key(s))", image_id, first.product_id, via, len(keys))
        return image_id

    # ---- devices ------------------------------------------------------------------------------

    def confirm(self, binding: Binding, product_id: str, vector: np.ndarray, key_id: str) -> FeedbackResult:
        """Keep a device's confirmation of ``product_id`` and apply the rule to the product's open ones."""
        with self._lock:
            product = self.product(binding, product_id)
            anchored = is_anchored(vector, product.references, self.rule) and self._ranks(binding, product_id, vector)
            status = SightingStatus.PENDING if anchored else SightingStatus.HELD
            record = SightingRecord(candidate_id(product_id, key_id), product_id, binding.model_id, status, (key_id,),
                                    now_ms(), np.asarray(vector, np.float32))
            self.records.put(binding, [record])
            sighting_id = record.sighting_id
            if status is SightingStatus.PENDING:
                status, sighting_id = self._settle(binding, product, record)
        self.metrics.feedback.labels(model_id=binding.model_id, outcome=status.value).inc()
        return FeedbackResult(model_id=binding.model_id, product_id=product_id, status=status, sighting_id=sighting_id)

    def _ranks(self, binding: Binding, product_id: str, vector: np.ndarray) -> bool:
        """Whether ``product_id`` is among the vector's ``reference_rank`` best products in the catalog (grouped search)."""
        hits, _ = self.store.search(binding, np.asarray(vector, np.float32)[None, :], top_k=self.rule.reference_rank)
        return any(h.product_id == product_id for h in hits[0])

    def _settle(self, binding: Binding, product: Product, record: SightingRecord) -> tuple[SightingStatus, str]:
        """Apply the rule to the product's pending confirmations; what became of ``record``."""
        pending = {r.sighting_id: r for r in self.records.query(binding, product_id=record.product_id,
                                                                 status=SightingStatus.PENDING)}
        pending[record.sighting_id] = record  # read-your-write, whatever the read consistency
        votes = [Vote(r.sighting_id, r.key_ids[0], r.vector) for r in pending.values()]
        decision: Decision = decide(votes, product.references, product.promoted, self.rule)
        members = [pending[v.sighting_id] for v in decision.members]
        mine = record.sighting_id in {m.sighting_id for m in members}
        if decision.verdict is Verdict.PROMOTE:
            assert decision.centroid is not None
            image_id = self._promote(binding, product, members, decision.centroid, "agreement")
            return (SightingStatus.PROMOTED, image_id) if mine else (SightingStatus.PENDING, record.sighting_id)
        if decision.verdict is Verdict.HOLD:
            self.records.put(binding, [m.with_status(SightingStatus.HELD) for m in members])
            log.info("%d agreeing confirmations of product %s held: their centroid is far from its images",
                     len(members), record.product_id)
            return (SightingStatus.HELD if mine else SightingStatus.PENDING), record.sighting_id
        if decision.verdict is Verdict.CAPPED:
            self.metrics.sightings_capped.labels(model_id=binding.model_id).inc()
        return SightingStatus.PENDING, record.sighting_id

    # ---- admins -------------------------------------------------------------------------------

    def _record(self, binding: Binding, sighting_id: str) -> SightingRecord:
        found = self.records.get(binding, sighting_id)
        if found is None:
            raise NotFound(f"no sighting {sighting_id!r} for model {binding.model_id!r}")
        return found

    def info(self, record: SightingRecord, product: Product | None) -> SightingInfo:
        return SightingInfo(
            sighting_id=record.sighting_id, product_id=record.product_id, model_id=record.model_id,
            status=record.status, key_ids=list(record.key_ids), created_at=cs._iso_from_ms(record.created_at),
            reference_cos=reference_cos(record.vector, product.references) if product is not None else None)

    def _product_or_none(self, binding: Binding, product_id: str) -> Product | None:
        try:
            return self.product(binding, product_id)
        except NotFound:
            return None

    def list(self, binding: Binding, *, product_id: str | None = None,
             status: SightingStatus | None = None) -> list[SightingInfo]:
        """Confirmations and promoted sightings, oldest first, with how close each is to its product now."""
        records = self.records.query(binding, product_id=product_id, status=status)
        products = {pid: self._product_or_none(binding, pid) for pid in {r.product_id for r in records}}
        return [self.info(r, products[r.product_id]) for r in records]

    def approve(self, binding: Binding, sighting_id: str) -> SightingInfo:
        """Promote an open confirmation as it is (an admin's word replaces the agreement of keys)."""
        with self._lock:
            record = self._record(binding, sighting_id)
            if record.status is SightingStatus.PROMOTED:
                raise InvalidRequest(f"sighting {sighting_id!r} is already promoted")
            product = self.product(binding, record.product_id)
            if product.promoted >= self.rule.cap:
                raise InvalidRequest(
                    f"product {record.product_id!r} holds {product.promoted} promoted sightings, its cap "
                    f"(SHOPLENS_FEEDBACK_MAX_SIGHTINGS={self.rule.cap}); remove one first",
                    details={"product_id": record.product_id, "promoted": product.promoted, "cap": self.rule.cap})
            image_id = self._promote(binding, product, [record], record.vector, "approval")
        self.metrics.sightings_reviewed.labels(action="approve").inc()
        return self.info(self._record(binding, image_id), product)

    def reject(self, binding: Binding, sighting_id: str) -> SightingInfo:
        """Delete an open confirmation (its key may confirm the product again later, and be judged again)."""
        with self._lock:
            record = self._record(binding, sighting_id)
            if record.status not in OPEN:
                raise InvalidRequest(f"sighting {sighting_id!r} is promoted; remove it (DELETE) to take it out of the catalog")
            self.records.delete(binding, [sighting_id])
        self.metrics.sightings_reviewed.labels(action="reject").inc()
        return self.info(record, None)

    def remove(self, binding: Binding, sighting_id: str) -> SightingInfo:
        """Delete a sighting of any status; a promoted one leaves the catalog (and search) too."""
        with self._lock:
            record = self._record(binding, sighting_id)
            if record.status is SightingStatus.PROMOTED and self.store.delete_image(binding, sighting_id):
                self._on_write(binding.collection, 1)
            self.records.delete(binding, [sighting_id])
        self.metrics.sightings_reviewed.labels(action="remove").inc()
        return self.info(record, None)


def review_binding(store: CatalogStore, model_id: str | None) -> Binding:
    """The collection whose sightings an admin reviews: ``model_id``'s, or the current model's."""
    return store.model_binding(model_id) if model_id else store.require_binding()


class SightingAdmin:
    """The admin's review straight on Milvus (``shoplens sightings`` without ``--url``: a server, or a Lite
    file no service holds), with the methods of the SDK's ``ServiceAdmin`` that go through the API."""

    def __init__(self, store: CatalogStore, rule: Rule) -> None:
        self.store = store
        # no service, so no automatic flusher: a write is sealed at once
        self.review = Sightings(store, rule, Metrics(), on_write=lambda collection, rows: store.flush_collection(collection))

    def _binding(self, model_id: str | None) -> Binding:
        return review_binding(self.store, model_id)

    def sightings(self, model_id: str | None = None, product_id: str | None = None,
                  status: SightingStatus | None = None) -> list[SightingInfo]:
        return self.review.list(self._binding(model_id), product_id=product_id, status=status)

    def approve_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.review.approve(self._binding(model_id), sighting_id)

    def reject_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.review.reject(self._binding(model_id), sighting_id)

    def remove_sighting(self, sighting_id: str, model_id: str | None = None) -> SightingInfo:
        return self.review.remove(self._binding(model_id), sighting_id)

"""Prometheus metrics, one registry per app so tests (and a benchmark) can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request counts/latency per route, search latency, Milvus call latency, catalog size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shoplens_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "shoplens_http_request_seconds", "HTTP request latency", ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.search_seconds = Histogram(
            "shoplens_search_seconds", "search latency inside the service (decode + Milvus + grouping)",
            ["kind", "grouping"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.milvus_seconds = Histogram(
            "shoplens_milvus_call_seconds", "latency of Milvus calls", ["op"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.model_requests = Counter(
            "shoplens_model_requests_total", "searches per vector model id and outcome (current, supported, "
            "deprecated, model_mismatch = 409, model_retired = 410, ...)", ["model_id", "outcome"], registry=self.registry,
        )
        self.model_search_seconds = Histogram(
            "shoplens_model_search_seconds", "search latency inside the service per model id", ["model_id"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.unflushed_rows = Gauge(
            "shoplens_unflushed_rows", "rows written (upserted or deleted) and not yet sealed by a flush",
            registry=self.registry,
        )
        self.catalog_rows = Gauge(
            "shoplens_catalog_rows", "rows in the served collection (updated by /v1/stats)", registry=self.registry
        )

        # confirmed sightings (cloud/sightings.py): model_id labels are registered model ids only
        self.feedback = Counter(
            "shoplens_feedback_total", "confirmations received, by what became of them at once (pending, held, promoted)",
            ["model_id", "outcome"], registry=self.registry,
        )
        self.sightings_promoted = Counter(
            "shoplens_sightings_promoted_total", "sightings promoted into the catalog, by how (agreement of device keys, "
            "admin approval)", ["model_id", "via"], registry=self.registry,
        )
        self.sightings_capped = Counter(
            "shoplens_sightings_capped_total", "agreeing confirmations left pending because their product holds its cap "
            "of promoted sightings", ["model_id"], registry=self.registry,
        )
        self.sightings_reviewed = Counter(
            "shoplens_sightings_reviewed_total", "admin decisions on sightings (approve, reject, remove)", ["action"],
            registry=self.registry,
        )

    def observe_milvus(self, op: str, seconds: float) -> None:
        self.milvus_seconds.labels(op=op).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

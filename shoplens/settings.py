"""One settings object for every component, read from ``SHOPLENS_*`` env vars and ``.env``.

Defaults are chosen so a fresh checkout works with nothing set: a Milvus Lite
file in the cache dir, weights and data found beside the checkout.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the repository root when running from a checkout (editable install); None in a wheel
_HERE = Path(__file__).resolve().parent
REPO_ROOT: Path | None = _HERE.parent if (_HERE.parent / "pyproject.toml").is_file() else None


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shoplens"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPLENS_", env_file=".env", extra="ignore")

    milvus_uri: str = Field(
        default="",
        description="Milvus Lite file path (default: <cache_dir>/milvus/shoplens.db) or http(s)://host:19530",
    )
    milvus_token: SecretStr = Field(default=SecretStr(""), description="Milvus token (user:password or API key)")
    collection: str = Field(default="shoplens_catalog", description="collection alias the service searches")
    admin_keys: list[SecretStr] = Field(default_factory=list, description="keys allowed to write the catalog")
    device_keys: list[SecretStr] = Field(default_factory=list, description="keys allowed to search")
    public_search: bool = Field(default=False, description="allow search without a device key (explicit opt-in)")
    allow_http_image_urls: bool = Field(
        default=False,
        description="accept plain http:// image_url on upsert (default https:// only: phones load these URLs)",
    )
    # --- cloud service knobs; defaults suit a small demo on one machine ---
    milvus_timeout_s: float = Field(default=10.0, gt=0, description="connect / call timeout towards Milvus")
    index_type: str = Field(default="HNSW", description="vector index on Milvus servers (Lite always uses AUTOINDEX)")
    index_params: dict[str, Any] = Field(
        default_factory=lambda: {"M": 16, "efConstruction": 128}, description="build parameters of index_type"
    )
    search_params: dict[str, Any] = Field(default_factory=lambda: {"ef": 64}, description="per-query index params")
    vector_storage: Literal["f32", "f16"] = Field(
        default="f32",
        description="how new collections store vectors: f16 halves vector memory and disk where the backend "
        "supports FLOAT16_VECTOR (probed once; otherwise f32, with the reason in /v1/stats)",
    )
    overfetch_factor: int = Field(default=4, ge=1, le=20, description="hits fetched per requested product without native grouping")
    rate_limit_per_s: float = Field(default=50.0, gt=0, description="token-bucket refill per API key (requests/s)")
    rate_limit_burst: int = Field(default=100, ge=1, description="token-bucket size per API key")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0, description="request body cap (413 above it)")
    lite_warn_rows: int = Field(
        default=20_000,
        ge=1,
        description="warn when a Milvus Lite collection holds more rows than this (measured: HTTP p99 22 ms "
        "at 20k, 80 ms at 50k, 223 ms at 100k; benchmarks/results/cloud_search.json)",
    )
    segment_warn_count: int = Field(
        default=8,
        ge=1,
        description="warn when a server collection is spread over at least this many segments, with a median "
        "below segment_warn_rows rows (each search visits every segment; docs/cloud.md, 'Segment size')",
    )
    segment_warn_rows: int = Field(default=250_000, ge=1, description="see segment_warn_count")
    read_consistency: Literal["Session", "Strong", "Bounded", "Eventually"] = Field(
        default="Session",
        description="consistency of searches/queries: Session sees this process's own writes without "
        "Strong's wait for the next time tick (~200 ms on a Milvus server)",
    )
    binding_ttl_s: float = Field(default=2.0, ge=0, description="how long the alias->collection binding is cached")
    load_wait_s: float = Field(
        default=5.0, gt=0,
        description="how long a request waits for the collection to finish loading (first requests after a "
        "start) before it is answered 503 + Retry-After",
    )
    load_timeout_s: float = Field(
        default=30.0, gt=0,
        description="a collection load whose progress has not moved for this long is released and issued again "
        "once (then 503 + Retry-After); a load that keeps moving is waited for however long it takes",
    )
    flush_interval_s: float = Field(
        default=10.0, gt=0,
        description="seal written rows at most this many seconds after the first unflushed write (searches over "
        "unsealed rows are brute force; docs/cloud.md, 'Automatic flush')",
    )
    flush_rows: int = Field(default=5000, ge=1, description="seal at once when this many rows are unflushed")
    shutdown_grace_s: float = Field(
        default=10.0, gt=0,
        description="on SIGTERM, in-flight requests get this long to finish before connections are closed",
    )
    query_log: Path | None = Field(default=None, description="opt-in: append query vectors + returned product ids here (personal data; off by default)")
    query_log_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0, description="rotate the query log past this size")
    # --- abuse limits, proxies, shared limiter state, idempotency keys ---
    auth_fail_per_s: float = Field(default=1.0, gt=0, description="failed authentications refilled per client address per second")
    auth_fail_burst: int = Field(
        default=20, ge=1, description="failed authentications a client address may make before every keyed request gets 429"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses/networks whose X-Forwarded-For / X-Forwarded-Proto `shoplens serve` trusts; "
        "empty: proxy headers are ignored (the TCP peer is the client)",
    )
    shared_state_path: Path | None = Field(
        default=None,
        description="SQLite file holding the rate-limit buckets, shared by worker processes "
        "(`serve --workers N` sets it; unset: buckets in memory)",
    )
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="how long a write's Idempotency-Key replays its answer")
    idempotency_db: Path | None = Field(
        default=None,
        description="SQLite file of idempotency keys and stored answers "
        "(default: <cache_dir>/service/idempotency-<alias>-<hash of uri+alias>.db)",
    )
    # --- confirmed sightings (POST /v1/feedback); docs/cloud.md, "Confirmed sightings" ---
    feedback_confirmations: int = Field(
        default=3, ge=2,
        description="distinct device keys whose agreeing confirmations of a product promote their centroid into the "
        "catalog (at least 2: one key never promotes alone; a key's repeated confirmations count once)",
    )
    feedback_agree_cos: float = Field(
        default=0.8, gt=0, le=1,
        description="confirmations agree when each is at least this cosine from their centroid",
    )
    feedback_reference_cos: float = Field(
        default=0.7, ge=-1, le=1,
        description="a confirmation (and a centroid) must be at least this cosine from one of the product's own "
        "catalog images; farther ones are held for an admin's review (shipped embedder: a shelf photo sits at "
        "median 0.82 from its product's image, 0.55 from another category's; docs/cloud.md)",
    )
    feedback_reference_rank: int = Field(
        default=5, ge=1, le=50,
        description="a confirmation counts without review only if its product is among the vector's top N products "
        "in the catalog: unlike a cosine, a rank means the same for every model (a held-out embedder put wrong-product "
        "confirmations above feedback_reference_cos 99.9% of the time; benchmarks/embedder_transfer.py)",
    )
    feedback_max_sightings: int = Field(
        default=20, ge=1, description="promoted sightings a product may hold per model id (then confirmations wait)"
    )
    feedback_rate_per_s: float = Field(
        default=0.05, gt=0, description="confirmations refilled per device key per second (its own bucket, besides the request bucket)"
    )
    feedback_burst: int = Field(default=20, ge=1, description="confirmations a device key may send at once")
    weights_dir: Path | None = Field(default=None, description="where model weights are looked for first")
    data_dir: Path | None = Field(default=None, description="where datasets are looked for first")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="caches, converted models, Lite DB")
    offline: bool | None = Field(
        default=None, description="never try downloads; default: auto (true when no registry is reachable)"
    )

    def resolved_milvus_uri(self) -> str:
        if self.milvus_uri:
            return self.milvus_uri
        return str(self.cache_dir / "milvus" / "shoplens.db")

    @property
    def milvus_is_lite(self) -> bool:
        return not self.resolved_milvus_uri().startswith(("http://", "https://", "tcp://", "unix:"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()

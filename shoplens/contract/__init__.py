"""The device <-> cloud contract: codecs, model id, manifest, API bodies, error codes.

Pure Python + numpy + pydantic: importable on a phone-like runtime and in the
cloud service without torch or tensorflow. Both sides import these names; no
rule about the wire is written twice.
"""

from shoplens.contract.codecs import (
    Encoding,
    decode_batch,
    decode_vector,
    encode_vector,
    encoded_size,
    l2_normalize,
    parse_encoding,
    payload_size,
)
from shoplens.contract.errors import ErrorCode, ManifestError, ShoplensError, VectorError
from shoplens.contract.manifest import (
    ArtifactFormat,
    ArtifactManifest,
    BundleManifest,
    DetectorSpec,
    EmbedderSpec,
    InputSpec,
    ObjectChoice,
    OutputRole,
    OutputSpec,
    Precision,
    SourceSpec,
    Task,
    load_manifest,
    save_manifest,
    verify_bundle,
)
from shoplens.contract.model_id import compute_model_id, is_valid_model_id, sha256_file
from shoplens.contract.schemas import (
    MAX_BATCH_VECTORS,
    MAX_TOP_K,
    MAX_UPSERT_IMAGES,
    BatchSearchRequest,
    BatchSearchResponse,
    CatalogImage,
    ErrorResponse,
    ProductHit,
    SearchFilters,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
)

__all__ = [name for name in dir() if not name.startswith("_")]

"""The bundle manifest: everything a phone needs to run a converted model correctly.

A converted model is useless without its fine print: which tensor is the
input, in which layout, colour order and scaling, how the letterbox pads, how
to decode the outputs, which labels the class indices mean. The manifest
carries all of it, so the device SDK (and the Swift/Kotlin samples) are driven
by data instead of hard-coded constants, and a third-party model works if its
manifest is right.

One ``manifest.json`` per bundle directory; it lists the bundle's artifacts
(one per target x precision), each with its own I/O spec and sha256, and the
task-level facts they share (labels, embedding dim, model id, source weights).
The JSON Schema in ``manifest.schema.json`` is generated from these models
(``shoplens manifest schema``) and a test keeps the two identical.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoplens.contract.errors import ManifestError
from shoplens.contract.model_id import MODEL_ID_PATTERN, compute_model_id, sha256_file
from shoplens.contract.schemas import MAX_BATCH_VECTORS

SCHEMA_VERSION = 1
#: most boxes one photo may search: one batch request holds them and the whole photo
MAX_OBJECTS = MAX_BATCH_VECTORS - 1
MANIFEST_FILENAME = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False)


class Task(str, Enum):
    DETECTOR = "detector"
    EMBEDDER = "embedder"


class ArtifactFormat(str, Enum):
    TFLITE = "tflite"
    COREML = "coreml"  # an .mlpackage directory
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # full integer / static activations (TFLite) or 8-bit weights (CoreML)
    W8A32 = "w8a32"  # dynamic-range: int8 weights, float activations
    W8 = "w8"  # weight-only int8, dequantised at load


class Layout(str, Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"


class ColorOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


class ResizeMode(str, Enum):
    LETTERBOX = "letterbox"  # keep aspect, pad to the target with pad_value, centred
    STRETCH = "stretch"  # resize both sides to the target, aspect not kept
    CENTER_CROP = "center_crop"  # resize the short side, crop the centre


class TensorDType(str, Enum):
    UINT8 = "uint8"
    INT8 = "int8"
    FLOAT16 = "float16"
    FLOAT32 = "float32"
    INT32 = "int32"


class Quantization(_Strict):
    """Affine quantisation of a tensor: real = (q - zero_point) * scale."""

    scale: float = Field(gt=0)
    zero_point: int


class InputSpec(_Strict):
    """How to turn a decoded RGB uint8 photo into the model's input tensor.

    Per channel c: ``value = (pixel * scale - mean[c]) / std[c]``; then, if
    ``quantization`` is set, ``q = round(value / q.scale + q.zero_point)``
    clipped to ``dtype``, else a cast to ``dtype``. ImageNet normalisation that
    lives inside the graph shows here as scale 1, mean 0, std 1.
    """

    name: str
    shape: list[int] = Field(min_length=4, max_length=4)
    layout: Layout
    dtype: TensorDType
    color_order: ColorOrder = ColorOrder.RGB
    resize: ResizeMode
    pad_value: int = Field(default=114, ge=0, le=255, description="letterbox padding grey level")
    scale: float = Field(default=1.0, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], min_length=3, max_length=3)
    quantization: Quantization | None = None

    @model_validator(mode="after")
    def _check(self) -> "InputSpec":
        channels = self.shape[3] if self.layout is Layout.NHWC else self.shape[1]
        if channels != 3:
            raise ValueError(f"input must have 3 colour channels, shape {self.shape} ({self.layout.value}) has {channels}")
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"input shape must be positive, got {self.shape}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout is Layout.NHWC else self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout is Layout.NHWC else self.shape[3]


class OutputRole(str, Enum):
    EMBEDDING = "embedding"  # [1, dim]
    YOLO_RAW = "yolo_raw"  # [1, 4 + nc, N]: cx, cy, w, h then per-class scores
    BOXES = "boxes"  # NMS pipeline: [N, 4] cx, cy, w, h
    SCORES = "scores"  # NMS pipeline: [N, nc]


class OutputSpec(_Strict):
    name: str
    shape: list[int]
    dtype: TensorDType
    role: OutputRole
    quantization: Quantization | None = None


class BoxFormat(str, Enum):
    XYWH_CENTER = "xywh_center"
    XYXY = "xyxy"


class ObjectChoice(_Strict):
    """Which detections a device searches and how it crops them: the one object-choice rule.

    Why it lives in the detector's manifest: what a box means depends on the detector (COCO's
    ``person`` is the shopper's hand, not a product; how large a box must be to be the product
    depends on what the classes cover), so the rule travels with the detector, and the SDK,
    ``shoplens search``, ``shoplens index``, the demo, the browser page and the Swift/Kotlin
    samples all read these keys instead of carrying constants of their own. A manifest written
    before the rule existed gets these defaults, which ``benchmarks/detector_flow.py`` chose on
    the Grocery Store val photos (see docs/benchmarks.md).

    The rule: drop boxes whose label is in ``ignore_labels`` or whose area is under
    ``min_box_fraction`` of the photo; rank the rest by score x area; walk that ranking and keep a
    box unless it overlaps a box already kept by more than ``max_overlap`` of the smaller box's
    area, up to ``max_objects``; crop each with ``crop_margin`` of its size on each side. The whole
    photo is searched too when ``search_whole_photo`` (its results and the crops' are merged per
    product, best score wins), and always when no box is left.

    Why ``max_overlap`` measures the smaller box: a detector (COCO's above all) returns the same
    product several times, under two labels or as a part inside the whole (one apple of a pile, a
    label on a carton); those boxes have a small IoU with the whole but lie inside it, and each
    one would spend a slot of ``max_objects`` that another product in the photo needs.
    """

    min_box_fraction: float = Field(default=0.02, ge=0, le=1, description="ignore boxes smaller than this share of the photo area")
    max_objects: int = Field(default=4, ge=1, le=MAX_OBJECTS,
                             description="boxes searched per photo (one batch request; one slot is kept for the whole photo)")
    crop_margin: float = Field(default=0.10, ge=0, le=1, description="added on each side of a box, as a share of its width / height")
    ignore_labels: list[str] = Field(default_factory=lambda: ["person"], description="class names that are never the product")
    search_whole_photo: bool = Field(default=True, description="also search the whole photo and merge its results with the crops' per product")
    max_overlap: float = Field(default=0.1, ge=0, le=1,
                               description="skip a box that overlaps a box already kept by more than this share of the smaller box's area (1: keep overlapping boxes)")


class DetectorSpec(_Strict):
    """How to decode detections: box convention, label names, default thresholds, and which
    boxes a device searches (``object_choice``)."""

    class_names: list[str] = Field(min_length=1)
    box_format: BoxFormat = BoxFormat.XYWH_CENTER
    boxes_normalized: bool = Field(description="true: 0-1 of the model input; false: input pixels")
    conf_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=300, gt=0)
    object_choice: ObjectChoice = Field(default_factory=ObjectChoice)


class EmbedderSpec(_Strict):
    """The vector space an embedder produces; the cloud binds collections to model_id."""

    dim: int = Field(gt=0)
    metric: Literal["cosine"] = "cosine"
    normalization: Literal["l2"] = "l2"
    l2_in_graph: bool = Field(description="true: the output is already unit length")
    preprocessing: dict[str, Any] = Field(description="the canonical preprocessing hashed into model_id")
    model_id: str = Field(pattern=MODEL_ID_PATTERN)


class TrainingRecord(_Strict):
    """How the weights were trained, as their checkpoint records it (an ultralytics run, e.g. `shoplens detector train`)."""

    epochs: int = Field(ge=0, description="epochs run")
    seconds: float | None = Field(default=None, ge=0, description="wall time of the training epochs (ultralytics' own clock)")
    imgsz: int | None = Field(default=None, ge=1, description="training input size in pixels")
    data: str | None = Field(default=None, description="the training data as the run named it (a data.yaml path)")
    metrics: dict[str, float] = Field(default_factory=dict, description="validation metrics at the end of the run (its own val set)")
    finished_at: str | None = Field(default=None, description="ISO time the checkpoint was written")


class SourceSpec(_Strict):
    name: str = Field(description="architecture / registry name, e.g. yolov8n or resnet50v2-imagenet-s3")
    weights: str = Field(description="where the source weights came from (file name, enum, URL)")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    license: str | None = Field(default=None, description="the weights' licence as their source declares it (an Ultralytics "
                                "checkpoint's own 'license', a trunk's registry entry); an app that embeds the bundle "
                                "inherits it (docs/converters.md, Licence)")
    training: TrainingRecord | None = Field(default=None, description="how the weights were trained, when their checkpoint records "
                                            "the run (epochs, time, final val metrics); null for weights that do not say")


class ParitySummary(_Strict):
    """The converter's measured agreement with the PyTorch reference."""

    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float] = Field(default_factory=dict)
    report: str | None = Field(default=None, description="file name of the full report in the bundle")
    method: str = Field(default="", description="how it was measured (runtime, images)")


class ArtifactManifest(_Strict):
    file: str = Field(description="path relative to the bundle directory")
    format: ArtifactFormat
    precision: Precision
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file; for a directory (.mlpackage) of its sorted file list and contents")
    size_bytes: int = Field(ge=0)
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    parity: ParitySummary | None = None
    publishable: bool = Field(default=False, description="true only when the parity gate passed")
    notes: str = ""

    def output(self, role: OutputRole) -> OutputSpec:
        for out in self.outputs:
            if out.role is role:
                return out
        raise ManifestError(f"artifact {self.file} has no output with role {role.value!r}")


class BundleManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    task: Task
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    source: SourceSpec
    tools: dict[str, str] = Field(default_factory=dict, description="converter and runtime versions")
    detector: DetectorSpec | None = None
    embedder: EmbedderSpec | None = None
    artifacts: list[ArtifactManifest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "BundleManifest":
        if self.task is Task.DETECTOR and (self.detector is None or self.embedder is not None):
            raise ValueError("a detector bundle needs a 'detector' section and no 'embedder' section")
        if self.task is Task.EMBEDDER and (self.embedder is None or self.detector is not None):
            raise ValueError("an embedder bundle needs an 'embedder' section and no 'detector' section")
        files = [a.file for a in self.artifacts]
        if len(files) != len(set(files)):
            raise ValueError(f"artifact files must be unique, got {files}")
        for a in self.artifacts:
            if os.path.isabs(a.file) or ".." in Path(a.file).parts:
                raise ValueError(f"artifact file must be relative to the bundle, got {a.file!r}")
        if self.embedder is not None:
            expected = compute_model_id(
                name=self.source.name,
                weights_sha256=self.source.weights_sha256,
                preprocessing=self.embedder.preprocessing,
                dim=self.embedder.dim,
                normalization=self.embedder.normalization,
                metric=self.embedder.metric,
            )
            if self.embedder.model_id != expected:
                raise ValueError(
                    f"embedder.model_id {self.embedder.model_id!r} does not match its source and "
                    f"preprocessing (expected {expected!r})"
                )
            for a in self.artifacts:
                emb = a.output(OutputRole.EMBEDDING)
                if emb.shape[-1] != self.embedder.dim:
                    raise ValueError(f"{a.file}: embedding output has {emb.shape[-1]} dims, bundle says {self.embedder.dim}")
        return self

    # ---- selection -------------------------------------------------------------
    def artifact(
        self,
        format: ArtifactFormat | str = ArtifactFormat.TFLITE,
        precision: Precision | str | None = None,
        *,
        publishable_only: bool = False,
    ) -> ArtifactManifest:
        """The artifact for a target; without a precision, the smallest publishable one."""
        fmt = ArtifactFormat(format)
        prec = Precision(precision) if precision is not None else None
        found = [
            a
            for a in self.artifacts
            if a.format is fmt and (prec is None or a.precision is prec) and (a.publishable or not publishable_only)
        ]
        if not found:
            have = ", ".join(f"{a.format.value}/{a.precision.value}" for a in self.artifacts) or "none"
            want = f"{fmt.value}/{prec.value if prec else '*'}"
            raise ManifestError(f"bundle {self.name!r} has no {want} artifact (has: {have})")
        found.sort(key=lambda a: (not a.publishable, a.size_bytes))
        return found[0]

    def upsert_artifact(self, artifact: ArtifactManifest) -> None:
        """Replace the entry for the same file, or add it: reconverting never duplicates."""
        self.artifacts = [a for a in self.artifacts if a.file != artifact.file] + [artifact]
        BundleManifest.model_validate(self.model_dump())


# ---- files ----------------------------------------------------------------------


def artifact_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory (.mlpackage) as its sorted relative paths + contents."""
    import hashlib

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        raise ManifestError(f"artifact not found: {p}")
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def artifact_size(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def manifest_path(bundle: str | os.PathLike[str]) -> Path:
    p = Path(bundle)
    return p / MANIFEST_FILENAME if p.is_dir() else p


def load_manifest(bundle: str | os.PathLike[str]) -> BundleManifest:
    """Read and validate a bundle's manifest (a bundle directory or the json file)."""
    path = manifest_path(bundle)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path} (a bundle directory must contain {MANIFEST_FILENAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON: {exc}") from None
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}") from None


def save_manifest(manifest: BundleManifest, bundle_dir: str | os.PathLike[str]) -> Path:
    """Write atomically (tmp + rename) so a crash never leaves half a manifest."""
    path = Path(bundle_dir) / MANIFEST_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path


def verify_bundle(bundle: str | os.PathLike[str]) -> BundleManifest:
    """Load the manifest and check that every artifact exists with its recorded size and sha256."""
    manifest = load_manifest(bundle)
    root = manifest_path(bundle).parent
    for a in manifest.artifacts:
        f = root / a.file
        if not f.exists():
            raise ManifestError(f"bundle {manifest.name!r}: artifact {a.file} is missing from {root}")
        size = artifact_size(f)
        if size != a.size_bytes:
            raise ManifestError(f"{a.file}: size {size} bytes, manifest says {a.size_bytes}")
        digest = artifact_sha256(f)
        if digest != a.sha256:
            raise ManifestError(f"{a.file}: sha256 {digest[:12]}..., manifest says {a.sha256[:12]}...")
    return manifest


def manifest_json_schema() -> dict[str, Any]:
    schema = BundleManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://shoplens.dev/schemas/manifest-v1.json"
    return schema


def write_json_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> Path:
    p = Path(path)
    p.write_text(json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n")
    return p

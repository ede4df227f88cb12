"""The phone's flow in Python: detect -> choose objects -> crop -> embed -> encode, with LiteRT.

Driven only by bundle manifests (input spec, output roles, thresholds, model
id), so the same code runs our converted embedder and a third-party TFLite
embedder. No torch: this is what a phone has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from shoplens.contract.codecs import Encoding, encode_vector, l2_normalize
from shoplens.contract.errors import ManifestError
from shoplens.contract.manifest import (
    ArtifactFormat,
    ArtifactManifest,
    BundleManifest,
    ObjectChoice,
    OutputRole,
    Precision,
    Task,
    load_manifest,
    manifest_path,
)
from shoplens.sdk.images import load_rgb
from shoplens.sdk.preprocess import Letterbox
from shoplens.sdk.tensors import prepare_input
from shoplens.sdk.yolo_decode import Detections, box_overlap, decode_with_manifest, dequantize


def _interpreter(path: Path, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=num_threads)
    it.allocate_tensors()
    return it


class _TFLiteModel:
    """One TFLite artifact of a bundle, with its input/output tensors found by the manifest's names."""

    def __init__(self, bundle: str | os.PathLike[str], task: Task, precision: Precision | str | None, num_threads: int) -> None:
        self.manifest: BundleManifest = load_manifest(bundle)
        if self.manifest.task is not task:
            raise ManifestError(f"{manifest_path(bundle)} is a {self.manifest.task.value} bundle, expected a {task.value}")
        self.artifact: ArtifactManifest = self.manifest.artifact(ArtifactFormat.TFLITE, precision)
        self.path = manifest_path(bundle).parent / self.artifact.file
        if not self.path.is_file():
            raise ManifestError(f"artifact {self.path} listed in the manifest does not exist")
        self.interpreter = _interpreter(self.path, num_threads)
        self._in = self._find(self.interpreter.get_input_details(), self.artifact.input.name, "input")
        self._outs = {o.role: self._find(self.interpreter.get_output_details(), o.name, "output") for o in self.artifact.outputs}

    def _find(self, details: list[dict], name: str, kind: str) -> dict:
        for d in details:
            if d["name"] == name:
                return d
        if len(details) == 1:  # converters sometimes rename single tensors; the manifest's shape still decides
            return details[0]
        names = [d["name"] for d in details]
        raise ManifestError(f"{self.path.name}: no {kind} tensor named {name!r} (has {names})")

    def run(self, x: np.ndarray) -> dict[OutputRole, np.ndarray]:
        expected = tuple(self._in["shape"])
        if x.shape != expected or x.dtype != self._in["dtype"]:
            raise ManifestError(f"{self.path.name}: manifest input gives {x.shape} {x.dtype}, the model wants {expected} {np.dtype(self._in['dtype'])}")
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        return {role: self.interpreter.get_tensor(d["index"]) for role, d in self._outs.items()}


class Embedder:
    """A TFLite embedder bundle: uint8 RGB crop in, unit vector out."""

    def __init__(self, bundle: str | os.PathLike[str], precision: Precision | str | None = None, num_threads: int = 2) -> None:
        self._model = _TFLiteModel(bundle, Task.EMBEDDER, precision, num_threads)
        spec = self._model.manifest.embedder
        assert spec is not None
        self.spec = spec
        self.model_id = spec.model_id
        self.dim = spec.dim
        self._out = self._model.artifact.output(OutputRole.EMBEDDING)

    @property
    def artifact(self) -> ArtifactManifest:
        return self._model.artifact

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        x, _ = prepare_input(rgb, self._model.artifact.input)
        raw = self._model.run(x)[OutputRole.EMBEDDING]
        q = self._out.quantization
        vec = dequantize(raw, q.scale if q else None, q.zero_point if q else 0).reshape(-1)
        return l2_normalize(vec)


class Detector:
    """A TFLite YOLO bundle: photo in, detections in photo pixels out."""

    def __init__(self, bundle: str | os.PathLike[str], precision: Precision | str | None = None, num_threads: int = 2) -> None:
        self._model = _TFLiteModel(bundle, Task.DETECTOR, precision, num_threads)
        spec = self._model.manifest.detector
        assert spec is not None
        self.spec = spec
        self._out = self._model.artifact.output(OutputRole.YOLO_RAW)

    @property
    def artifact(self) -> ArtifactManifest:
        return self._model.artifact

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    def detect(self, rgb: np.ndarray, **overrides: Any) -> Detections:
        raw, geo = self.infer(rgb)
        return self.decode(raw, geo, **overrides)

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The raw ``yolo_raw`` output and the letterbox geometry: one inference that ``decode`` may read at several thresholds."""
        x, geo = prepare_input(rgb, self._model.artifact.input)
        if geo is None:
            raise ManifestError(f"{self._model.path.name}: a detector input must be letterboxed, the manifest says {self._model.artifact.input.resize.value}")
        return self._model.run(x)[OutputRole.YOLO_RAW], geo

    def decode(self, raw: np.ndarray, geo: Letterbox, **overrides: Any) -> Detections:
        """Detections in photo pixels, with the manifest's thresholds unless overridden."""
        return decode_with_manifest(raw, geo, self.spec, self._out, **overrides)


@dataclass
class FlowOptions:
    """Per-run settings of the phone's flow (a MediaPipe-style options object).

    Which objects are searched is the detector manifest's rule (``detector.object_choice``, an
    :class:`~shoplens.contract.manifest.ObjectChoice`): a field below left at ``None`` means "the
    manifest's". Why overrides at all: to try another value on purpose (``shoplens search
    --min-box``) or to ask for one object (the catalog import stores one vector per image); an
    app ships its rule in the detector bundle, so every side reads the same one.
    """

    max_objects: int | None = None
    min_box_fraction: float | None = None
    crop_margin: float | None = None
    ignore_labels: tuple[str, ...] | None = None
    search_whole_photo: bool | None = None
    max_overlap: float | None = None
    conf_threshold: float | None = None  # None: the manifest's default
    encoding: Encoding = Encoding.I8

    def choice(self, base: ObjectChoice) -> ObjectChoice:
        """``base`` (the manifest's rule) with this run's overrides, validated like a manifest."""
        overrides = {name: getattr(self, name) for name in ObjectChoice.model_fields if getattr(self, name, None) is not None}
        return ObjectChoice.model_validate({**base.model_dump(), **overrides})


@dataclass
class DetectedObject:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    label: str
    score: float
    vector: np.ndarray
    encoded: str
    source: str  # "detector", "caller_box" or "whole_image"


@dataclass
class FlowResult:
    image_size: tuple[int, int]  # width, height
    objects: list[DetectedObject]
    timings_ms: dict[str, float] = field(default_factory=dict)
    model_id: str = ""
    encoding: Encoding = Encoding.I8

    @property
    def payload_bytes(self) -> int:
        """What would leave the phone: the encoded vectors only."""
        return sum(len(o.encoded) for o in self.objects)


def crop_with_margin(rgb: np.ndarray, box: tuple[float, float, float, float], margin: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if right - left < 2 or bottom - top < 2:
        raise ValueError(f"box {box} is empty inside a {w}x{h} photo")
    return rgb[top:bottom, left:right]


def choose_objects(dets: Detections, image_area: float, choice: ObjectChoice, class_names: list[str] | None = None) -> list[int]:
    """The rule of :class:`ObjectChoice`: ranked by score x area (a shopper photographs the product
    they want, big and in focus), each box kept unless it overlaps a kept one by more than
    ``max_overlap`` of the smaller box, up to ``max_objects``."""
    if len(dets) == 0:
        return []
    areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
    wanted = np.array([not class_names or class_names[int(c)] not in choice.ignore_labels for c in dets.classes], dtype=bool)
    keep = np.where((areas >= choice.min_box_fraction * image_area) & wanted)[0]
    order = keep[np.argsort(-(dets.scores[keep] * areas[keep]), kind="stable")]
    overlaps = box_overlap(dets.boxes[order], dets.boxes[order])
    chosen: list[int] = []  # positions in ``order``
    for pos in range(len(order)):
        if len(chosen) == choice.max_objects:
            break
        if not chosen or overlaps[pos, chosen].max() <= choice.max_overlap:
            chosen.append(pos)
    return [int(order[pos]) for pos in chosen]


@dataclass(frozen=True)
class Region:
    """A part of the photo the flow embeds and searches."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    label: str
    score: float
    source: str  # "detector", "caller_box" or "whole_image"


def plan_regions(dets: Detections, size: tuple[int, int], choice: ObjectChoice, class_names: list[str]) -> list[Region]:
    """The regions a photo's detections give under the rule: the chosen boxes, then the whole
    photo when the rule searches it too or when no box is left (a photo without a product box
    is still searched, as the catalog import embeds it)."""
    w, h = size
    regions = [Region(tuple(float(v) for v in dets.boxes[i]), class_names[int(dets.classes[i])], float(dets.scores[i]), "detector")  # type: ignore[arg-type]
               for i in choose_objects(dets, float(w * h), choice, class_names)]
    if choice.search_whole_photo or not regions:
        regions.append(Region((0.0, 0.0, float(w), float(h)), "", 0.0, "whole_image"))
    return regions


def region_pixels(rgb: np.ndarray, region: Region, choice: ObjectChoice) -> np.ndarray:
    """What the embedder sees for a region: the photo itself, or the box with the rule's margin."""
    return rgb if region.source == "whole_image" else crop_with_margin(rgb, region.box, choice.crop_margin)


class _Hit(Protocol):
    product_id: str
    score: float


HitT = TypeVar("HitT", bound=_Hit)


def fuse_hits(hit_lists: Iterable[Sequence[HitT]], top_k: int | None = None) -> list[HitT]:
    """Several objects' results as one ranking: per product its best-scoring hit, best first.

    Why: the whole photo and a crop of it fail differently (a crop can lose the context the
    catalog's images have, or be the wrong box; the whole photo can be dominated by clutter),
    and per product the better of the two scores recovers both (benchmarks/detector_flow.py).
    """
    best: dict[str, HitT] = {}
    for hits in hit_lists:
        for hit in hits:
            if hit.product_id not in best or hit.score > best[hit.product_id].score:
                best[hit.product_id] = hit
    ranked = sorted(best.values(), key=lambda h: -h.score)
    return ranked if top_k is None else ranked[:top_k]


class DeviceRuntime:
    """Detector + embedder bundles; ``process(photo)`` runs the phone's flow and times each stage."""

    def __init__(self, embedder: Embedder, detector: Detector | None = None, options: FlowOptions | None = None) -> None:
        self.embedder = embedder
        self.detector = detector
        self.options = options or FlowOptions()
        #: the object-choice rule in force: the detector manifest's, with this run's overrides
        self.choice: ObjectChoice = self.options.choice(detector.spec.object_choice if detector else ObjectChoice())

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: str | os.PathLike[str] | None = None,
        detector: str | os.PathLike[str] | None = None,
        precision: str | None = None,
        options: FlowOptions | None = None,
        num_threads: int = 2,
    ) -> "DeviceRuntime":
        """``path``: a folder holding one embedder bundle and at most one detector bundle
        (e.g. ``mobile_assets/``), or give the two bundle folders explicitly."""
        embedder, detector = resolve_bundles(Path(path) if path is not None else None, embedder=embedder, detector=detector)
        return cls(
            Embedder(embedder, precision, num_threads),
            Detector(detector, None, num_threads) if detector else None,
            options,
        )

    def process(self, photo: str | os.PathLike[str] | bytes | np.ndarray, *, box: tuple[float, float, float, float] | None = None) -> FlowResult:
        """Photo -> encoded vectors of the chosen objects. ``box`` (x, y, w, h): the object the shopper tapped."""
        opts = self.options
        timings: dict[str, float] = {}
        t = time.perf_counter()
        rgb = photo if isinstance(photo, np.ndarray) else load_rgb(photo)
        timings["decode"] = (time.perf_counter() - t) * 1000
        h, w = rgb.shape[:2]
        if box is not None:
            x, y, bw, bh = box
            regions = [Region((x, y, x + bw, y + bh), "", 1.0, "caller_box")]
        elif self.detector is not None:
            t = time.perf_counter()
            overrides = {"conf_threshold": opts.conf_threshold} if opts.conf_threshold is not None else {}
            dets = self.detector.detect(rgb, **overrides)
            timings["detect"] = (time.perf_counter() - t) * 1000
            regions = plan_regions(dets, (w, h), self.choice, self.detector.class_names)
        else:
            regions = [Region((0.0, 0.0, float(w), float(h)), "", 0.0, "whole_image")]
        objects = []
        crop_ms = embed_ms = encode_ms = 0.0
        for r in regions:
            t0 = time.perf_counter()
            crop = region_pixels(rgb, r, self.choice)
            t1 = time.perf_counter()
            vec = self.embedder.embed(crop)
            t2 = time.perf_counter()
            encoded = encode_vector(vec, opts.encoding, self.embedder.dim)
            t3 = time.perf_counter()
            crop_ms, embed_ms, encode_ms = crop_ms + (t1 - t0) * 1000, embed_ms + (t2 - t1) * 1000, encode_ms + (t3 - t2) * 1000
            objects.append(DetectedObject(r.box, r.label, r.score, vec, encoded, r.source))
        timings.update(crop=crop_ms, embed=embed_ms, encode=encode_ms)
        return FlowResult((w, h), objects, timings, self.embedder.model_id, opts.encoding)

    def check_model(self, client: Any) -> Any:
        """The service's view of this runtime's embedder (read once per client): a ModelInfo, or None
        when the client cannot tell; raises ModelRetiredError when the service retired it."""
        status = getattr(client, "model_status", None)
        info = status(self.embedder.model_id) if callable(status) else None
        if info is not None and info.status == "retired":
            from shoplens.contract.errors import ErrorCode
            from shoplens.sdk.errors import ModelRetiredError

            raise ModelRetiredError(f"embedder model {self.embedder.model_id} is retired by the service; update the app's bundle",
                                    code=ErrorCode.MODEL_RETIRED, status=410, details={"request_model_id": self.embedder.model_id})
        return info

    def search(self, photo: str | os.PathLike[str] | bytes | np.ndarray, client: Any, *, box: tuple[float, float, float, float] | None = None, top_k: int = 5, **search_options: Any) -> tuple[FlowResult, Any]:
        """The whole phone flow: one batch request for all objects in the photo.

        The first search with a client reads the service's models (``client.model_status``): a
        deprecated embedder warns ModelDeprecatedWarning; a retired one raises ModelRetiredError
        before any photo is processed, naming the model and bundle to update to.
        """
        self.check_model(client)
        result = self.process(photo, box=box)
        if not result.objects:
            return result, None
        t = time.perf_counter()
        response = client.search_batch([o.encoded for o in result.objects], model_id=result.model_id, encoding=result.encoding, top_k=top_k, **search_options)
        result.timings_ms["search_http"] = (time.perf_counter() - t) * 1000
        return result, response


def find_bundles(root: Path) -> dict[Task, list[Path]]:
    """Bundle folders by task: ``root`` itself if it is a bundle, else its subfolders with a manifest."""
    found: dict[Task, list[Path]] = {}
    if not root.is_dir():
        return found
    candidates = [root] if (root / "manifest.json").is_file() else sorted(p.parent for p in root.glob("*/manifest.json"))
    for c in candidates:
        found.setdefault(load_manifest(c).task, []).append(c)
    return found


def _only(found: dict[Task, list[Path]], task: Task, root: Path) -> Path:
    paths = found.get(task, [])
    if len(paths) != 1:
        raise ManifestError(f"expected exactly one {task.value} bundle under {root}, found {len(paths)}: {[p.name for p in paths]}; pass {task.value}= explicitly")
    return paths[0]


def resolve_bundles(
    root: Path | None,
    *,
    embedder: str | os.PathLike[str] | None = None,
    detector: str | os.PathLike[str] | None = None,
    with_detector: bool = True,
    embedder_required: bool = True,
) -> tuple[Path | None, Path | None]:
    """The (embedder, detector) bundle folders a run uses: explicit folders win; otherwise exactly
    one embedder and at most one detector under ``root`` (e.g. ``mobile_assets/``).

    ``embedder_required=False`` returns ``None`` instead of failing when ``root`` has no embedder
    (callers with a fallback, like the demo).
    """
    need_scan = root is not None and (embedder is None or (with_detector and detector is None))
    found = find_bundles(root) if need_scan else {}  # type: ignore[arg-type]
    if embedder is None:
        if root is None:
            raise ManifestError("no embedder bundle given")
        if embedder_required or found.get(Task.EMBEDDER):
            embedder = _only(found, Task.EMBEDDER, root)
    if not with_detector:
        detector = None
    elif detector is None and found.get(Task.DETECTOR):
        detector = _only(found, Task.DETECTOR, root)  # type: ignore[arg-type]
    return (Path(embedder) if embedder else None), (Path(detector) if detector else None)

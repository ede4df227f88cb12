"""The shipped bundles in MediaPipe Tasks: TFLite metadata, and the embedder through ``ImageEmbedder``.

Most mobile developers reach on-device models through MediaPipe Tasks (Android,
iOS, Web and Python share one C++ runtime) rather than a raw interpreter. This
module is that path in Python, so it is tested on the same artifacts a phone
ships:

- :func:`write_metadata` adds TFLite metadata (what MediaPipe, Android Studio's
  ML Model Binding and the TFLite support library read) to a bundle's
  ``.tflite`` artifacts: the input's normalisation and range, the colour space,
  a description of each output and, for the detector, the class labels. The
  graph is not touched (only the flatbuffer's metadata and an appended
  ``labels.txt``), so the sha256 and size in ``manifest.json`` are updated and
  nothing else changes; the model id (a hash of the *source* weights and the
  preprocessing) stays the same.
- :class:`MediaPipeEmbedder` runs the embedder in ``mediapipe.tasks``'
  ``ImageEmbedder``. MediaPipe stretches its input to 224 x 224 with plain
  bilinear (no antialiasing); the SDK, like the embedder's training pipeline,
  shrinks with Pillow's antialiased bilinear. Fed the crop directly, MediaPipe's
  vector is at cos 0.998 (mean; min 0.992) of the SDK's on the 296 val photos;
  fed the crop already resized the SDK's way (``presize=True``, the default), it
  is the SDK's vector (cos 1.0).

The detector is *not* a MediaPipe ``ObjectDetector`` model: see
``mobile_assets/README.md`` (MediaPipe Tasks) for why.

Needs the ``mediapipe`` package (the ``mediapipe`` extra); it never pulls tensorflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.contract.manifest import (
    ArtifactFormat,
    Task,
    artifact_sha256,
    artifact_size,
    load_manifest,
    save_manifest,
)
from shoplens.sdk.tensors import resize_pil

LABELS_FILE = "labels.txt"


_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def _min_parser_version(metadata_buf: bytes) -> str:
    """The metadata's minimum parser version, as MediaPipe's C++ ``metadata_version.cc`` computes it.

    The pip wheel of mediapipe (1.2.x) ships the metadata writers but not the pybind module they
    call for this one number, so importing them fails with ``No module named 'mediapipe.tasks.cc'``.
    This is the same rule (the newest schema member the metadata uses) for the members it tracks.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(metadata_buf, 0))
    found = [(1, 0, 0)]

    def files(items: Any) -> None:
        for f in items or []:
            if f.type == fb.AssociatedFileType.VOCABULARY:
                found.append((1, 0, 1))
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                found.append((1, 4, 0))
            if f.version:
                found.append((1, 4, 1))

    def units(items: Any) -> None:
        for u in items or []:
            if u.optionsType in (fb.ProcessUnitOptions.BertTokenizerOptions, fb.ProcessUnitOptions.SentencePieceTokenizerOptions):
                found.append((1, 1, 0))
            if u.optionsType == fb.ProcessUnitOptions.RegexTokenizerOptions:
                found.append((1, 2, 1))

    files(md.associatedFiles)
    for sg in md.subgraphMetadata or []:
        files(sg.associatedFiles)
        if sg.inputProcessUnits or sg.outputProcessUnits:
            found.append((1, 1, 0))
        if sg.inputTensorGroups or sg.outputTensorGroups:
            found.append((1, 2, 0))
        units(sg.inputProcessUnits)
        units(sg.outputProcessUnits)
        for t in (sg.inputTensorMetadata or []) + (sg.outputTensorMetadata or []):
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        if getattr(sg, "customMetadata", None):
            found.append((1, 5, 0))
    return ".".join(str(v) for v in max(found))


def _writer_module() -> Any:
    import sys
    import types

    try:
        import importlib

        importlib.import_module(_VERSION_MODULE)
    except ImportError:
        shim = types.ModuleType(_VERSION_MODULE)
        shim.GetMinimumMetadataParserVersion = _min_parser_version  # type: ignore[attr-defined]
        parts = _VERSION_MODULE.split(".")
        for i in range(3, len(parts)):  # mediapipe.tasks.cc, ...cc.metadata, ...metadata.python
            name = ".".join(parts[:i])
            if name not in sys.modules:
                pkg = types.ModuleType(name)
                pkg.__path__ = []  # type: ignore[attr-defined]
                sys.modules[name] = pkg
        sys.modules[_VERSION_MODULE] = shim
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], shim)
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    return metadata_writer


def metadata_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The TFLite metadata of a model as a dict, or None when it has none."""
    import json

    _writer_module()
    from mediapipe.tasks.python.metadata import metadata

    try:
        displayer = metadata.MetadataDisplayer.with_model_file(str(path))
    except ValueError:  # "The model does not have metadata."
        return None
    return json.loads(displayer.get_metadata_json())


def associated_files(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The files packed into a model's metadata (e.g. the detector's ``labels.txt``)."""
    _writer_module()
    from mediapipe.tasks.python.metadata import metadata

    displayer = metadata.MetadataDisplayer.with_model_file(str(path))
    return {name: displayer.get_associated_file_buffer(name) for name in displayer.get_packed_associated_file_list()}


def strip_for_metadata(model: bytes) -> bytes:
    """The same graph, ready for MediaPipe's metadata populator: weights inline, no TFLite metadata.

    The converters write large-model TFLite files whose weights sit after the flatbuffer,
    addressed by ``Buffer.offset``; the populator re-serialises the flatbuffer and would drop
    them (a 9 MB embedder came out at 337 kB), so they are moved inside it first. Existing
    ``TFLITE_METADATA`` (and the associated-files zip after the flatbuffer) is removed, so
    writing the metadata again gives the same file. The graph and the numbers are unchanged.
    """
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as fb

    root = fb.Model.GetRootAsModel(model, 0)
    m = fb.ModelT.InitFromObj(root)
    for buf in m.buffers or []:
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(model, dtype=np.uint8, count=buf.size, offset=buf.offset).copy()
            buf.offset, buf.size = 0, 0
    for md in [md for md in m.metadata or [] if md.name in (b"TFLITE_METADATA", "TFLITE_METADATA")]:
        m.metadata.remove(md)
        if md.buffer == len(m.buffers) - 1:
            m.buffers.pop()
        else:
            m.buffers[md.buffer].data = None
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _populate(writer: Any) -> bytes:
    """``writer.populate()`` with the associated files' zip entries dated 1980-01-01, so the
    same manifest always gives the same bytes (zipfile would stamp the current time)."""
    import zipfile

    original = zipfile.ZipFile.writestr

    def dated(self: zipfile.ZipFile, name: Any, data: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(name, str):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = self.compression
            info.external_attr = 0o600 << 16
            name = info
        original(self, name, data, *args, **kwargs)

    zipfile.ZipFile.writestr = dated  # type: ignore[method-assign]
    try:
        content, _ = writer.populate()
    finally:
        zipfile.ZipFile.writestr = original  # type: ignore[method-assign]
    return bytes(content)


def _embedder_metadata(model: bytes, manifest: Any, artifact: Any) -> bytes:
    mw = _writer_module()
    spec = manifest.embedder
    inp = artifact.input
    norm = spec.preprocessing.get("normalization_in_graph") if isinstance(spec.preprocessing, dict) else None
    in_desc = (
        f"{inp.width} x {inp.height} RGB photo crop, {inp.dtype.value} 0..255, resized by '{inp.resize.value}' "
        "(bilinear, antialiased when shrinking, like Pillow). "
        + ("ImageNet mean/std normalisation is inside the graph: feed raw pixels." if norm else "")
    )
    out = artifact.outputs[0]
    writer = (
        mw.MetadataWriter.create(bytearray(model))
        .add_general_info(manifest.name, f"shoplens product embedder; model id {spec.model_id}; {spec.dim}-d, {spec.metric}, L2-normalised in graph: {spec.l2_in_graph}")
        # uint8 input read as is: mean 0, std 1 (MediaPipe ignores normalisation for uint8 inputs)
        .add_image_input(norm_mean=[float(v) for v in inp.mean], norm_std=[float(v) for v in inp.std], name="image", description=in_desc)
        .add_feature_output(name="embedding", description=f"[1, {spec.dim}] float32 {spec.normalization}-normalised embedding ({out.name}); compare by cosine; upload as i8 (docs/protocol.md)")
    )
    return _populate(writer)


def _detector_metadata(model: bytes, manifest: Any, artifact: Any) -> bytes:
    mw = _writer_module()
    det = manifest.detector
    inp = artifact.input
    # value = (pixel * scale - mean) / std  ==  (pixel - mean/scale) / (std/scale)
    mean = [float(m / inp.scale) for m in inp.mean]
    std = [float(s / inp.scale) for s in inp.std]
    n = len(det.class_names)
    out = artifact.outputs[0]
    writer = (
        mw.MetadataWriter.create(bytearray(model))
        .add_general_info(manifest.name, f"shoplens product detector ({manifest.source.name}, {n} COCO classes); raw YOLO head, NMS not in the graph")
        .add_image_input(
            norm_mean=mean, norm_std=std, name="images",
            description=f"{inp.width} x {inp.height} RGB, {inp.layout.value} {inp.dtype.value}, letterboxed (keep aspect, pad {inp.pad_value} grey, centred), value = pixel / 255",
        )
        .add_classification_output(
            mw.Labels().add(list(det.class_names)),
            name="yolo_raw",
            description=(
                f"{list(out.shape)}: rows 0-3 box cx, cy, w, h ({'normalised 0-1 of the input' if det.boxes_normalized else 'input pixels'}), "
                f"rows 4-{3 + n} the class scores (no objectness; labels in {LABELS_FILE}). Decode, keep score > {det.conf_threshold}, "
                f"NMS at IoU {det.iou_threshold}, undo the letterbox."
            ),
        )
    )
    return _populate(writer)


def write_metadata(bundle: str | os.PathLike[str]) -> list[Path]:
    """Add TFLite metadata to every ``.tflite`` artifact of a bundle; update the manifest's sha256/size.

    Idempotent: the metadata is rebuilt from the manifest each time (a model that already
    has metadata gets it replaced). Returns the files rewritten.
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    written = []
    for artifact in manifest.artifacts:
        if artifact.format is not ArtifactFormat.TFLITE:
            continue
        path = bundle / artifact.file
        current = path.read_bytes()
        build = _embedder_metadata if manifest.task is Task.EMBEDDER else _detector_metadata
        new = build(strip_for_metadata(current), manifest, artifact)
        if new != current:
            tmp = path.with_suffix(".tflite.tmp")
            tmp.write_bytes(new)
            os.replace(tmp, path)
            written.append(path)
        artifact.sha256 = artifact_sha256(path)
        artifact.size_bytes = artifact_size(path)
    if written:
        save_manifest(manifest, bundle)
    return written


class MediaPipeEmbedder:
    """A bundle's TFLite embedder in MediaPipe Tasks' ``ImageEmbedder`` (CPU).

    ``presize=True`` resizes the crop to the model's input the SDK's way (Pillow bilinear,
    antialiased) before MediaPipe sees it, so both sides compute the same vector; with
    ``presize=False`` MediaPipe resizes (plain bilinear) as an app calling it directly would.
    """

    def __init__(self, bundle: str | os.PathLike[str], *, presize: bool = True, num_threads: int = 2) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        manifest = load_manifest(bundle)
        if manifest.embedder is None:
            raise ValueError(f"{bundle}: not an embedder bundle")
        self.manifest = manifest
        self.model_id = manifest.embedder.model_id
        self.artifact = manifest.artifact(ArtifactFormat.TFLITE)
        self.presize = presize
        self.num_threads = num_threads  # MediaPipe's Python API picks its own CPU threads; kept for the record
        options = vision.ImageEmbedderOptions(
            base_options=BaseOptions(model_asset_path=str(Path(bundle) / self.artifact.file)),
            l2_normalize=True,
        )
        self._task = vision.ImageEmbedder.create_from_options(options)

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        import mediapipe as mp

        inp = self.artifact.input
        img = resize_pil(rgb, inp.height, inp.width) if self.presize else rgb
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img, dtype=np.uint8))
        vec = np.asarray(self._task.embed(image).embeddings[0].embedding, dtype=np.float32)
        return vec / np.linalg.norm(vec)

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None  # type: ignore[assignment]

    def __enter__(self) -> "MediaPipeEmbedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m shoplens.sdk.mediapipe_tasks write-metadata BUNDLE...``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shoplens.sdk.mediapipe_tasks")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-metadata", help="add TFLite metadata to a bundle's .tflite artifacts")
    w.add_argument("bundles", nargs="+")
    args = parser.parse_args(argv)
    for b in args.bundles:
        for p in write_metadata(b):
            print(f"wrote metadata: {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

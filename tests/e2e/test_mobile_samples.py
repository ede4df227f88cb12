"""The Swift and Kotlin samples, the mobile README and the /app page agree with the manifests and the SDK.

Checked: every literal constant of a sample is marked with the manifest field (`// manifest:`) or the
SDK default (`// sdk:`) it must equal and does; the object-choice rule is read from the detector
manifest's `object_choice` keys at run time by both samples and the page, never written as a constant;
the rules the samples implement (letterbox vs stretch, strict thresholds, class-aware NMS, object
choice, crop rounding, i8 encoding, the request body) as text; every flow number of
mobile_assets/README.md. The samples are not compiled here (no Swift toolchain for UIKit/Vision, no
Android SDK on this Linux machine).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shoplens.contract.manifest import load_manifest, verify_bundle

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").rglob("*.swift")) + sorted((ROOT / "samples").rglob("*.kt"))
MARKED = re.compile(r'=\s*(?P<value>"[^"]*"|-?[\d.]+f?)\s*(?://\s*manifest:\s*(?P<ref>\S+)\s+(?P<path>\S+))')


def _lookup(data: object, path: str) -> object:
    index_of = re.fullmatch(r"(.+)\.index\((.+)\)", path)
    if index_of:
        return _lookup(data, index_of.group(1)).index(index_of.group(2))  # type: ignore[attr-defined]
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]  # type: ignore[index]
    return data


def _resolve(ref: str, path: str) -> object:
    bundle, _, file = ref.partition("/")
    manifest = load_manifest(ROOT / "mobile_assets" / bundle).model_dump(mode="json")
    if not file:
        return _lookup(manifest, path)
    (artifact,) = [a for a in manifest["artifacts"] if a["file"] == file]
    return _lookup(artifact, path)


def _value(text: str) -> object:
    if text.startswith('"'):
        return text.strip('"')
    return float(text.rstrip("f"))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_constants_match_manifests(sample: Path) -> None:
    checks = [m for m in MARKED.finditer(sample.read_text()) if m.group("ref")]
    assert len(checks) >= 8, f"{sample.name}: expected its model constants to be marked `// manifest:`"
    for m in checks:
        expected = _resolve(m.group("ref"), m.group("path"))
        got = _value(m.group("value"))
        if isinstance(got, float):
            assert float(expected) == pytest.approx(got), f"{sample.name}: {m.group(0)} but the manifest says {expected}"  # type: ignore[arg-type]
        else:
            assert got == expected, f"{sample.name}: {m.group(0)} but the manifest says {expected!r}"


def test_samples_point_at_shipped_publishable_artifacts() -> None:
    for sample in SAMPLES:
        for m in MARKED.finditer(sample.read_text()):
            if m.group("ref") and m.group("path") == "file":
                bundle, _, file = m.group("ref").partition("/")
                manifest = verify_bundle(ROOT / "mobile_assets" / bundle)
                (a,) = [a for a in manifest.artifacts if a.file == file]
                assert a.publishable, f"{sample.name} ships {file}, which did not pass its parity gate"


def test_i8_encoding_in_samples_matches_the_contract() -> None:
    """The samples re-implement encode_i8 (a phone has no Python): keep the rule identical."""
    swift = (ROOT / "samples/ios/ShoplensSearch.swift").read_text()
    kotlin = (ROOT / "samples/android/ShoplensSearch.kt").read_text()
    assert "* 127 / peak" in swift and ".toNearestOrEven" in swift and "min(127" in swift and "max(-127" in swift
    assert "* 127 / peak" in kotlin and "Math.rint" in kotlin and "coerceIn(-127.0, 127.0)" in kotlin


# ---- every number and rule, not only the marked constants ---------------------------------------

CONST_DECL = re.compile(r"^\s*(?:static let|const val)\s+(?P<name>\w+)(?:\s*:\s*\w+)?\s*=\s*(?P<value>\"[^\"]*\"|-?[\d.]+f?)(?P<rest>.*)$")
SDK_MARK = re.compile(r"//\s*sdk:\s*(?P<ref>FlowOptions\.\w+|DeviceRuntime\.search top_k)")


def _sdk_value(ref: str) -> object:
    import inspect

    from shoplens.sdk.runtime import DeviceRuntime, FlowOptions

    if ref.startswith("FlowOptions."):
        return getattr(FlowOptions(), ref.split(".", 1)[1])
    return inspect.signature(DeviceRuntime.search).parameters["top_k"].default


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_constant_is_checked(sample: Path) -> None:
    """Each literal constant of a sample is tied to a manifest field or an SDK default, and has that value."""
    seen = 0
    for line in sample.read_text().splitlines():
        m = CONST_DECL.match(line)
        if not m:
            continue
        seen += 1
        rest = m.group("rest")
        sdk = SDK_MARK.search(rest)
        assert "// manifest:" in rest or sdk, f"{sample.name}: {m.group('name')} = {m.group('value')} is not marked `// manifest:` or `// sdk:`"
        if sdk:
            expected = _sdk_value(sdk.group("ref"))
            got = _value(m.group("value"))
            assert float(expected) == pytest.approx(got), f"{sample.name}: {m.group('name')} = {got}, the SDK's {sdk.group('ref')} is {expected}"  # type: ignore[arg-type]
    assert seen >= 12, f"{sample.name}: only {seen} constants found; did the declaration style change?"


#: a constant with one of these in its name would be a copy of the manifest's object-choice rule
RULE_CONSTANT = re.compile(r"(?i)min_?box|max_?objects|crop_?margin|ignor|whole")


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_read_the_object_choice_from_the_manifest(sample: Path) -> None:
    """The rule is not the sample's: it reads every ObjectChoice key of the detector manifest and
    holds no constant of its own for any of them (the shipped manifest carries all the keys)."""
    from shoplens.contract.manifest import ObjectChoice

    text = sample.read_text()
    code = "\n".join(ln.split("//")[0] for ln in text.splitlines())
    shipped = json.loads((ROOT / "mobile_assets" / "yolov8n" / "manifest.json").read_text())["detector"]["object_choice"]
    assert set(shipped) == set(ObjectChoice.model_fields), "the shipped detector manifest must spell out the whole rule"
    assert '"object_choice"' in code
    for key in ObjectChoice.model_fields:
        assert f'"{key}"' in code, f"{sample.name} does not read detector.object_choice.{key}"
    for line in text.splitlines():
        m = CONST_DECL.match(line)
        assert not (m and RULE_CONSTANT.search(m.group("name"))), f"{sample.name} hard-codes the rule: {line.strip()}"


def test_sample_rules_match_the_sdk() -> None:
    """The rules the samples implement, as the SDK and the manifests have them."""
    det = load_manifest(ROOT / "mobile_assets" / "yolov8n")
    emb = load_manifest(ROOT / "mobile_assets" / "resnet50v2-s3-256")
    assert det.detector is not None and emb.embedder is not None
    assert det.artifact("tflite").input.resize.value == "letterbox" and emb.artifact("tflite").input.resize.value == "stretch"
    swift = (ROOT / "samples/ios/ShoplensSearch.swift").read_text()
    kotlin = (ROOT / "samples/android/ShoplensSearch.kt").read_text()
    code = {name: "\n".join(ln.split("//")[0] for ln in text.splitlines()) for name, text in (("swift", swift), ("kotlin", kotlin))}
    # detector input: letterboxed by the app (Vision's .scaleFit is not the detector's letterbox), pad from the manifest
    assert ".scaleFit" not in code["swift"] and "func letterbox(" in code["swift"] and "Shoplens.padValue" in code["swift"]
    assert "- 0.1" in code["swift"] and "- 0.1" in code["kotlin"]  # ultralytics' centring rule (odd pixel right/bottom)
    assert "Shoplens.DETECTOR_PAD" in code["kotlin"] and "/ 255f" in code["kotlin"]
    # thresholds are strict, as the SDK's decoder: score > conf, suppress when IoU > iou
    assert "$0.confidence > VNConfidence(Shoplens.confidenceThreshold)" in code["swift"]
    assert "score <= Shoplens.CONF_THRESHOLD) return@mapNotNull null" in code["kotlin"]
    assert "iou(it, b) > Shoplens.IOU_THRESHOLD" in code["kotlin"] and "it.cls == b.cls" in code["kotlin"]  # class-aware NMS
    # objects (the manifest's rule): ignored labels, min box of the photo area, ranked by score x area, top
    # max_objects, then the whole photo when the rule searches it too or no box is left; answer merged per product
    assert "!choice.ignoreLabels.contains(" in code["swift"] and "it.cls !in choice.ignoredClasses" in code["kotlin"]
    assert ">= choice.minBoxFraction * photoArea" in code["swift"] and "it.area >= choice.minBoxFraction * photoArea" in code["kotlin"]
    assert "sortedByDescending { it.score * it.area })" in code["kotlin"]
    # ... each kept unless it overlaps a kept box by more than max_overlap of the smaller box, up to max_objects
    assert "where boxes.count < choice.maxObjects" in code["swift"] and "if (boxes.size == choice.maxObjects) break" in code["kotlin"]
    assert "boxes.allSatisfy({ overlap($0, box) <= choice.maxOverlap })" in code["swift"]
    assert "boxes.all { overlap(it, b) <= choice.maxOverlap }" in code["kotlin"]
    assert "i.width * i.height / smaller" in code["swift"] and "iw * ih / smaller" in code["kotlin"]  # share of the smaller box, not IoU
    assert "boxes.isEmpty || choice.searchWholePhoto ? boxes + [whole] : boxes" in code["swift"]
    assert "if (boxes.isEmpty() || choice.searchWholePhoto) boxes + whole else boxes" in code["kotlin"]
    assert "box.width * choice.cropMargin" in code["swift"] and "(box.x2 - box.x1) * choice.cropMargin" in code["kotlin"]
    assert "func bestMatches(" in code["swift"] and "fun bestMatches(" in code["kotlin"]
    # crops: margin on each side, floor / ceil, clipped
    assert ".rounded(.down)" in code["swift"] and ".rounded(.up)" in code["swift"]
    assert "floor(box.x1 - mx)" in code["kotlin"] and "ceil(box.x2 + mx)" in code["kotlin"]
    # embedder input: stretched to the square input, uint8 RGB (normalisation inside the graph)
    assert ".scaleFill" in code["swift"] and "func stretch(" in code["swift"]
    assert "Shoplens.EMBEDDER_SIZE, Shoplens.EMBEDDER_SIZE, true" in code["kotlin"]
    assert emb.embedder.preprocessing["input_dtype"] == "uint8" and "toByte()" in code["kotlin"]
    # i8: L2-normalise, largest |component| -> 127, round half to even, clamp to -127..127
    assert ".rounded(.toNearestOrEven)" in code["swift"] and "max(-127, min(127," in code["swift"]
    assert "Math.rint(" in code["kotlin"] and "coerceIn(-127.0, 127.0)" in code["kotlin"]
    assert "127 / peak" in code["swift"] and "127 / peak" in code["kotlin"]
    # the request: POST /v1/search/batch with exactly the model id, the encoding, the vectors and top_k
    bodies = {"swift": next(ln for ln in code["swift"].splitlines() if "let body:" in ln),
              "kotlin": code["kotlin"][code["kotlin"].index("fun searchBody"):]}
    for name, body in bodies.items():
        body_keys = set(re.findall(r'"(\w+)"', body)) - {"i8"}
        assert body_keys == {"model_id", "encoding", "vectors", "top_k"}, (name, body_keys)
        assert '"i8"' in body
    assert 'appendingPathComponent("v1/search/batch")' in code["swift"]


def test_mobile_readme_numbers_match() -> None:
    """Every number mobile_assets/README.md states about the flow is the manifests'."""
    text = (ROOT / "mobile_assets" / "README.md").read_text()
    det = load_manifest(ROOT / "mobile_assets" / "yolov8n")
    emb = load_manifest(ROOT / "mobile_assets" / "resnet50v2-s3-256")
    choice = det.detector.object_choice  # type: ignore[union-attr]
    d_in, e_in = det.artifact("tflite").input, emb.artifact("tflite").input
    expected = [
        f"letterbox to {d_in.width} x {d_in.height}",
        f"score > {det.detector.conf_threshold}",  # type: ignore[union-attr]
        f"IoU {det.detector.iou_threshold}",  # type: ignore[union-attr]
        f"under {choice.min_box_fraction:.0%} of the photo",
        f"up to {choice.max_objects} boxes",
        f"more than {choice.max_overlap:.0%} of the smaller box",
        f"{choice.crop_margin:.0%} margin",
        "`detector.object_choice`",
        f"stretch to {e_in.width} x {e_in.height}",
        f"grey {d_in.pad_value}",
        f"base64 of the {emb.embedder.dim} bytes ({4 * ((emb.embedder.dim + 2) // 3)} characters)",  # type: ignore[union-attr]
        "round half to even",
        "clamp to -127..127",
        "score > conf",
    ]
    for phrase in expected:
        assert phrase in text, f"mobile_assets/README.md should say {phrase!r}"
    for pct in re.findall(r"(\d+)% of the photo\b", text):
        assert float(pct) / 100 == choice.min_box_fraction, f"README says {pct}% of the photo; the manifest's min_box_fraction is {choice.min_box_fraction}"
    assert ".scaleFit` letterboxes" not in text


def test_browser_page_flow_matches_the_sdk() -> None:
    """The /app page (cloud/static/app/) reads the object-choice rule from the detector manifest it is
    served, and its one flow option of its own is the SDK's FlowOptions default."""
    from shoplens.contract.manifest import ObjectChoice
    from shoplens.sdk.runtime import FlowOptions

    js = (ROOT / "cloud" / "static" / "app" / "flow.js").read_text()
    app = (ROOT / "cloud" / "static" / "app" / "app.js").read_text()
    found = dict(re.findall(r"^\s*(\w+):\s*([^,]+),\s*//\s*FlowOptions\.\w+", js, flags=re.M))
    assert set(found) == {"encoding"}, f"the page's own flow options: {sorted(found)}; the object choice is the manifest's"
    assert json.loads(found["encoding"]) == FlowOptions().encoding.value
    assert "state.detector.manifest.detector.object_choice" in app
    for key in ObjectChoice.model_fields:
        assert f"choice.{key}" in js + app, f"the page does not read detector.object_choice.{key}"

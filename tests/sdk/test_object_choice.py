"""The object-choice rule is the detector manifest's (``detector.object_choice``), read by every side.

Real converted models (the shipped bundles), the real LiteRT interpreter and a real service: the
SDK, the catalog import (``shoplens index``), ``shoplens search`` and the demo each behave
differently when only the manifest's rule changes; a photo that shows several products returns
them through one batch request; ``shoplens search --html`` draws every searched box.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from live_service import ADMIN_KEY, DEVICE_KEY, live_service
from shoplens.contract.codecs import decode_vector
from shoplens.contract.errors import ManifestError
from shoplens.contract.manifest import MAX_OBJECTS, ObjectChoice, load_manifest
from shoplens.sdk.client import ShoplensClient
from shoplens.sdk.images import load_rgb
from shoplens.sdk.report import box_colour
from shoplens.sdk.runtime import DeviceRuntime, FlowOptions, fuse_hits

ROOT = Path(__file__).resolve().parents[2]
DET, EMB = ROOT / "mobile_assets" / "yolov8n", ROOT / "mobile_assets" / "resnet50v2-s3-256"
#: four val photos of four products, the tiles of the mosaic test (Grocery Store val.txt paths): products
#: the COCO detector boxes (as banana, orange, orange, oven); cartons it does not box are issue 31's detector work
MOSAIC = (
    "val/Fruit/Banana/Banana_001.jpg",
    "val/Fruit/Kiwi/Kiwi_002.jpg",
    "val/Fruit/Lemon/Lemon_003.jpg",
    "val/Vegetables/Zucchini/Zucchini_002.jpg",
)


def bundle_with_rule(dest: Path, **rule: Any) -> Path:
    """The shipped detector bundle (artifacts linked, not copied) whose manifest's object_choice has ``rule``."""
    dest.mkdir(parents=True)
    for f in DET.iterdir():
        if f.name != "manifest.json":
            (dest / f.name).symlink_to(f)
    data = json.loads((DET / "manifest.json").read_text())
    data["detector"]["object_choice"].update(rule)
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest


def assets_with_rule(dest: Path, **rule: Any) -> Path:
    """A mobile_assets-like folder: the shipped embedder and the detector with ``rule``."""
    dest.mkdir(parents=True)
    (dest / EMB.name).symlink_to(EMB)
    bundle_with_rule(dest / DET.name, **rule)
    return dest


@pytest.fixture(scope="module")
def people_photo(coco8_dir: Path) -> Path:
    return coco8_dir / "images" / "val" / "000000000036.jpg"  # a person with an umbrella


# ---- the rule itself ------------------------------------------------------------------------


def test_the_shipped_manifest_spells_out_the_rule_and_an_older_one_gets_the_same(tmp_path: Path) -> None:
    shipped = json.loads((DET / "manifest.json").read_text())
    assert ObjectChoice.model_validate(shipped["detector"]["object_choice"]) == ObjectChoice()
    del shipped["detector"]["object_choice"]  # a manifest written before the rule existed
    (tmp_path / "manifest.json").write_text(json.dumps(shipped))
    assert load_manifest(tmp_path).detector.object_choice == ObjectChoice()  # type: ignore[union-attr]
    for bad in ({"max_objects": MAX_OBJECTS + 1}, {"min_box_fraction": 1.5}, {"crop_margin": -0.1}, {"max_objects": 0}, {"max_overlap": 1.5}):
        shipped["detector"]["object_choice"] = {**ObjectChoice().model_dump(), **bad}
        (tmp_path / "manifest.json").write_text(json.dumps(shipped))
        with pytest.raises(ManifestError, match="object_choice"):
            load_manifest(tmp_path)


def test_flow_options_override_the_manifest_only_where_set() -> None:
    base = ObjectChoice(min_box_fraction=0.2, max_objects=2, crop_margin=0.05, ignore_labels=["cup"], search_whole_photo=False)
    assert FlowOptions().choice(base) == base
    assert FlowOptions(min_box_fraction=0.0).choice(base) == base.model_copy(update={"min_box_fraction": 0.0})
    with pytest.raises(ValueError):
        FlowOptions(max_objects=MAX_OBJECTS + 1).choice(base)


def test_fuse_hits_keeps_each_products_best_score() -> None:
    from shoplens.contract.schemas import ProductHit

    def hits(*pairs: tuple[str, float]) -> list[ProductHit]:
        return [ProductHit(product_id=p, image_id=f"{p}-img", score=s) for p, s in pairs]

    fused = fuse_hits([hits(("a", 0.9), ("b", 0.5)), hits(("b", 0.95), ("c", 0.1))])
    assert [(h.product_id, h.score) for h in fused] == [("b", 0.95), ("a", 0.9), ("c", 0.1)]
    assert [h.product_id for h in fuse_hits([hits(("a", 0.9), ("b", 0.5))], top_k=1)] == ["a"]


# ---- every side reads it ----------------------------------------------------------------------


def test_sdk_follows_the_manifest_rule(tmp_path: Path, people_photo: Path) -> None:
    def sources(**rule: Any) -> list[tuple[str, str]]:
        det = bundle_with_rule(tmp_path / f"det{len(list(tmp_path.iterdir()))}", **rule)
        rt = DeviceRuntime.from_bundle(embedder=EMB, detector=det)
        assert rt.choice == ObjectChoice().model_copy(update=rule)
        return [(o.source, o.label) for o in rt.process(people_photo).objects]

    shipped = sources()
    assert shipped[-1] == ("whole_image", "") and all(s == "detector" and label != "person" for s, label in shipped[:-1])
    assert len(shipped) >= 2, shipped  # the umbrella, then the whole photo
    assert ("detector", "person") in sources(ignore_labels=[], min_box_fraction=0.0, max_overlap=1.0)  # the person is under the umbrella
    assert sources(min_box_fraction=1.0) == [("whole_image", "")]  # no box is that large: the whole photo only
    assert [s for s, _ in sources(max_objects=1, search_whole_photo=False, ignore_labels=[], min_box_fraction=0.0)] == ["detector"]
    # the margin is the manifest's too: the same box embedded with another margin is another vector
    det = bundle_with_rule(tmp_path / "margin", crop_margin=0.5, search_whole_photo=False)
    loose = DeviceRuntime.from_bundle(embedder=EMB, detector=det).process(people_photo).objects[0]
    tight = DeviceRuntime.from_bundle(embedder=EMB, detector=DET, options=FlowOptions(search_whole_photo=False)).process(people_photo).objects[0]
    assert loose.box == tight.box and float(loose.vector @ tight.vector) < 0.999


def test_boxes_of_one_product_give_up_their_slots(tmp_path: Path, grocery_dir: Path) -> None:
    """COCO's YOLOv8n boxes one apple several times (parts, second labels): without the overlap rule
    those boxes fill every slot; with the shipped rule no two searched boxes overlap by more than
    max_overlap of the smaller box, and the first-ranked box is the same."""
    from shoplens.sdk.yolo_decode import box_overlap

    photo = grocery_dir / "val" / "Fruit" / "Apple" / "Golden-Delicious" / "Golden-Delicious_001.jpg"

    def boxes(name: str, **rule: Any) -> np.ndarray:
        rt = DeviceRuntime.from_bundle(embedder=EMB, detector=bundle_with_rule(tmp_path / name, **rule))
        return np.array([o.box for o in rt.process(photo).objects if o.source == "detector"])

    def worst(b: np.ndarray) -> float:
        m = box_overlap(b, b)
        np.fill_diagonal(m, 0)
        return float(m.max()) if len(b) > 1 else 0.0

    loose, shipped = boxes("loose", max_overlap=1.0), boxes("shipped")
    rule = ObjectChoice()
    assert len(loose) == rule.max_objects and worst(loose) > 0.9
    assert 1 <= len(shipped) < len(loose) and worst(shipped) <= rule.max_overlap
    np.testing.assert_allclose(shipped[0], loose[0])


def test_catalog_import_follows_the_manifest_rule(tmp_path: Path, people_photo: Path) -> None:
    """``shoplens index`` (import_catalog, no --min-box) stores each image's main object by the rule."""
    from shoplens.sdk.catalog import CatalogEntry
    from shoplens.sdk.importer import JsonlSink, import_catalog

    model_id = load_manifest(EMB).embedder.model_id  # type: ignore[union-attr]

    def stored(name: str, **rule: Any) -> np.ndarray:
        det = bundle_with_rule(tmp_path / name, **rule)
        rows = tmp_path / f"{name}.jsonl"
        summary = import_catalog([CatalogEntry("umbrella", str(people_photo))], embedder=EMB, detector=det, sink=JsonlSink(rows, model_id),
                                 state_path=tmp_path / f"{name}.db", progress=False)
        assert summary.imported == 1
        row = json.loads(rows.read_text())
        return decode_vector(row["vector"], row["encoding"], 256)

    whole = DeviceRuntime.from_bundle(embedder=EMB).process(people_photo).objects[0].vector
    assert float(stored("big", min_box_fraction=1.0) @ whole) > 0.9999  # no box is large enough: the image itself
    main = DeviceRuntime.from_bundle(embedder=EMB, detector=DET, options=FlowOptions(max_objects=1, search_whole_photo=False)).process(people_photo).objects[0]
    cropped = stored("shipped")
    assert float(cropped @ main.vector) > 0.9999 and float(cropped @ whole) < 0.99


@pytest.mark.slow
def test_demo_follows_the_manifest_rule(tmp_path: Path, shared_dir: Path) -> None:
    """No demo-only settings: the demo searches what the detector manifest's rule says, here one box
    per photo and no whole photo, where the shipped rule searches the whole photo beside the boxes."""
    from shoplens.demo.grocery import load_grocery
    from shoplens.demo.run import run_demo
    from shoplens.resources import grocery_store

    rule = {"max_objects": 1, "min_box_fraction": 0.0, "search_whole_photo": False}
    assets = assets_with_rule(tmp_path / "assets", **rule)
    summary = run_demo(bundle_dir=assets, workdir=tmp_path / "work", report_path=tmp_path / "demo.html", max_queries=3, products=2, workers=1, progress=False)
    queries = [photo for photo, _ in load_grocery(grocery_store().require(), 2).val[:3]]
    ruled = DeviceRuntime.from_bundle(embedder=EMB, detector=assets / DET.name)
    shipped = DeviceRuntime.from_bundle(embedder=EMB, detector=DET)
    boxed = sum(ruled.process(p).objects[0].source == "detector" for p in queries)
    assert summary.objects_per_query == 1 and summary.detector_crops == boxed > 0
    assert all(len(shipped.process(p).objects) > 1 for p in queries)  # the shipped rule would have searched more


# ---- several products per photo, through a real service ----------------------------------------


class CountingClient(ShoplensClient):
    """A real client that counts the search requests it makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[int] = []

    def search_batch(self, vectors: list[str], **kwargs: Any) -> Any:  # type: ignore[override]
        self.requests.append(len(vectors))
        return super().search_batch(vectors, **kwargs)

    def search(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.requests.append(1)
        return super().search(*args, **kwargs)


def _mosaic(grocery_dir: Path, out: Path) -> tuple[Path, list[str]]:
    """The 4 photos of MOSAIC as a 2x2 grid (the val photos are 348 x 348), and their product ids."""
    import csv

    from PIL import Image

    names = {}
    for line in (grocery_dir / "val.txt").read_text().splitlines():
        path, fine, _ = (x.strip() for x in line.split(","))
        names[path] = int(fine)
    classes = {int(r["Class ID (int)"]): r["Class Name (str)"] for r in csv.DictReader((grocery_dir / "classes.csv").open())}
    tiles = [load_rgb(grocery_dir / p) for p in MOSAIC]
    side = tiles[0].shape[0]
    canvas = np.zeros((2 * side, 2 * side, 3), np.uint8)
    for k, tile in enumerate(tiles):
        y, x = divmod(k, 2)
        canvas[y * side : (y + 1) * side, x * side : (x + 1) * side] = tile
    Image.fromarray(canvas).save(out, quality=95)
    return out, [classes[names[p]] for p in MOSAIC]


def _catalog(grocery_dir: Path, wanted: list[str], extra: int = 2) -> list[Any]:
    """Iconic image + 2 train photos of the mosaic's products and of ``extra`` other products."""
    import csv

    from shoplens.sdk.catalog import CatalogEntry

    rows = list(csv.DictReader((grocery_dir / "classes.csv").open()))
    picked = [r for r in rows if r["Class Name (str)"] in wanted] + [r for r in rows if r["Class Name (str)"] not in wanted][:extra]
    train: dict[int, list[str]] = {}
    for line in (grocery_dir / "train.txt").read_text().splitlines():
        path, fine, _ = (x.strip() for x in line.split(","))
        train.setdefault(int(fine), []).append(path)
    entries = []
    for r in picked:
        pid = r["Class Name (str)"]
        images = [r["Iconic Image Path (str)"].lstrip("/")] + train[int(r["Class ID (int)"])][:2]
        entries += [CatalogEntry(pid, str(grocery_dir / p), title=pid) for p in images]
    return entries


@pytest.mark.slow
def test_several_products_in_one_batch_request_and_every_box_in_the_report(tmp_path: Path, grocery_dir: Path) -> None:
    from PIL import Image

    from shoplens.sdk.importer import ApiSink, import_catalog

    photo, products = _mosaic(grocery_dir, tmp_path / "mosaic.jpg")
    model_id = load_manifest(EMB).embedder.model_id  # type: ignore[union-attr]
    with live_service(tmp_path / "catalog.db") as url:
        with ShoplensClient(url, ADMIN_KEY) as admin:
            entries = _catalog(grocery_dir, products)
            summary = import_catalog(entries, embedder=EMB, detector=None, sink=ApiSink(admin, model_id), state_path=tmp_path / "state.db", progress=False)
            assert summary.imported == len(entries)
        rt = DeviceRuntime.from_bundle(embedder=EMB, detector=DET)  # the shipped rule
        with CountingClient(url, DEVICE_KEY) as client:
            result, response = rt.search(photo, client, top_k=5)
        assert client.requests == [len(result.objects)], "every object of the photo goes in one batch request"
        assert len(response.results) == len(result.objects) <= ObjectChoice().max_objects + 1
        found = {r.hits[0].product_id for r in response.results} & set(products)
        assert len(found) >= 3, (found, products, [(o.label, o.box) for o in result.objects])

        def cli(det: Path, name: str) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, "-m", "shoplens", "search", str(photo), "--embedder", str(EMB), "--detector", str(det), "--server", url,
                 "--api-key", DEVICE_KEY, "--json", "--html", str(tmp_path / f"{name}.html"), "--annotated", str(tmp_path / f"{name}.png")],
                capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            return json.loads(out.stdout)

        shown = cli(DET, "shipped")
        assert shown["object_choice"] == ObjectChoice().model_dump()
        assert [o["box"] for o in shown["objects"]] == [list(o.box) for o in result.objects]
        assert [h["product_id"] for h in shown["best"]] == [h.product_id for h in fuse_hits((r.hits for r in response.results), 5)]
        page = (tmp_path / "shipped.html").read_text()
        assert "best match" in page and all(f"object {i}</span>" in page for i in range(1, len(result.objects) + 1))
        drawn = np.asarray(Image.open(tmp_path / "shipped.png").convert("RGB")).reshape(-1, 3)
        for i in range(len(result.objects)):  # each box in its own colour, as its heading on the page
            assert int((drawn == box_colour(i)).all(axis=1).sum()) > 100, f"box {i + 1} is not drawn"

        single = cli(bundle_with_rule(tmp_path / "single", max_objects=1, search_whole_photo=False), "single")
        assert len(single["objects"]) == 1 and single["objects"][0]["source"] == "detector"
        assert "best match" not in (tmp_path / "single.html").read_text()

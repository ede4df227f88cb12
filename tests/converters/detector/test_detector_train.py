"""`shoplens detector train`: scenes with true boxes, a real (tiny) ultralytics run, bad catalog rows named.

The box property test checks the labels against the rendered *image*, not the alpha bookkeeping
that produced them: a scene is rendered twice with the same seed, once with product k recoloured
(its alpha, hence every random choice, unchanged), and the pixels that change by at least half
the colour difference are exactly where k's visible alpha is >= 0.5, the definition of its box.
The training test uses real Grocery Store catalog images.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embedder"))
from shop_catalogs import PRODUCTS, catalog_rows, shop_folder, write_csv  # noqa: E402

from shoplens.converters.detector.backgrounds import BackgroundPool  # noqa: E402
from shoplens.converters.detector.scene_dataset import SceneDatasetError, SceneOptions, build_scene_dataset  # noqa: E402
from shoplens.converters.detector.scenes import MIN_BOX_PX, MIN_VISIBLE, VISIBLE_ALPHA, compose_scene  # noqa: E402
from shoplens.converters.embedder.data import CatalogDataError  # noqa: E402

#: product colours (0/255 channels: each differs from its complement by 255 in every channel)
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255), (0, 0, 0)]
#: a box edge may sit one pixel off the image oracle: where visible alpha is 0.5 to rounding, the pixel change rounds either way
EDGE_PX = 1


def _shape(colour: tuple[int, int, int], w: int, h: int, ellipse: bool) -> Image.Image:
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if ellipse else draw.rectangle)((0, 0, w - 1, h - 1), fill=(*colour, 255))
    return im


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    canvas=st.tuples(st.integers(64, 224), st.integers(64, 224)),
    shapes=st.lists(st.tuples(st.integers(12, 150), st.integers(12, 150), st.booleans()), min_size=1, max_size=8),
    hand=st.booleans(),
)
def test_each_box_tightly_bounds_its_products_visible_pixels(seed: int, canvas: tuple[int, int], shapes: list[tuple[int, int, bool]],
                                                             hand: bool) -> None:
    def render(recolour: int | None = None):
        items = [_shape(tuple(255 - c for c in PALETTE[k]) if k == recolour else PALETTE[k], w, h, ell) for k, (w, h, ell) in enumerate(shapes)]
        return compose_scene(Image.new("RGB", canvas, (90, 90, 90)), items, random.Random(seed), hand_p=1.0 if hand else 0.0, photometric=False)

    scene = render()
    W, H = canvas
    assert scene.image.shape == (H, W, 3)
    assert scene.placed == len(shapes) and len(scene.boxes) == len(scene.labelled) == len(set(scene.labelled))
    by_product = dict(zip(scene.labelled, scene.boxes))
    for k in range(len(shapes)):
        change = np.abs(render(k).image.astype(np.int16) - scene.image.astype(np.int16)).max(axis=2)
        shown = change >= 255 * VISIBLE_ALPHA  # product k's visible alpha >= 0.5, read off the image
        assert abs(int(shown.sum()) - scene.visible_px[k]) <= 2 * (W + H) * EDGE_PX, "the scene's visible area is not what the image shows"
        big_enough = scene.visible_px[k] >= MIN_VISIBLE * scene.own_px[k]
        if k not in by_product:
            ys, xs = np.nonzero(shown)
            assert not big_enough or len(xs) == 0 or min(np.ptp(xs), np.ptp(ys)) + 1 <= MIN_BOX_PX + EDGE_PX, \
                f"product {k} is {scene.visible_px[k] / scene.own_px[k]:.2f} visible but has no box"
            continue
        x0, y0, x1, y1 = by_product[k]
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, "a box leaves the image"
        assert x1 - x0 >= MIN_BOX_PX and y1 - y0 >= MIN_BOX_PX and big_enough, "a mostly hidden product got a box"
        ys, xs = np.nonzero(shown)
        assert len(xs), f"product {k} has a box but the image shows none of it"
        truth = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        off = max(abs(int(a) - int(b)) for a, b in zip(by_product[k], truth))
        assert off <= EDGE_PX, f"box {by_product[k]} vs the product's visible extent in the image {truth}"


@pytest.fixture(scope="module")
def shop(grocery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-product shop catalog (Grocery iconic images, role photo / val rows) in `shoplens index`'s CSV format."""
    root = shop_folder(grocery_dir, tmp_path_factory.mktemp("shop") / "shop")
    write_csv(root / "catalog.csv", catalog_rows(grocery_dir))
    return root


def _boxes_from_labels(label: Path, w: int, h: int) -> list[tuple[float, float, float, float]]:
    out = []
    for line in label.read_text().splitlines():
        c, cx, cy, bw, bh = line.split()
        assert c == "0"
        out.append(((float(cx) - float(bw) / 2) * w, (float(cy) - float(bh) / 2) * h, (float(cx) + float(bw) / 2) * w, (float(cy) + float(bh) / 2) * h))
    return out


def test_scene_folder_is_a_seeded_resumable_yolo_dataset(shop: Path, tmp_path: Path) -> None:
    opts = SceneOptions(shop / "catalog.csv", tmp_path / "scenes", imgsz=128, train=6, val=2)
    first = build_scene_dataset(opts, progress=False)
    assert first.written == 8 and first.counts == {"train": 6, "val": 2} and first.products == {"train": len(PRODUCTS), "val": len(PRODUCTS)}
    assert "names:\n  0: product" in first.data_yaml.read_text()
    img, lab = opts.out / "images" / "train" / "000003.jpg", opts.out / "labels" / "train" / "000003.txt"
    before = img.read_bytes(), lab.read_text()
    with Image.open(img) as im:
        for x0, y0, x1, y1 in _boxes_from_labels(lab, *im.size):
            assert -0.5 <= x0 < x1 <= im.width + 0.5 and -0.5 <= y0 < y1 <= im.height + 0.5
    img.unlink()
    lab.unlink()
    again = build_scene_dataset(opts, progress=False)
    assert again.written == 1, "a rerun writes only the missing scene"
    assert (img.read_bytes(), lab.read_text()) == before, "the rewritten scene is the same picture (seeded per scene)"
    with pytest.raises(SceneDatasetError, match="seed"):
        build_scene_dataset(SceneOptions(shop / "catalog.csv", opts.out, imgsz=128, train=6, val=2, seed=1), progress=False)


def test_masked_shelf_backgrounds_keep_no_whole_photo(grocery_dir: Path) -> None:
    photo = next((grocery_dir / "train").rglob("*.jpg"))
    pool = BackgroundPool(shelves=[photo], procedural=False)
    bg = np.asarray(pool.draw((96, 128), random.Random(3)), dtype=np.float32)
    plain = np.asarray(Image.open(photo).convert("RGB").resize((96, 128)), dtype=np.float32)
    assert bg.shape == (128, 96, 3)
    assert np.abs(np.diff(bg, axis=1)).mean() < 0.5 * np.abs(np.diff(plain, axis=1)).mean(), "a masked shelf is blurred"


def test_bad_catalog_rows_are_named_before_any_scene(shop: Path, tmp_path: Path) -> None:
    from shoplens.cli import app

    lines = (shop / "catalog.csv").read_text().splitlines()
    bad = shop / "bad.csv"
    bad.write_text("\n".join(lines + [lines[1].replace(lines[1].split(",")[1], "images/no-such.jpg"), "Ghost-Cola,https://cdn.example/g.jpg,,,catalog"]) + "\n")
    with pytest.raises(CatalogDataError, match=f"line {len(lines) + 2}: .*URL"):
        build_scene_dataset(SceneOptions(bad, tmp_path / "s1", imgsz=64, train=2, val=1), progress=False)
    res = CliRunner().invoke(app, ["detector", "train", "--catalog", str(bad), "--out", str(tmp_path / "s2"), "--imgsz", "64", "--scenes", "2"])
    assert res.exit_code == 2, res.output
    assert f"line {len(lines) + 2}" in res.output and "is a URL" in res.output
    assert not (tmp_path / "s2" / "images").exists(), "nothing is written for a bad catalog"
    missing = shop / "missing.csv"
    missing.write_text("\n".join(lines[:2] + [lines[1].replace(lines[1].split(",")[1], "images/no-such.jpg")] + lines[2:]) + "\n")
    with pytest.raises(CatalogDataError, match="line 3: .*(not found|no-such.jpg)"):
        build_scene_dataset(SceneOptions(missing, tmp_path / "s3", imgsz=64, train=2, val=1), progress=False)


#: a few real steps: SGD at a fixed rate (no warmup, an optimizer step every batch, no mosaic) so 4 epochs show the loss falling
TINY_RUN = dict(optimizer="SGD", lr0=0.02, warmup_epochs=0, nbs=8, mosaic=0.0, val=False)


@pytest.fixture(scope="module")
def trained(shop: Path, yolov8n_path: Path, tmp_path_factory: pytest.TempPathFactory):
    from shoplens.converters.detector.train import DetectorTrainOptions, train_detector

    scenes = SceneOptions(shop / "catalog.csv", tmp_path_factory.mktemp("detector") / "run", imgsz=96, train=32, val=4)
    opts = DetectorTrainOptions(scenes, weights=str(yolov8n_path), epochs=4, batch=8, device="cpu", train_args=TINY_RUN)
    return opts, train_detector(opts, progress=False)


@pytest.mark.slow
def test_a_short_real_run_lowers_the_loss_and_finds_a_pasted_product(trained, grocery_dir: Path) -> None:
    from shoplens.converters.detector.reference import load_torch_detector
    from shoplens.converters.detector.scene_dataset import _cutout
    from shoplens.converters.embedder.data import load_grocery

    opts, result = trained
    assert result.class_names == ["product"] and result.best.is_file() and result.epochs_done == opts.epochs
    per_epoch = np.array(result.batch_losses).reshape(opts.epochs, -1).mean(axis=1)
    assert per_epoch[-1] < 0.9 * per_epoch[0], f"train loss per epoch {per_epoch}"

    ref = load_torch_detector(result.best)
    assert ref.class_names == ["product"]
    product = _cutout(str(load_grocery(grocery_dir).images[PRODUCTS[2]][0].path), 96)
    scene = compose_scene(BackgroundPool().draw((96, 96), random.Random(5)), [product], random.Random(5), hand_p=0.0)
    (truth,) = scene.boxes
    pred = ref.model.predict(scene.image[..., ::-1], imgsz=96, conf=0.01, device="cpu", verbose=False)[0]
    boxes = pred.boxes.xyxy.numpy()
    assert len(boxes), "no box on a pasted product"

    def iou(b: np.ndarray) -> float:
        ix = max(0.0, min(b[2], truth[2]) - max(b[0], truth[0])) * max(0.0, min(b[3], truth[3]) - max(b[1], truth[1]))
        return ix / ((b[2] - b[0]) * (b[3] - b[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - ix)

    assert max(iou(b) for b in boxes) >= 0.5, f"no box on the product {truth}: {boxes[:5]}"


@pytest.mark.slow
def test_a_finished_run_is_not_trained_again_and_converts_as_product(trained, grocery_dir: Path, tmp_path: Path) -> None:
    from shoplens.converters.detector.convert import DetectorConvertOptions, _start_manifest, default_eval_dirs
    from shoplens.converters.detector.reference import load_torch_detector
    from shoplens.converters.detector.train import train_detector

    opts, first = trained
    again = train_detector(opts, progress=False)
    assert again.batch_losses == [] and again.epochs_done == first.epochs_done and again.best == first.best
    ref = load_torch_detector(first.best)
    manifest = _start_manifest(tmp_path, DetectorConvertOptions(weights=first.best, out=tmp_path), ref, boxes_normalized=True)
    assert manifest.detector is not None and manifest.detector.class_names == ["product"]
    assert manifest.detector.object_choice.ignore_labels == [], "a product-only model has no 'person' to ignore"
    from shoplens.converters.detector.train_cli import next_step

    printed = next_step(first.best, 96, first.dataset.root, tmp_path / "bundle", [grocery_dir / "train"]).split()
    assert printed[printed.index("--eval-labelled") + 1] == str(first.dataset.root / "images" / "val")
    calib = [printed[i + 1] for i, a in enumerate(printed) if a == "--calib"]  # its own scenes and real photos
    assert calib == [str(first.dataset.root / "images" / "train"), str(grocery_dir / "train")]
    training = manifest.source.training  # the run travels with the bundle: epochs, time, final val metrics
    assert training is not None and training.epochs == first.epochs_done and 0 < training.seconds <= first.seconds
    assert training.imgsz == opts.scenes.imgsz and "metrics/mAP50(B)" in training.metrics
    labelled, extra = default_eval_dirs(ref.class_names)
    assert labelled == [], "coco8's COCO labels cannot score a one-class model"

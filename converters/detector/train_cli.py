"""``shoplens detector train``: the product detector from a catalog's own images (scenes, then ultralytics).

Heavy imports happen inside the command so ``shoplens --help`` stays fast.
Exit codes: 0 trained (or already trained); 2 a bad catalog (every bad row
listed), a scene folder made from other data, or missing weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()

detector_app = typer.Typer(help="Build the product detector: one class, 'product', fine-tuned on scenes made from the catalog.",
                           no_args_is_help=True)

#: what the next step converts (the precisions the shipped detector bundle carries)
BUNDLE_PRECISIONS = "tflite:fp32,tflite:int8,coreml:int8"


#: int8 calibration photos for a trained detector: its train scenes and real shop photos, evenly sampled
CALIB_MAX = 128


def next_step(best: Path, imgsz: int, scene_root: Path, out: Path, real_photos: list[Path]) -> str:
    """The convert command for a trained checkpoint. Its own val scenes give the gate's mAP (COCO labels do
    not fit one class). int8 is calibrated on its train scenes *and* real photos: on real photos alone
    (the converter's default) the activation ranges miss the pasted products' and the int8 mAP50 fell
    0.055 below fp32 on the val scenes, failing the 0.03 gate; with both it fell 0.025 (docs/converters.md)."""
    calib = " ".join(f"--calib {d}" for d in [scene_root / "images" / "train", *real_photos])
    return (f"shoplens convert detector --weights {best} --imgsz {imgsz} --precision {BUNDLE_PRECISIONS} "
            f"--eval-labelled {scene_root / 'images' / 'val'} {calib} --calib-max {CALIB_MAX} --out {out}")


@detector_app.command("train")
def train_cmd(
    catalog: Optional[Path] = typer.Option(None, help="The catalog: catalog.csv / .jsonl / folder as `shoplens index` reads it (role=catalog rows are the products; role=photo rows become masked shelf backgrounds), or a Grocery folder with classes.csv (default: the Grocery Store)."),
    out: Path = typer.Option(Path("runs/product_detector"), help="Folder for the YOLO dataset (images/, labels/, data.yaml, scenes.json) and the run (train/weights/best.pt). A rerun resumes."),
    weights: str = typer.Option("yolov8n.pt", help="COCO checkpoint to fine-tune (a path, or a name looked up like `shoplens convert detector --weights`). YOLO checkpoints are AGPL-3.0: see docs/converters.md."),
    imgsz: int = typer.Option(320, min=32, help="Scene size and training input size (multiple of 32; 320-416 trains on a CPU)."),
    scenes: int = typer.Option(2000, min=1, help="Training scenes."),
    val_scenes: int = typer.Option(200, min=1, help="Validation scenes (held-out products when the catalog has 10 or more)."),
    max_products: int = typer.Option(8, min=1, max=32, help="Most products pasted in one scene (1 to this; a third of the scenes have one)."),
    backgrounds: list[Path] = typer.Option([], help="Photos without products (files or folders, repeatable) used as scene backgrounds as they are. Default: the project's scene photos (coco8, coral)."),
    shelf_photos: bool = typer.Option(True, "--shelf-photos/--no-shelf-photos", help="Use the catalog's shop photos (Grocery train photos, role=photo rows) as backgrounds, masked: tiles shuffled and blurred so no whole product is left."),
    epochs: int = typer.Option(30, min=1, help="Training epochs (ultralytics stops early after --patience epochs without a better val mAP)."),
    batch: int = typer.Option(16, min=1, help="Batch size."),
    patience: int = typer.Option(10, min=1, help="Early-stopping patience in epochs."),
    device: str = typer.Option("", help="ultralytics device: '' picks a GPU when there is one, else CPU; or cpu, 0, 0,1."),
    seed: int = typer.Option(0, help="Seeds the scenes, the val products and the training."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete --out first (new scenes, new run) instead of resuming."),
    scenes_only: bool = typer.Option(False, "--scenes-only", help="Write the scene folder and stop (inspect it, or train elsewhere with its data.yaml)."),
    bundle: Path = typer.Option(Path("mobile_assets/product_detector"), help="Bundle folder the printed next step converts into."),
) -> None:
    """Train a one-class product detector from the catalog's product images; seeded and resumable.

    Writes a YOLO dataset of synthetic scenes (catalog cut-outs pasted 1-8 per scene with known boxes), fine-tunes the COCO checkpoint (AGPL-3.0) on it, and prints the `shoplens convert detector` command.
    """
    from shoplens.converters.detector.scene_dataset import SceneDatasetError, SceneOptions, build_scene_dataset, default_backgrounds
    from shoplens.converters.detector.train import DetectorTrainOptions, train_detector
    from shoplens.converters.embedder.cli import _catalog_dir, _catalog_exit
    from shoplens.converters.embedder.data import CatalogDataError
    from shoplens.resources import ResourceNotFound

    if imgsz % 32:
        raise typer.BadParameter(f"{imgsz} is not a multiple of 32", param_hint="--imgsz")
    if fresh and out.exists():
        shutil.rmtree(out)
    opts = SceneOptions(_catalog_dir(catalog), out, imgsz=imgsz, train=scenes, val=val_scenes, max_products=max_products, seed=seed,
                        backgrounds=list(backgrounds) or default_backgrounds(), shelf_photos=shelf_photos)
    try:
        if scenes_only:
            ds = build_scene_dataset(opts)
            console.print(f"{ds.counts['train']} train / {ds.counts['val']} val scenes ({ds.boxes['train']} / {ds.boxes['val']} boxes) in {ds.root}; "
                          f"train with: yolo detect train data={ds.data_yaml} or rerun without --scenes-only")
            return
        result = train_detector(DetectorTrainOptions(opts, weights=weights, epochs=epochs, batch=batch, patience=patience, device=device))
    except CatalogDataError as exc:
        raise _catalog_exit(exc) from None
    except (SceneDatasetError, ResourceNotFound, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    ds = result.dataset
    console.print(f"scenes: {ds.counts['train']} train / {ds.counts['val']} val ({ds.written} written now), "
                  f"products {ds.products['train']} train / {ds.products['val']} val")
    if result.epochs_done and not result.batch_losses:
        console.print(f"{result.run_dir} already finished ({result.epochs_done} epochs); --fresh trains again")
    else:
        shown = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in result.metrics.items() if k.startswith("metrics/"))
        console.print(f"trained {result.epochs_done} epochs in {result.seconds / 60:.1f} min; val: {shown or 'n/a'}")
    console.print(f"checkpoint: {result.best} (classes {result.class_names})")
    from shoplens.converters.detector.convert import default_calib_dirs

    typer.echo("next: " + next_step(result.best, imgsz, ds.root, bundle, default_calib_dirs()))  # one line: copy-pastable


__all__ = ["detector_app", "next_step"]

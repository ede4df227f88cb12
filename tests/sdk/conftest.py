import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

MOBILENET = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


@pytest.fixture(scope="session")
def mobilenet_bundle(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ImageNet MobileNetV1 TFLite embedder from ../shared, wrapped as a bundle: a real,
    non-ResNet third-party model (symlinked, never copied)."""
    from shoplens.sdk.wrap import wrap_tflite_embedder

    out = tmp_path_factory.mktemp("mobilenet")
    wrap_tflite_embedder(shared_dir / "weights" / MOBILENET, out, name="mobilenet-v1-imagenet", link=True)
    return out

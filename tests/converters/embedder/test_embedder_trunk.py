"""The ResNet50-V2 port: real weights load, BN statistics match real photos, the registry behaves offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.converters.embedder.data import load_batch, load_catalog
from shoplens.converters.embedder.model import EmbedderConfig, build_embedder
from shoplens.converters.embedder.resnet_v2 import ResNetV2Trunk
from shoplens.converters.embedder.trunks import TRUNKS, get_trunk
from shoplens.resources import ResourceNotFound

import bn_stats


def bn_agreement(trunk: ResNetV2Trunk, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per BN of the port, by its GluonCV name: see bn_stats.bn_agreement."""
    return bn_stats.bn_agreement(trunk, x, trunk.bn_names())


@pytest.fixture(scope="module")
def photos(grocery_dir: Path) -> torch.Tensor:
    train = load_catalog(grocery_dir).split("train")
    batch = load_batch([s.path for s in train[::110]], 224)  # 24 photos across products
    model = build_embedder(EmbedderConfig(input_size=224), random_init=True)
    return model.normalise_nchw(torch.from_numpy(batch).permute(0, 3, 1, 2))


def test_every_bn_matches_batch_statistics_of_real_photos(photos: torch.Tensor) -> None:
    torch.set_num_threads(2)
    trunk = get_trunk("resnet50v2-imagenet-s3").build().eval()
    stats = bn_agreement(trunk, photos)
    assert len(stats) == 2 + 3 * (3 + 4 + 6) + 1  # stem BNs, 3 per unit, closing BN
    bad = {n: s for n, s in stats.items() if s[0] > 0.5 or s[1] > 1.0}
    assert not bad, f"BN statistics disagree with real photos (port error?): {bad}"


def test_bn_check_rejects_a_wrong_port(photos: torch.Tensor) -> None:
    """The same check fails when the weights are wrong (so the test above can fail)."""
    torch.set_num_threads(2)
    trunk = get_trunk("resnet50v2-imagenet-s3").build().eval()
    with torch.no_grad():  # output channels of one 1x1 conv in reverse order: plausible shapes, wrong layout
        conv = trunk.stage2[1].conv1
        conv.weight.copy_(conv.weight.flip(0))
    stats = bn_agreement(trunk, photos)
    assert any(s[0] > 0.5 or s[1] > 1.0 for s in stats.values())


def test_registry_entries_and_offline_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"resnet50v2-imagenet-s3", "torchvision-resnet18", "torchvision-resnet34", "torchvision-resnet50", "torchvision-resnet101"} <= set(TRUNKS)
    assert get_trunk("resnet50").name == "torchvision-resnet50"
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ResourceNotFound, match=r"(?s)resnet18-f37072fd\.pth.*not available offline.*hub/checkpoints"):
        get_trunk("torchvision-resnet18").build("IMAGENET1K_V1")
    # random init only when asked, and it builds without any file
    trunk = get_trunk("torchvision-resnet18").build(random_init=True)
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(ResourceNotFound, match="missing.npz"):
        get_trunk("resnet50v2-imagenet-s3").build("missing.npz")

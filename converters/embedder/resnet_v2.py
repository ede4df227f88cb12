"""ResNet50-V2 (pre-activation, GluonCV layout) trunk in PyTorch, loaded from the shared ``.npz``.

The only ImageNet ResNet weights available offline are the GluonCV ResNet50-V2
tensors exported through ONNX (``resnetv24_*`` names, see
``../shared/weights/SOURCE.txt``). Stage 4 and the classifier are incomplete, so
the trunk ends after stage 3 (1024 channels, stride 16). Because V2 blocks are
pre-activation, the sum leaving stage 3 is not normalised; the file does hold
stage 4's first pre-activation BN (``stage4_batchnorm0``), which is exactly the
BN-ReLU the original network applies to that sum, so it closes the trunk.

Every BN is a plain ``nn.BatchNorm2d`` whose module name records the GluonCV
tensor prefix (``bn_names``), so the BN-statistics check can report by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

PREFIX = "resnetv24_"
#: bottleneck units per stage (ResNet50); only stages 1-3 are in the file
UNITS = (3, 4, 6)
CHANNELS = (256, 512, 1024)
STRIDES = (1, 2, 2)
BN_EPS = 1e-5  # GluonCV BatchNorm default
FEATURE_DIM = 1024


class BottleneckV2(nn.Module):
    """BN-ReLU -> 1x1 -> BN-ReLU -> 3x3 (stride) -> BN-ReLU -> 1x1, plus identity or projection.

    The projection (first unit of a stage) reads the first BN-ReLU output, as in GluonCV.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = out_ch // 4
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.downsample = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = torch.relu(self.bn1(x))
        if self.downsample is not None:
            residual = self.downsample(x)
        x = self.conv1(x)
        x = self.conv2(torch.relu(self.bn2(x)))
        x = self.conv3(torch.relu(self.bn3(x)))
        return x + residual


class ResNetV2Trunk(nn.Module):
    """Stem + stages 1-3 + the closing BN-ReLU: normalised float NCHW image in, [N,1024,H/16,W/16] out."""

    feature_dim = FEATURE_DIM
    stride = 16

    def __init__(self) -> None:
        super().__init__()
        self.bn_input = nn.BatchNorm2d(3, eps=BN_EPS)
        self.conv0 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn_stem = nn.BatchNorm2d(64, eps=BN_EPS)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_ch = 64
        for n, ch, stride in zip(UNITS, CHANNELS, STRIDES):
            units = [BottleneckV2(in_ch, ch, stride, project=True)]
            units += [BottleneckV2(ch, ch, 1, project=False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = ch
        self.stage1, self.stage2, self.stage3 = stages
        self.bn_out = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn_stem(self.conv0(self.bn_input(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return torch.relu(self.bn_out(x))

    def split(self, trainable_units: int) -> tuple[nn.Module, nn.Module]:
        """(frozen head part, trainable tail) sharing this trunk's modules; the tail is the last
        ``trainable_units`` stage-3 units plus the closing BN-ReLU (frozen features can be cached)."""
        units = list(self.stage3)
        if not 0 <= trainable_units <= len(units):
            raise ValueError(f"trainable_units must be 0..{len(units)}, got {trainable_units}")
        cut = len(units) - trainable_units
        frozen = nn.Sequential(_Stem(self), self.stage1, self.stage2, *units[:cut])
        tail = nn.Sequential(*units[cut:], self.bn_out, nn.ReLU())
        return frozen, tail

    # ---- GluonCV names ---------------------------------------------------------
    def bn_names(self) -> dict[str, nn.BatchNorm2d]:
        """GluonCV tensor prefix -> BN module (the map the loader and the BN check share)."""
        names: dict[str, nn.BatchNorm2d] = {"batchnorm0": self.bn_input, "batchnorm1": self.bn_stem}
        for s, stage in enumerate((self.stage1, self.stage2, self.stage3), start=1):
            for k, unit in enumerate(stage):
                for j, bn in enumerate((unit.bn1, unit.bn2, unit.bn3)):
                    names[f"stage{s}_batchnorm{3 * k + j}"] = bn
        names["stage4_batchnorm0"] = self.bn_out
        return names

    def conv_names(self) -> dict[str, nn.Conv2d]:
        names: dict[str, nn.Conv2d] = {"conv0": self.conv0}
        for s, stage in enumerate((self.stage1, self.stage2, self.stage3), start=1):
            for k, unit in enumerate(stage):
                if k == 0:
                    convs = [unit.conv1, unit.conv2, unit.conv3, unit.downsample]
                    idx = [0, 1, 2, 3]
                else:
                    convs = [unit.conv1, unit.conv2, unit.conv3]
                    idx = [3 * k + 1, 3 * k + 2, 3 * k + 3]
                for i, conv in zip(idx, convs):
                    names[f"stage{s}_conv{i}"] = conv
        return names


class _Stem(nn.Module):
    """The stem as a module (for ``split``), delegating to the trunk's layers."""

    def __init__(self, trunk: ResNetV2Trunk) -> None:
        super().__init__()
        self.bn_input, self.conv0, self.bn_stem, self.pool = trunk.bn_input, trunk.conv0, trunk.bn_stem, trunk.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn_stem(self.conv0(self.bn_input(x)))))


def load_npz_weights(trunk: ResNetV2Trunk, path: str | os.PathLike[str]) -> list[str]:
    """Copy every stem/stage 1-3 tensor from the GluonCV ``.npz``; returns the keys used.

    A missing or mis-shaped tensor is an error (a silently half-loaded trunk
    would still run and produce plausible but worse vectors).
    """
    data = np.load(Path(path))
    used: list[str] = []

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        full = PREFIX + key
        if full not in data:
            raise KeyError(f"{path}: tensor {full} missing (see SOURCE.txt for the layout)")
        arr = data[full]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{path}: {full} has shape {arr.shape}, the trunk expects {tuple(shape)}")
        used.append(full)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    with torch.no_grad():
        for name, bn in trunk.bn_names().items():
            n = bn.num_features
            bn.weight.copy_(take(f"{name}_gamma", (n,)))
            bn.bias.copy_(take(f"{name}_beta", (n,)))
            bn.running_mean.copy_(take(f"{name}_running_mean", (n,)))
            bn.running_var.copy_(take(f"{name}_running_var", (n,)))
        for name, conv in trunk.conv_names().items():
            conv.weight.copy_(take(f"{name}_weight", tuple(conv.weight.shape)))
    return used

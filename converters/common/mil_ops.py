"""The numpy implementation of each ML program op that ``mil_eval`` executes.

Each op reads its inputs through ``Args`` (fp16 tensors upcast to float32: the
evaluator rounds every fp16-typed output back, which is what emulates fp16
storage) and returns numpy arrays; ``OPS`` maps op types to these functions.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class UnsupportedOp(NotImplementedError):
    """The program uses an op this evaluator does not implement (name and type in the message)."""


_DTYPE_NAMES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class Args:
    """Op inputs by name: tensors as float32 (fp16 upcast for compute), constants as numpy values."""

    def __init__(self, op: Any, env: dict[str, np.ndarray]) -> None:
        self.op, self.env = op, env

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def __call__(self, name: str, default: Any = None) -> Any:
        v = self.op.inputs.get(name)
        if v is None:
            return default
        if isinstance(v, (list, tuple)):
            return [self._value(x) for x in v]
        return self._value(v)

    def _value(self, var: Any) -> Any:
        if var.name in self.env:
            x = self.env[var.name]
        elif var.val is not None:
            x = np.asarray(var.val)
        else:
            raise KeyError(f"{self.op.name}: input {var.name} has no value yet")
        if x.dtype == np.float16:
            return x.astype(np.float32)
        return x


# ---- ops -------------------------------------------------------------------------

OPS: dict[str, Callable[[Any, Args], Any]] = {}


def _op(*names: str) -> Callable[[Callable[[Any, Args], Any]], Callable[[Any, Args], Any]]:
    def deco(fn: Callable[[Any, Args], Any]) -> Callable[[Any, Args], Any]:
        for n in names:
            OPS[n] = fn
        return fn

    return deco


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Any, Args], Any]:
    return lambda op, a: fn(a("x"), a("y"))


for _name, _fn in {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
    "floor_div": np.floor_divide,
    "greater": np.greater,
    "less": np.less,
    "equal": np.equal,
}.items():
    OPS[_name] = _binary(_fn)

for _name, _fn in {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "abs": np.abs,
    "floor": np.floor,
    "identity": lambda x: x,
}.items():
    OPS[_name] = (lambda f: lambda op, a: f(a("x")))(_fn)


@_op("cast")
def _cast(op: Any, a: Args) -> np.ndarray:
    return a("x").astype(_DTYPE_NAMES[str(a("dtype"))])


@_op("clip")
def _clip(op: Any, a: Args) -> np.ndarray:
    return np.clip(a("x"), a("alpha"), a("beta"))


@_op("gelu")
def _gelu(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    if str(a("mode", "EXACT")) == "EXACT":
        from math import erf, sqrt

        return x * 0.5 * (1.0 + np.vectorize(erf)(x / sqrt(2.0)).astype(np.float32))
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@_op("softmax")
def _softmax(op: Any, a: Args) -> np.ndarray:
    x, axis = a("x"), int(a("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[Any, Args], Any]:
    def run(op: Any, a: Args) -> np.ndarray:
        axes = a("axes")
        axes = tuple(int(v) for v in np.atleast_1d(axes)) if axes is not None else None
        return fn(a("x"), axis=axes, keepdims=bool(a("keep_dims", False)))

    return run


OPS["reduce_mean"] = _reduce(np.mean)
OPS["reduce_sum"] = _reduce(np.sum)
OPS["reduce_max"] = _reduce(np.max)
OPS["reduce_l2_norm"] = _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)))


@_op("l2_norm")
def _l2_norm(op: Any, a: Args) -> np.ndarray:
    """MIL semantics: the last three dims are normalised, ``x / sqrt(sum(x^2) + epsilon)``."""
    x, eps = a("x"), float(a("epsilon", 1e-6))
    if x.ndim < 3:
        raise UnsupportedOp(f"{op.name}: l2_norm needs rank >= 3, got {x.ndim}")
    return x / np.sqrt(np.sum(x * x, axis=(-3, -2, -1), keepdims=True) + eps)


@_op("concat")
def _concat(op: Any, a: Args) -> np.ndarray:
    vals, axis = a("values"), int(a("axis"))
    if bool(a("interleave", False)):
        raise UnsupportedOp(f"{op.name}: concat with interleave=True")
    return np.concatenate(vals, axis=axis)


@_op("split")
def _split(op: Any, a: Args) -> tuple[np.ndarray, ...]:
    x, axis = a("x"), int(a("axis"))
    sizes = a("split_sizes")
    if sizes is None:
        return tuple(np.split(x, int(a("num_splits")), axis=axis))
    return tuple(np.split(x, np.cumsum(np.asarray(sizes))[:-1], axis=axis))


@_op("reshape")
def _reshape(op: Any, a: Args) -> np.ndarray:
    return a("x").reshape([int(s) for s in a("shape")])


@_op("transpose")
def _transpose(op: Any, a: Args) -> np.ndarray:
    return np.transpose(a("x"), [int(p) for p in a("perm")])


@_op("squeeze")
def _squeeze(op: Any, a: Args) -> np.ndarray:
    axes = a("axes")
    return np.squeeze(a("x"), axis=tuple(int(v) for v in axes) if axes is not None else None)


@_op("expand_dims")
def _expand_dims(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    for ax in sorted(int(v) for v in a("axes")):
        x = np.expand_dims(x, ax)
    return x


@_op("slice_by_index")
def _slice_by_index(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    rank = x.ndim
    begin = [int(v) for v in a("begin")]
    end = [int(v) for v in a("end")]
    stride = [int(v) for v in a("stride", np.ones(rank, int))]
    bmask = [bool(v) for v in a("begin_mask", np.zeros(rank, bool))]
    emask = [bool(v) for v in a("end_mask", np.zeros(rank, bool))]
    smask = [bool(v) for v in a("squeeze_mask", np.zeros(rank, bool))]
    idx: list[Any] = []
    for i in range(rank):
        if smask[i]:
            idx.append(begin[i])
            continue
        b = None if bmask[i] else begin[i]
        e = None if emask[i] else end[i]
        idx.append(slice(b, e, stride[i]))
    return x[tuple(idx)]


@_op("matmul")
def _matmul(op: Any, a: Args) -> np.ndarray:
    x, y = a("x"), a("y")
    if bool(a("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@_op("linear")
def _linear(op: Any, a: Args) -> np.ndarray:
    y = a("x") @ a("weight").T
    b = a("bias")
    return y + b if b is not None else y


@_op("batch_norm")
def _batch_norm(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    gamma, beta = a("gamma"), a("beta")
    y = (x - a("mean").reshape(shape)) / np.sqrt(a("variance").reshape(shape) + float(a("epsilon", 1e-5)))
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _spatial_pads(op: Any, a: Args, x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]) -> list[tuple[int, int]]:
    """Per spatial dim (before, after) padding for pad_type valid / custom / same / same_lower."""
    pad_type = str(a("pad_type", "valid"))
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = [int(v) for v in a("pad")]
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for i in range(n):
            size = x.shape[2 + i]
            eff = (kernel[i] - 1) * dilations[i] + 1
            total = max((-(-size // strides[i]) - 1) * strides[i] + eff - size, 0)
            small, big = total // 2, total - total // 2
            out.append((big, small) if pad_type == "same_lower" else (small, big))
        return out
    raise UnsupportedOp(f"{op.name}: pad_type {pad_type!r}")


@_op("conv")
def _conv(op: Any, a: Args) -> np.ndarray:
    """2-D grouped convolution as windows x weights (einsum over a strided view)."""
    x, w = a("x"), a("weight")
    if x.ndim != 4:
        raise UnsupportedOp(f"{op.name}: only 2-D conv is implemented (x rank {x.ndim})")
    groups = int(a("groups", 1))
    strides = [int(v) for v in a("strides", [1, 1])]
    dil = [int(v) for v in a("dilations", [1, 1])]
    kh, kw = int(w.shape[2]), int(w.shape[3])
    pads = _spatial_pads(op, a, x, [kh, kw], strides, dil)
    x = np.pad(x, [(0, 0), (0, 0), pads[0], pads[1]])
    n, c, h, wd = x.shape
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]  # n c oh ow kh kw
    oh, ow = win.shape[2], win.shape[3]
    cg, og = c // groups, w.shape[0] // groups
    win = win.reshape(n, groups, cg, oh, ow, kh, kw)
    wg = w.reshape(groups, og, cg, kh, kw).astype(np.float32)
    if groups == 1:
        cols = np.ascontiguousarray(win[:, 0].transpose(0, 2, 3, 1, 4, 5)).reshape(n * oh * ow, cg * kh * kw)
        y = (cols @ wg[0].reshape(og, -1).T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2)
    else:
        y = np.einsum("ngchwkl,gockl->ngohw", win, wg, optimize=True).reshape(n, groups * og, oh, ow)
    b = a("bias")
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def _pool(reduce: str) -> Callable[[Any, Args], Any]:
    def run(op: Any, a: Args) -> np.ndarray:
        x = a("x")
        k = [int(v) for v in a("kernel_sizes")]
        s = [int(v) for v in a("strides", k)]
        if bool(a("ceil_mode", False)):
            raise UnsupportedOp(f"{op.name}: pooling with ceil_mode=True")
        pads = _spatial_pads(op, a, x, k, s, [1, 1])
        fill = -np.inf if reduce == "max" else 0.0
        xp = np.pad(x, [(0, 0), (0, 0), pads[0], pads[1]], constant_values=fill)
        win = np.lib.stride_tricks.sliding_window_view(xp, tuple(k), axis=(2, 3))[:, :, :: s[0], :: s[1]]
        if reduce == "max":
            return win.max(axis=(-2, -1))
        if bool(a("exclude_padding_from_average", False)) and any(p != (0, 0) for p in pads):
            ones = np.pad(np.ones(x.shape[2:], np.float32), list(pads))
            counts = np.lib.stride_tricks.sliding_window_view(ones, tuple(k))[:: s[0], :: s[1]].sum(axis=(-2, -1))
            return win.sum(axis=(-2, -1)) / counts
        return win.mean(axis=(-2, -1))

    return run


OPS["max_pool"] = _pool("max")
OPS["avg_pool"] = _pool("avg")


@_op("upsample_nearest_neighbor")
def _upsample_nearest(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    sh, sw = float(a("scale_factor_height", 1)), float(a("scale_factor_width", 1))
    h, w = x.shape[-2:]
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    rows = np.minimum((np.arange(oh) / sh).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(ow) / sw).astype(np.int64), w - 1)
    return x[..., rows, :][..., cols]


@_op("pad")
def _pad(op: Any, a: Args) -> np.ndarray:
    x = a("x")
    p = [int(v) for v in a("pad")]
    mode = str(a("mode", "constant"))
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(a("constant_val", 0.0)))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


SUPPORTEDOPS: frozenset[str] = frozenset(OPS) | {"const"}

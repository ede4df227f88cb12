"""Which optional extras are installed, and a clear error when a command needs a missing one."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util

from shoplens.contract.errors import ShoplensError

#: extra -> (distribution name, import name) that must be present
EXTRAS: dict[str, list[tuple[str, str]]] = {
    "cloud": [("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("pymilvus", "pymilvus"), ("milvus-lite", "milvus_lite"), ("prometheus-client", "prometheus_client")],
    "device": [("ai-edge-litert", "ai_edge_litert"), ("pillow", "PIL"), ("httpx", "httpx")],
    "convert": [
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("ultralytics", "ultralytics"),
        ("coremltools", "coremltools"),
        ("scikit-learn", "sklearn"),
        ("litert-torch", "litert_torch"),
        ("ai-edge-quantizer", "ai_edge_quantizer"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime"),
    ],
    "dev": [("pytest", "pytest"), ("hypothesis", "hypothesis"), ("milvus", "milvus")],
}


class MissingExtra(ShoplensError, ImportError):
    """A command needs packages from an extra that is not installed."""


def dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def missing_packages(extra: str) -> list[str]:
    """Distributions of ``extra`` that are not installed (found without importing them)."""
    return [d for d, mod in EXTRAS[extra] if dist_version(d) is None or importlib.util.find_spec(mod) is None]


def require_extra(extra: str) -> None:
    """Raise a readable error naming the pip command, instead of a bare ImportError deep inside."""
    missing = missing_packages(extra)
    if missing:
        raise MissingExtra(
            f"this needs the '{extra}' extra (missing: {', '.join(missing)}). "
            f'Install it with: pip install "shoplens[{extra}]"'
        )

"""Which target x precision pairs one conversion makes, from the CLI's comma lists.

Both converters accept the same syntax: ``fp32,int8`` applies every precision to
every target, and ``coreml:int8`` limits one entry to one target. A pair the
target does not offer is skipped with a reason rather than failing the run, so
one command line can ask for "int8 wherever it exists".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shoplens.contract.manifest import ArtifactFormat, Precision
from shoplens.converters.common.errors import ConversionError


def parse_target(name: str) -> ArtifactFormat:
    try:
        return ArtifactFormat(name.strip().lower())
    except ValueError:
        raise ConversionError(f"unknown target {name!r} (choose tflite, coreml)") from None


def parse_precision(name: str) -> Precision:
    try:
        return Precision(name.strip().lower())
    except ValueError:
        raise ConversionError(f"unknown precision {name!r} (choose from {', '.join(p.value for p in Precision)})") from None


def precision_plan(
    targets: Iterable[str],
    precisions: Iterable[str],
    offered: Mapping[ArtifactFormat, Iterable[Precision]],
) -> tuple[list[tuple[ArtifactFormat, Precision]], list[str]]:
    """``(plan, skipped)``: the pairs to convert in request order, and one reason per pair not offered."""
    plan: list[tuple[ArtifactFormat, Precision]] = []
    skipped: list[str] = []
    entries = [p.strip().lower() for p in precisions if p.strip()]
    for t in targets:
        fmt = parse_target(t)
        if fmt not in offered:
            raise ConversionError(f"unknown target {t!r} (choose {', '.join(f.value for f in offered)})")
        allowed = tuple(offered[fmt])
        for entry in entries:
            only, _, name = entry.rpartition(":")
            if only and parse_target(only) is not fmt:
                continue
            prec = parse_precision(name)
            if (fmt, prec) in plan:
                continue
            if prec in allowed:
                plan.append((fmt, prec))
            else:
                skipped.append(f"{fmt.value}/{prec.value}: not offered (offered: {', '.join(x.value for x in allowed)})")
    return plan, skipped

"""Does a ported trunk see real photos the way its weights were trained? Compare every BatchNorm's
running statistics with the batch statistics of its input on real photos (a wrong port or a wrong
input scaling shows up as a BN far off)."""

from __future__ import annotations

import torch


def bn_agreement(trunk: torch.nn.Module, x: torch.Tensor, bns: dict[str, torch.nn.BatchNorm2d] | None = None) -> dict[str, tuple[float, float]]:
    """Per BN (``bns``, default every BatchNorm2d of ``trunk`` by module name): (median |batch mean -
    running mean| / running std, median |log(batch var / running var)|) while ``trunk(x)`` runs."""
    bns = bns if bns is not None else {n: m for n, m in trunk.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    stats: dict[str, tuple[float, float]] = {}
    hooks = []
    for name, bn in bns.items():
        def hook(mod: torch.nn.BatchNorm2d, inp: tuple[torch.Tensor], name: str = name) -> None:
            a = inp[0]
            m, v = a.mean((0, 2, 3)), a.var((0, 2, 3))
            stats[name] = (((m - mod.running_mean) / (mod.running_var.sqrt() + 1e-3)).abs().median().item(),
                           torch.log((v + 1e-5) / (mod.running_var + 1e-5)).abs().median().item())
        hooks.append(bn.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            trunk(x)
    finally:
        for h in hooks:
            h.remove()
    return stats

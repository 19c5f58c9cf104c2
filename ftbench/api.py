"""Typed entry points behind the CLI; tests call these directly."""

from __future__ import annotations

from ftbench.model.accounting import model_cost, overhead
from ftbench.model.factory import build_model
from ftbench.model.presets import get_preset


def model_info(size: str, seq_len: int | None = None) -> dict:
    """Parameters and FLOPs per token of a preset's baseline and Free model.

    Analytic counts are cross-checked against the real modules, built on the meta
    device (no memory is allocated, so the 8B preset is as cheap as the toy).
    """
    cfg = get_preset(size)
    costs = {}
    for arch in ("baseline", "free"):
        cost = model_cost(cfg, arch, seq_len)
        built = sum(p.numel() for p in build_model(cfg, arch, device="meta").parameters())
        if built != cost.params_total:
            raise AssertionError(f"analytic parameter count {cost.params_total} != "
                                 f"module count {built} for {size}/{arch}")
        costs[arch] = cost.as_dict()
    return {
        "size": size,
        "config": {k: v for k, v in vars(cfg).items()},
        "seq_len": costs["baseline"]["seq_len"],
        "baseline": costs["baseline"],
        "free": costs["free"],
        "free_overhead": overhead(model_cost(cfg, "baseline", seq_len),
                                  model_cost(cfg, "free", seq_len)),
    }

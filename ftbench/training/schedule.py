"""Learning rate: linear warmup, then one cosine decay to min_lr_ratio * lr at the last step."""

from __future__ import annotations

import math

from ftbench.config.schema import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR for optimiser step `step` (0-based). Progress is measured over the steps after
    warmup up to total_steps, so the decay spans the whole run exactly once."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

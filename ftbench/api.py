"""Typed entry points behind the CLI; tests call these directly."""

from __future__ import annotations

from pathlib import Path

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


CONFIG_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parents[1] / "configs")


def resolve_pair_config(config: Path | None, size: str | None, overrides: list[str],
                        data_dir: Path | None = None):
    """--config FILE, or --size NAME for configs/<NAME>.yaml, then --set and --data-dir."""
    from ftbench.config.loader import load_pair_config
    from ftbench.model.config import ConfigError

    if config is None and size is None:
        raise ConfigError("train-pair: give --config FILE or --size NAME (e.g. --size toy)")
    if config is None:
        get_preset(size)  # an unknown size fails here with the list of presets
        for folder in CONFIG_DIRS:
            if (folder / f"{size}.yaml").is_file():
                config = folder / f"{size}.yaml"
                break
        else:
            raise ConfigError(f"size: no configs/{size}.yaml found in "
                              f"{', '.join(str(d) for d in CONFIG_DIRS)}")
    if data_dir is not None:
        overrides = [*overrides, f"data.data_dir={Path(data_dir).resolve()}"]
    return load_pair_config(config, overrides=overrides)


def run_train_pair(cfg, fail) -> dict:
    """Train a pair, turning the errors a user can fix into one clear message."""
    from ftbench.data.errors import DataError
    from ftbench.training.checkpoint import CheckpointError
    from ftbench.training.loop import TrainingError
    from ftbench.training.pair import train_pair

    try:
        return train_pair(cfg)
    except (DataError, CheckpointError, TrainingError) as e:
        fail(str(e))

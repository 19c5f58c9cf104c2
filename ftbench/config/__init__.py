"""Run configs: typed dataclasses, YAML files in configs/, dotted CLI overrides."""

from ftbench.config.loader import dump_pair_config, load_pair_config, pair_config_from_dict
from ftbench.config.schema import (DataConfig, LatentConfig, OptimConfig, PairConfig, RunConfig,
                                   SourceConfig, TokenizerConfig)

__all__ = ["DataConfig", "LatentConfig", "OptimConfig", "PairConfig", "RunConfig",
           "SourceConfig", "TokenizerConfig", "dump_pair_config", "load_pair_config",
           "pair_config_from_dict"]

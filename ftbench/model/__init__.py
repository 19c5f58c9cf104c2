"""Model architectures (torch only): the baseline decoder and the Free Transformer."""

from ftbench.model.baseline import BaselineDecoder, LMOutput
from ftbench.model.config import ConfigError, ModelConfig
from ftbench.model.factory import build_model, init_weights
from ftbench.model.free_transformer import FreeTransformer
from ftbench.model.presets import PRESETS, get_preset, preset_names

__all__ = ["BaselineDecoder", "ConfigError", "FreeTransformer", "LMOutput", "ModelConfig",
           "PRESETS", "build_model", "get_preset", "init_weights", "preset_names"]

"""The one model config shared by both architectures.

A baseline and its Free Transformer are built from the same `ModelConfig`; the fields
under "Free Transformer only" are ignored by the baseline, so the two resolved configs
of a pair differ in nothing that the baseline reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KV_INJECTIONS = ("norm_of_sum", "sum_of_norm")
ARCHITECTURES = ("baseline", "free")


class ConfigError(ValueError):
    """A config value is invalid. The message names the field and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    """Tokens in the vocabulary (the tokenizer of a run overrides the preset's value)."""
    d_model: int = 256
    """Residual stream width D."""
    n_layers: int = 8
    """Decoder blocks L. The Free Transformer needs L even: its encoder reads block L/2."""
    n_heads: int = 4
    """Query heads."""
    n_kv_heads: int = 4
    """Key/value heads (grouped-query attention when fewer than n_heads)."""
    ffn_hidden: int = 1024
    """SwiGLU hidden width F."""
    tie_embeddings: bool = False
    """Share the token embedding with the output projection."""
    max_seq_len: int = 1024
    """Longest sequence (prompt plus generation) the rotary tables cover."""
    rope_base: float = 500_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    """Std of every weight matrix at init; output projections are scaled by 1/sqrt(2L)."""

    # Free Transformer only.
    latent_bits: int = 16
    """H: Z_t is one of 2^H codes, sampled as H independent bits (paper: 16)."""
    kv_injection: str = "norm_of_sum"
    """How R enters block L/2+1: 'norm_of_sum' feeds RMSNorm(X + R) to W_k, W_v (the literal
    reading of the paper's Alg. 2); 'sum_of_norm' feeds RMSNorm(X) + R."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_codes(self) -> int:
        return 2**self.latent_bits

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def validate(self, arch: str = "baseline") -> "ModelConfig":
        """Raise ConfigError naming the first invalid field; return self when all is well."""
        if arch not in ARCHITECTURES:
            raise ConfigError(f"arch: {arch!r} is not one of {', '.join(ARCHITECTURES)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "ffn_hidden", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name}: must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model: {self.d_model} is not divisible by "
                              f"model.n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model.n_heads: head dim d_model/n_heads = {self.head_dim} must be "
                              "even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_kv_heads: {self.n_kv_heads} must divide "
                              f"model.n_heads={self.n_heads}")
        for name in ("rope_base", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name}: must be > 0, got {getattr(self, name)!r}")
        if arch == "free":
            if self.n_layers < 2 or self.n_layers % 2:
                raise ConfigError(f"model.n_layers: the Free Transformer needs an even number of "
                                  f"layers >= 2 (its encoder reads block L/2), got {self.n_layers}")
            if not isinstance(self.latent_bits, int) or not 1 <= self.latent_bits <= 24:
                raise ConfigError(f"model.latent_bits: must be an integer in 1..24 "
                                  f"(the paper uses 16), got {self.latent_bits!r}")
            if self.kv_injection not in KV_INJECTIONS:
                raise ConfigError(f"model.kv_injection: {self.kv_injection!r} is not one of "
                                  f"{', '.join(KV_INJECTIONS)}")
        return self

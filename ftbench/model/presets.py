"""Named model sizes, from a CPU toy to the paper's 1.5B and 8B shapes."""

from __future__ import annotations

import difflib

from ftbench.model.config import ConfigError, ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Trains in seconds on a 2-core CPU. H is small so the Binary Mapper's 2^H backward
    # does not dominate a model this narrow.
    "toy": ModelConfig(vocab_size=8192, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2,
                       ffn_hidden=256, tie_embeddings=True, max_seq_len=256, latent_bits=8),
    "tiny": ModelConfig(vocab_size=8192, d_model=128, n_layers=6, n_heads=4, n_kv_heads=2,
                        ffn_hidden=512, tie_embeddings=True, max_seq_len=512, latent_bits=12),
    # The shape the CPU benchmarks use (V 8192, D 256, 8 layers, 4 heads, FFN 1024, H 16).
    "small": ModelConfig(vocab_size=8192, d_model=256, n_layers=8, n_heads=4, n_kv_heads=4,
                         ffn_hidden=1024, tie_embeddings=False, max_seq_len=1024, latent_bits=16),
    # The ladder between small and 1.5b: GPT-3's three smallest shapes (Brown et al. 2020,
    # Table 2.1: D, layers, query heads and their width) on the paper's backbone. GQA with
    # a quarter of the query heads as KV heads, and a SwiGLU width F that keeps GPT-3's
    # 12 D^2 parameters per block (2D^2 + 2D*d_kv + 3DF = 12D^2, F rounded to 128), so
    # with a 50,304-token BPE (GPT-3's ~50k vocabulary, a multiple of 128) and tied
    # embeddings the totals are GPT-3's: 124M, 350M and 757M.
    "125m": ModelConfig(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, n_kv_heads=3,
                        ffn_hidden=2432, tie_embeddings=True, max_seq_len=4096, latent_bits=16),
    "350m": ModelConfig(vocab_size=50304, d_model=1024, n_layers=24, n_heads=16, n_kv_heads=4,
                        ffn_hidden=3200, tie_embeddings=True, max_seq_len=4096, latent_bits=16),
    "760m": ModelConfig(vocab_size=50304, d_model=1536, n_layers=24, n_heads=16, n_kv_heads=4,
                        ffn_hidden=4864, tie_embeddings=True, max_seq_len=4096, latent_bits=16),
    # Paper, section 6: 28 layers, D 1536, 12/2 heads, tied, vocab 2^17; FFN 8960 is the
    # recipe's choice (the paper does not state it), giving about 1.51B parameters.
    "1.5b": ModelConfig(vocab_size=2**17, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                        ffn_hidden=8960, tie_embeddings=True, max_seq_len=4096, latent_bits=16),
    # Paper: 32 layers, D 4096, 32/8 heads, vocab 2^17, "Llama-3 structure": FFN 14336 and
    # untied embeddings as in Llama-3-8B, about 8.05B parameters.
    "8b": ModelConfig(vocab_size=2**17, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      ffn_hidden=14336, tie_embeddings=False, max_seq_len=4096, latent_bits=16),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    """The config of a named size; an unknown name is an error that lists the close ones."""
    key = name.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    close = difflib.get_close_matches(key, PRESETS, n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"size: unknown preset {name!r}; choose one of "
                      f"{', '.join(PRESETS)}.{hint}")

"""Parameter counts and analytic FLOPs per token for both architectures.

Conventions (stated so that the numbers can be checked by hand):
- a matmul with an (m x n) weight costs 2mn FLOPs per token forward, 4mn backward;
- the embedding lookup and the post-sampler's forward are gathers: 0 FLOPs;
- causal attention counts only the unmasked half: a token at position t does
  4(t+1)K FLOPs per head forward (QK^T and AV), on average 2(T+1)K over a length-T
  sequence. This is lower than the PaLM convention (4TK), so MFU figures derived from
  it are conservative;
- training = 3 x forward, except the Binary Mapper, whose backward is counted as
  implemented: a = g W_post^T (2 * 2^H * D) and A [1|U] (2 * 2^H * (H+1)) per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ftbench.model.config import ModelConfig


@dataclass(frozen=True)
class ModelCost:
    arch: str
    seq_len: int
    params_total: int
    params_embedding: int
    """Input embedding plus an untied output head."""
    params_blocks: int
    params_encoder: int
    """Encoder block, zeta and readout (Free only)."""
    params_post_sampler: int
    """W_post, 2^H x D (Free only): reported apart because the paper's overhead omits it."""
    train_flops_per_token: float
    forward_flops_per_token: float
    """One forward over a length-T sequence, per token (prefill; the encoder included)."""
    decode_flops_per_token: float
    """One cached generation step at context T (the Free model runs no encoder here)."""

    def as_dict(self) -> dict:
        return asdict(self)


def _block_matmul_params(cfg: ModelConfig) -> int:
    q_and_o = 2 * cfg.d_model * cfg.n_heads * cfg.head_dim
    k_and_v = 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
    return q_and_o + k_and_v + 3 * cfg.d_model * cfg.ffn_hidden


def _block_params(cfg: ModelConfig) -> int:
    return _block_matmul_params(cfg) + 2 * cfg.d_model  # two RMSNorm gains


def model_cost(cfg: ModelConfig, arch: str, seq_len: int | None = None) -> ModelCost:
    T = seq_len or cfg.max_seq_len
    D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    attn_width = cfg.n_heads * cfg.head_dim

    embedding = V * D * (1 if cfg.tie_embeddings else 2)
    blocks = L * _block_params(cfg)
    head_matmul = V * D
    causal_attn_fwd = 2 * (T + 1) * attn_width  # per token per layer
    fwd = 2 * (L * _block_matmul_params(cfg) + head_matmul) + L * causal_attn_fwd
    decode = 2 * (L * _block_matmul_params(cfg) + head_matmul) + L * 4 * T * attn_width
    train = 3 * fwd

    encoder = post = 0
    if arch == "free":
        H, C = cfg.latent_bits, cfg.n_codes
        encoder = _block_params(cfg) + D + D + D * H  # block, zeta, readout norm, readout
        post = C * D
        # Queries come from zeta, keys from X: a full (non-causal) T x T attention.
        enc_fwd = 2 * _block_matmul_params(cfg) + 4 * T * attn_width + 2 * D * H
        fwd += enc_fwd
        train += 3 * enc_fwd + 2 * C * D + 2 * C * (H + 1)
    return ModelCost(arch=arch, seq_len=T,
                     params_total=embedding + blocks + D + encoder + post,
                     params_embedding=embedding, params_blocks=blocks, params_encoder=encoder,
                     params_post_sampler=post, train_flops_per_token=float(train),
                     forward_flops_per_token=float(fwd), decode_flops_per_token=float(decode))


def overhead(baseline: ModelCost, free: ModelCost) -> dict[str, float]:
    """The Free model's extra cost as fractions of the baseline's."""
    return {
        "params_without_post_sampler": (free.params_total - free.params_post_sampler)
        / baseline.params_total - 1,
        "params_total": free.params_total / baseline.params_total - 1,
        "train_flops": free.train_flops_per_token / baseline.train_flops_per_token - 1,
        "forward_flops": free.forward_flops_per_token / baseline.forward_flops_per_token - 1,
        "decode_flops": free.decode_flops_per_token / baseline.decode_flops_per_token - 1,
    }


def recompute_flops_per_token(cfg: ModelConfig, arch: str, seq_len: int | None = None,
                              checkpointing: str = "full") -> float:
    """FLOPs per token that activation checkpointing adds to a training step (hardware
    FLOPs, not model FLOPs: MFU leaves them out). Full checkpointing runs every block's
    forward again (decoder blocks and the encoder's) up to the last tensor its backward
    needs: torch's checkpoint stops early there, so the SwiGLU's down projection, whose
    output no backward reads, is not run again. Selective checkpointing keeps the matmul
    and attention outputs and recomputes pointwise ops only (no matmul FLOPs)."""
    if checkpointing != "full":
        return 0.0
    T = seq_len or cfg.max_seq_len
    attn_width = cfg.n_heads * cfg.head_dim
    per_block = 2 * (_block_matmul_params(cfg) - cfg.d_model * cfg.ffn_hidden)
    flops = cfg.n_layers * (per_block + 2 * (T + 1) * attn_width)
    if arch == "free":
        flops += per_block + 4 * T * attn_width  # the encoder block: full T x T attention
    return float(flops)

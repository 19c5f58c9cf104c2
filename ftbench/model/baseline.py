"""The baseline: a pre-norm decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ftbench.model.blocks import AttentionMask, Block, DecodeCache, RMSNorm, Rotary
from ftbench.model.config import ModelConfig
from ftbench.model.linear_cross_entropy import linear_cross_entropy


@dataclass
class LMOutput:
    logits_BTV: torch.Tensor | None
    """None when the call was given targets: the loss is computed without them."""
    kl_BT: torch.Tensor | None = None
    """Free Transformer only: KL(Q(Z_t|S) || uniform) in nats, zero where Z came from the prior."""
    z_BT: torch.Tensor | None = None
    """Free Transformer only: the code index used at every position."""
    latent_logits_BTH: torch.Tensor | None = None
    """Free Transformer only: the encoder's H bit logits (posterior mode)."""
    ce: torch.Tensor | None = None
    """With targets: the mean next-token cross-entropy in nats (fp32 scalar)."""


@dataclass
class Stream:
    """The residual stream after the Z-independent blocks, with what the later blocks need.

    Evaluation runs this part once per context and reuses it for every Z draw and every
    continuation (`select` copies rows)."""

    x_BTD: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    valid_BT: torch.Tensor | None
    attend_BTS: torch.Tensor | None = None
    """An explicit attention pattern over the cache's slots, if the call had one."""

    def select(self, rows_N: torch.Tensor) -> "Stream":
        cos, sin = self.rope

        def pick(t):
            return None if t is None else t.index_select(0, rows_N)
        return Stream(pick(self.x_BTD), (pick(cos), pick(sin)), pick(self.valid_BT),
                      pick(self.attend_BTS))


class BaselineDecoder(nn.Module):
    arch = "baseline"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate(self.arch)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size,
                                                                 bias=False)

    def new_cache(self, batch: int, max_len: int, layers: range | None = None) -> DecodeCache:
        p = self.tok_emb.weight
        return DecodeCache(self.cfg, batch, max_len, p.dtype, p.device, layers)

    @property
    def z_independent_layers(self) -> int:
        """How many leading blocks never see the latent (the baseline: all of them)."""
        return self.cfg.n_layers

    def run_z_independent(self, tokens_BT: torch.Tensor, *,
                          positions_BT: torch.Tensor | None = None,
                          valid_BT: torch.Tensor | None = None,
                          cache: DecodeCache | None = None,
                          attend_BTS: torch.Tensor | None = None,
                          rows_N: torch.Tensor | None = None) -> Stream:
        """Embedding and the blocks before the latent enters; `cache` (covering those
        blocks) is filled and advanced by T. `attend_BTS`: an explicit attention pattern
        over the cache's slots (see AttentionMask.pattern), kept for the Z-dependent blocks.
        `rows_N`: when these blocks include the last one, its output only at those
        positions (the stream then holds N positions)."""
        if attend_BTS is not None:
            rope, _ = self._prepare(tokens_BT, positions_BT, None, None)
            mask = AttentionMask.pattern(attend_BTS, valid_BT, cache)
        else:
            rope, mask = self._prepare(tokens_BT, positions_BT, valid_BT, cache)
        x_BTD = self._run_blocks(self.tok_emb(tokens_BT), 0, self.z_independent_layers, rope,
                                 mask, cache, rows_N)
        if cache is not None:
            cache.length += tokens_BT.shape[1]
        return Stream(x_BTD, rope, valid_BT, attend_BTS)

    def readout(self, x_ND: torch.Tensor) -> torch.Tensor:
        """Final norm and vocabulary logits for the given residual vectors only (scoring
        reads a few positions; the others never need their V logits)."""
        return self._logits(x_ND)

    def _prepare(self, tokens_BT: torch.Tensor, positions_BT: torch.Tensor | None,
                 valid_BT: torch.Tensor | None, cache: DecodeCache | None):
        B, T = tokens_BT.shape
        start = cache.length if cache is not None else 0
        max_position = None
        if positions_BT is None:
            positions_BT = torch.arange(start, start + T, device=tokens_BT.device).expand(B, T)
            max_position = start + T - 1
        mask = AttentionMask.build(valid_BT, cache, T, tokens_BT.device)
        return self.rotary(positions_BT, max_position), mask

    def _run_blocks(self, x_BTD, first: int, last: int, rope, mask, cache, rows_N=None):
        """Blocks first..last-1; `rows_N` trims the model's last block to those outputs."""
        for i in range(first, last):
            rows = rows_N if i == self.cfg.n_layers - 1 else None
            x_BTD = self.blocks[i](x_BTD, rope, mask, cache.layers[i] if cache else None,
                                   rows_N=rows)
        return x_BTD

    def _head_weight(self) -> torch.Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def _logits(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.norm(x_BTD) @ self._head_weight().t()

    def _readout(self, x_BTD: torch.Tensor, targets_BT: torch.Tensor | None) -> dict:
        """Logits, or with targets only the mean cross-entropy, fused with the head so
        that the (B, T, V) logits never exist (inside forward: under FSDP2 the head's
        weight is gathered only there)."""
        if targets_BT is None:
            return {"logits_BTV": self._logits(x_BTD)}
        h_ND = self.norm(x_BTD).flatten(0, 1)
        return {"logits_BTV": None,
                "ce": linear_cross_entropy(h_ND, self._head_weight(), targets_BT.flatten())}

    def forward(self, tokens_BT: torch.Tensor, *, positions_BT: torch.Tensor | None = None,
                valid_BT: torch.Tensor | None = None,
                cache: DecodeCache | None = None,
                targets_BT: torch.Tensor | None = None) -> LMOutput:
        """Logits for every position, or with `targets_BT` the mean cross-entropy only.

        positions_BT: rotary positions (default: consecutive from the cache's length);
        valid_BT: False marks pad tokens, which no query attends to;
        cache: filled in place and advanced by T;
        targets_BT: next tokens; the logits are then never materialised (training).
        """
        rope, mask = self._prepare(tokens_BT, positions_BT, valid_BT, cache)
        x_BTD = self._run_blocks(self.tok_emb(tokens_BT), 0, self.cfg.n_layers, rope, mask, cache)
        if cache is not None:
            cache.length += tokens_BT.shape[1]
        return LMOutput(**self._readout(x_BTD, targets_BT))

"""The Free Transformer (Fleuret 2025, arXiv 2510.17558).

The decoder is the baseline's, block for block and name for name. What is added:
- an encoder that reads X, the output of block L/2: one non-causal block whose queries
  are a learned vector zeta (rotated by RoPE at each position, so Q(Z_t|S) can depend
  on t) and whose keys/values are X, then RMSNorm and a readout to H bit logits;
- the Binary Mapper, which samples Z_t and maps it to R_t = W_post[Z_t];
- the injection: block L/2+1 takes its keys and values from X + R (queries and the
  residual stream stay X); no other block sees R.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ftbench.model.baseline import BaselineDecoder, LMOutput, Stream
from ftbench.model.binary_mapper import (binary_mapper, kl_to_uniform, sample_codes,
                                         sample_uniform_codes)
from ftbench.model.blocks import AttentionMask, Block, DecodeCache, RMSNorm
from ftbench.model.config import ModelConfig

LatentMode = Literal["posterior", "prior", "fixed"]


class LatentEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.zeta = nn.Parameter(torch.empty(cfg.d_model))
        self.block = Block(cfg)
        self.readout_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.readout = nn.Linear(cfg.d_model, cfg.latent_bits, bias=False)

    def forward(self, x_BTD: torch.Tensor, rope, mask: AttentionMask) -> torch.Tensor:
        # Same zeta at every position; RoPE on q and k is what makes the logits vary with t.
        zeta_BTD = self.zeta.expand_as(x_BTD)
        y_BTD = self.block(zeta_BTD, rope, mask, kv_source=x_BTD)
        return self.readout(self.readout_norm(y_BTD))


class FreeTransformer(BaselineDecoder):
    arch = "free"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = LatentEncoder(cfg)
        # W_post: one D-vector per code; its forward is a gather.
        self.post_sampler = nn.Embedding(cfg.n_codes, cfg.d_model)

    @property
    def inject_layer(self) -> int:
        """0-based index of block L/2+1, the only block that sees R."""
        return self.cfg.n_layers // 2

    @property
    def z_independent_layers(self) -> int:
        return self.inject_layer

    def encode(self, stream: Stream, seen_BT: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's bit logits (B, T, H) from the first half's output, attending only
        to `seen_BT` (default: the valid tokens)."""
        seen_BT = seen_BT if seen_BT is not None else stream.valid_BT
        return self.encoder(stream.x_BTD, stream.rope, AttentionMask.bidirectional(seen_BT))

    def run_z_dependent(self, stream: Stream, z_BT: torch.Tensor,
                        cache: DecodeCache | None = None,
                        rows_N: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks L/2+1..L on the first half's output, with codes z_BT; returns the last
        block's output (before the final norm), only at positions `rows_N` if given.
        `cache` covers those blocks only and is advanced by T, so one first-half pass can
        feed many Z draws."""
        T = stream.x_BTD.shape[1]
        if stream.attend_BTS is not None:
            mask = AttentionMask.pattern(stream.attend_BTS, stream.valid_BT, cache)
        else:
            mask = AttentionMask.build(stream.valid_BT, cache, T, stream.x_BTD.device)
        x_BTD = self._z_dependent_blocks(stream.x_BTD, self.post_sampler(z_BT), stream.rope,
                                         mask, cache, rows_N)
        if cache is not None:
            cache.length += T
        return x_BTD

    def _z_dependent_blocks(self, x_BTD, r_BTD, rope, mask, cache, rows_N=None) -> torch.Tensor:
        block = self.blocks[self.inject_layer]
        layer_cache = cache.layers[self.inject_layer] if cache is not None else None
        r_BTD = r_BTD.to(x_BTD.dtype)
        rows = rows_N if self.inject_layer == self.cfg.n_layers - 1 else None
        if self.cfg.kv_injection == "norm_of_sum":
            x_BTD = block(x_BTD, rope, mask, layer_cache, kv_source=x_BTD + r_BTD, rows_N=rows)
        else:
            x_BTD = block(x_BTD, rope, mask, layer_cache, kv_add=r_BTD, rows_N=rows)
        return self._run_blocks(x_BTD, self.inject_layer + 1, self.cfg.n_layers, rope, mask,
                                cache, rows_N)

    @torch.no_grad()
    def latent_logits(self, tokens_BT: torch.Tensor, *, positions_BT: torch.Tensor | None = None,
                      valid_BT: torch.Tensor | None = None,
                      encoder_mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's bit logits (B, T, H), seeing only `encoder_mask_BT` (default: valid)
        tokens. Lets an evaluator sample several posterior Z draws from one encoder pass."""
        rope, mask = self._prepare(tokens_BT, positions_BT, valid_BT, None)
        x_BTD = self._run_blocks(self.tok_emb(tokens_BT), 0, self.inject_layer, rope, mask, None)
        seen_BT = encoder_mask_BT if encoder_mask_BT is not None else valid_BT
        return self.encoder(x_BTD, rope, AttentionMask.bidirectional(seen_BT))

    def forward(self, tokens_BT: torch.Tensor, *, positions_BT: torch.Tensor | None = None,
                valid_BT: torch.Tensor | None = None, cache: DecodeCache | None = None,
                latent: LatentMode = "posterior", z_BT: torch.Tensor | None = None,
                encoder_mask_BT: torch.Tensor | None = None,
                z_generator: torch.Generator | None = None,
                z_uniform_BTH: torch.Tensor | None = None,
                targets_BT: torch.Tensor | None = None) -> LMOutput:
        """Logits for every position, with Z chosen by `latent`:

        - "posterior": Z_t ~ Q(Z_t|S) from the encoder (training, prefill). The encoder
          sees only the tokens of this call where `encoder_mask_BT` (default: `valid_BT`)
          is True; other positions get prior Z and zero KL. With a cache this must be
          the first call (prefill): the encoder is never run on a partial view.
        - "prior": Z_t uniform i.i.d. (generation steps, the prior-Z protocol).
        - "fixed": Z given in `z_BT` (tests, shared-Z sampling).
        Z is drawn from `z_generator`, apart from any token sampling; in posterior mode
        `z_uniform_BTH` may supply the U(0,1) draws of the bits instead. With `targets_BT`
        the output holds the mean cross-entropy instead of the logits (training).
        """
        B, T = tokens_BT.shape
        if cache is not None and latent == "posterior" and cache.length > 0:
            raise ValueError("posterior Z with a cache is only defined for the prefill call; "
                             "use latent='prior' for later steps")
        rope, mask = self._prepare(tokens_BT, positions_BT, valid_BT, cache)
        x_BTD = self._run_blocks(self.tok_emb(tokens_BT), 0, self.inject_layer, rope, mask, cache)

        kl_BT = latent_logits_BTH = None
        n_bits = self.cfg.latent_bits
        if latent == "fixed":
            if z_BT is None or z_BT.shape != (B, T):
                raise ValueError(f"latent='fixed' needs z_BT of shape {(B, T)}")
            r_BTD = self.post_sampler(z_BT)
        elif latent == "prior":
            z_BT = sample_uniform_codes((B, T), n_bits, tokens_BT.device, z_generator)
            r_BTD = self.post_sampler(z_BT)
        elif latent == "posterior":
            seen_BT = encoder_mask_BT if encoder_mask_BT is not None else valid_BT
            latent_logits_BTH = self.encoder(x_BTD, rope, AttentionMask.bidirectional(seen_BT))
            z_BT = sample_codes(latent_logits_BTH, z_generator, z_uniform_BTH)
            r_BTD = binary_mapper(latent_logits_BTH.reshape(B * T, n_bits),
                                  self.post_sampler.weight, z_BT.reshape(B * T)).view(B, T, -1)
            kl_BT = kl_to_uniform(latent_logits_BTH)
            if seen_BT is not None and not bool(seen_BT.all()):
                z_prior_BT = sample_uniform_codes((B, T), n_bits, tokens_BT.device, z_generator)
                z_BT = torch.where(seen_BT, z_BT, z_prior_BT)
                r_BTD = torch.where(seen_BT[..., None], r_BTD, self.post_sampler(z_prior_BT))
                kl_BT = kl_BT * seen_BT
        else:
            raise ValueError(f"latent: {latent!r} is not one of posterior, prior, fixed")

        x_BTD = self._z_dependent_blocks(x_BTD, r_BTD, rope, mask, cache)
        if cache is not None:
            cache.length += T
        return LMOutput(kl_BT=kl_BT, z_BT=z_BT, latent_logits_BTH=latent_logits_BTH,
                        **self._readout(x_BTD, targets_BT))


"""Building blocks shared by the baseline decoder and the Free Transformer.

Shape legend for tensor-name suffixes: B batch, T tokens in this call, S key slots
(cache included), D model width, Hq query heads, Hkv key/value heads, K head dim,
F FFN hidden width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """Rotary tables, indexed by explicit positions so left-padded rows start at 0.

    The tables are non-persistent buffers: a model built on the meta device gets real
    values from `reset_tables()` after `to_empty()`.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        if self.cos.device.type != "meta":
            self.reset_tables()

    def reset_tables(self) -> None:
        half = self.head_dim // 2
        inv_freq = 1.0 / (self.base ** (torch.arange(half, dtype=torch.float64) / half))
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64), inv_freq)
        with torch.no_grad():
            self.cos.copy_(angles.cos())
            self.sin.copy_(angles.sin())

    def forward(self, positions_BT: torch.Tensor,
                max_position: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`max_position`, when the caller knows it, spares a device sync (and a
        torch.compile graph break) in the bounds check."""
        if max_position is None:
            max_position = int(positions_BT.max())
        if max_position >= self.max_seq_len:
            raise ValueError(f"position {max_position} is beyond model.max_seq_len="
                             f"{self.max_seq_len}; shorten the input or raise max_seq_len")
        # (B, 1, T, K/2): broadcast over heads.
        return self.cos[positions_BT].unsqueeze(1), self.sin[positions_BT].unsqueeze(1)


def apply_rotary(x_BHTK: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate-half layout (as in Hugging Face Llama), so weights export without permutation.
    x1, x2 = x_BHTK.chunk(2, dim=-1)
    cos, sin = cos.to(x_BHTK.dtype), sin.to(x_BHTK.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class KVCache:
    """Static per-layer key/value buffers for generation (prefill, then one token a step)."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def write(self, start: int, k_BHTK: torch.Tensor, v_BHTK: torch.Tensor):
        end = start + k_BHTK.shape[2]
        self.k[:, :, start:end] = k_BHTK
        self.v[:, :, start:end] = v_BHTK
        return self.k[:, :, :end], self.v[:, :, :end]


class DecodeCache:
    """The caches of decoder blocks plus which slots hold real (non-pad) tokens.

    `layers` (default: all) limits it to a range of blocks: a Free model's Z-independent
    first half and its second half can then be cached with different batch sizes (one row
    per context for the first half, one per context and Z draw for the second).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device, layers: range | None = None):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds model.max_seq_len={cfg.max_seq_len}")
        layers = range(cfg.n_layers) if layers is None else layers
        self.layers = {i: KVCache(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype, device)
                       for i in layers}
        self.valid_BS = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.max_len = max_len

    def select(self, rows_N: torch.Tensor) -> "DecodeCache":
        """A new cache whose row n is a copy of row rows_N[n] (so several continuations
        can extend one cached context)."""
        out = DecodeCache.__new__(DecodeCache)
        out.layers = {}
        for i, c in self.layers.items():
            kv = KVCache.__new__(KVCache)
            kv.k, kv.v = c.k.index_select(0, rows_N), c.v.index_select(0, rows_N)
            out.layers[i] = kv
        out.valid_BS = self.valid_BS.index_select(0, rows_N)
        out.length, out.max_len = self.length, self.max_len
        return out


@dataclass
class AttentionMask:
    """What one forward's attention may see: either SDPA's fast causal path or a bool mask."""

    mask_B1TS: torch.Tensor | None
    is_causal: bool
    cache_start: int = 0

    @staticmethod
    def build(valid_BT: torch.Tensor | None, cache: DecodeCache | None, T: int,
              device: torch.device) -> "AttentionMask":
        start = cache.length if cache is not None else 0
        if cache is not None:
            if start + T > cache.max_len:
                raise ValueError(f"cache full: {start} + {T} tokens > {cache.max_len} slots")
            cache.valid_BS[:, start:start + T] = True if valid_BT is None else valid_BT
            key_valid_BS = cache.valid_BS[:, :start + T]
            if bool(key_valid_BS.all()):
                if start == 0:
                    return AttentionMask(None, True, start)
                if T == 1:  # a decode step sees every earlier slot
                    return AttentionMask(None, False, start)
        elif valid_BT is None or bool(valid_BT.all()):
            return AttentionMask(None, True, 0)
        else:
            key_valid_BS = valid_BT
        q_slot = torch.arange(start, start + T, device=device)
        k_slot = torch.arange(start + T, device=device)
        allowed_TS = k_slot[None, :] <= q_slot[:, None]
        allowed_BTS = allowed_TS[None] & key_valid_BS[:, None, :]
        # A pad query with no visible key would give NaN rows; let it see itself.
        allowed_BTS |= (k_slot[None, :] == q_slot[:, None])[None]
        return AttentionMask(allowed_BTS.unsqueeze(1), False, start)

    @staticmethod
    def pattern(allowed_BTS: torch.Tensor, valid_BT: torch.Tensor,
                cache: DecodeCache | None) -> "AttentionMask":
        """An explicit view: query t of this call sees key slot s (cache slots first) where
        allowed_BTS is True. Lets several continuations packed after one cached context each
        see the context and only their own earlier tokens."""
        start = cache.length if cache is not None else 0
        T = allowed_BTS.shape[1]
        if allowed_BTS.shape[2] != start + T:
            raise ValueError(f"attention pattern covers {allowed_BTS.shape[2]} key slots, "
                             f"expected {start + T} (cache {start} + {T} new)")
        if cache is not None:
            if start + T > cache.max_len:
                raise ValueError(f"cache full: {start} + {T} tokens > {cache.max_len} slots")
            cache.valid_BS[:, start:start + T] = valid_BT
        return AttentionMask(allowed_BTS.unsqueeze(1), False, start)

    def query_rows(self, rows_N: torch.Tensor, T: int) -> "AttentionMask":
        """The same view for a subset of this call's T queries (the keys are unchanged)."""
        if self.mask_B1TS is not None:
            return AttentionMask(self.mask_B1TS[:, :, rows_N], False, self.cache_start)
        if not self.is_causal:
            return self
        q_slot_N = self.cache_start + rows_N
        k_slot_S = torch.arange(self.cache_start + T, device=rows_N.device)
        return AttentionMask((k_slot_S[None, :] <= q_slot_N[:, None])[None, None], False,
                             self.cache_start)

    @staticmethod
    def bidirectional(valid_BT: torch.Tensor | None) -> "AttentionMask":
        """Non-causal attention over the valid tokens of this call (the encoder's view)."""
        if valid_BT is None or bool(valid_BT.all()):
            return AttentionMask(None, False, 0)
        T = valid_BT.shape[1]
        eye_TT = torch.eye(T, dtype=torch.bool, device=valid_BT.device)
        return AttentionMask((valid_BT[:, None, :] | eye_TT[None]).unsqueeze(1), False, 0)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, xq_BTD: torch.Tensor, xkv_BTD: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], mask: AttentionMask,
                cache: KVCache | None = None,
                q_rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`q_rope`: the queries' rotary tables when they are a subset of the keys' rows."""
        B, Tq, _ = xq_BTD.shape
        T = xkv_BTD.shape[1]
        q_BHTK = self.wq(xq_BTD).view(B, Tq, self.n_heads, self.head_dim).transpose(1, 2)
        k_BHTK = self.wk(xkv_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BHTK = self.wv(xkv_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # Rotate before caching: cached keys keep their own positions.
        q_BHTK = apply_rotary(q_BHTK, *(q_rope or rope))
        k_BHTK = apply_rotary(k_BHTK, *rope)
        if cache is not None:
            k_BHTK, v_BHTK = cache.write(mask.cache_start, k_BHTK, v_BHTK)
        o_BHTK = F.scaled_dot_product_attention(
            q_BHTK, k_BHTK, v_BHTK, attn_mask=mask.mask_B1TS, is_causal=mask.is_causal,
            enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(o_BHTK.transpose(1, 2).reshape(B, Tq, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)  # down

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BTD)) * self.w3(x_BTD))


class Block(nn.Module):
    """Pre-norm attention + SwiGLU block.

    Keys and values normally come from the block's own input. Two hooks serve the Free
    Transformer without touching the residual stream:
    - `kv_source`: normalise and attend to this instead (the encoder: queries from zeta,
      keys/values from X; the injection block, reading 'norm_of_sum': X + R);
    - `kv_add`: added after the norm (reading 'sum_of_norm': RMSNorm(X) + R).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x_BTD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: AttentionMask, cache: KVCache | None = None,
                kv_source: torch.Tensor | None = None,
                kv_add: torch.Tensor | None = None,
                rows_N: torch.Tensor | None = None) -> torch.Tensor:
        """`rows_N`: compute the output only at these of the T positions (keys and values
        still come from, and are cached for, all of them): a last block whose other outputs
        nobody reads skips their queries and MLP."""
        h_BTD = self.attn_norm(x_BTD)
        kv_BTD = h_BTD if kv_source is None else self.attn_norm(kv_source)
        if kv_add is not None:
            kv_BTD = kv_BTD + kv_add
        q_rope = None
        if rows_N is not None:
            T = x_BTD.shape[1]
            x_BTD, h_BTD = x_BTD[:, rows_N], h_BTD[:, rows_N]
            q_rope = (rope[0][:, :, rows_N], rope[1][:, :, rows_N])
            mask = mask.query_rows(rows_N, T)
        x_BTD = x_BTD + self.attn(h_BTD, kv_BTD, rope, mask, cache, q_rope)
        return x_BTD + self.mlp(self.mlp_norm(x_BTD))


def output_projection_std(cfg: ModelConfig) -> float:
    """Residual-branch outputs (wo, w2) start smaller so the stream's variance stays O(1)."""
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)

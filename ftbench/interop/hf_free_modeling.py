"""A Free Transformer (Fleuret 2025, arXiv 2510.17558) for Hugging Face `transformers`.

Self-contained: it needs torch and transformers only, so an exported folder loads with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` where ftbench is not
installed. ftbench copies this file into the export as modeling_free_transformer.py; the
weights keep ftbench's names, so the export is a copy of the state dict.

The model: a decoder of L blocks (RMSNorm, SwiGLU, rotate-half RoPE, GQA, no biases); an
encoder reads X, the output of block L/2 (one non-causal block whose queries are a
learned vector zeta and whose keys/values are X, then a readout to H bit logits); a code
Z_t in {0 .. 2^H-1} per token selects R_t = W_post[Z_t]; block L/2+1 takes its keys and
values from X + R. No other block sees R.

Z protocol (read this before scoring with it):
- A plain forward uses prior Z: Z_t uniform, i.i.d., the encoder is never run. The encoder
  is non-causal, so a posterior Z over context + continuation would put the continuation
  into Z and leak the answer into its own score. Log-likelihoods from a plain forward (what
  lm-eval's `hf` backend computes) are therefore prior-Z log-likelihoods, from one Z draw
  per forward; ftbench's own lm-eval adapter (posterior Z over the context only, several
  draws) is the reference for benchmark numbers.
- `latent="posterior"` runs the encoder over the tokens of this call (where
  `posterior_mask`, default `attention_mask`, is 1) and samples Z from Q(Z|S). Only for a
  first call (no cache), and only over tokens that the caller may show to Z.
- `z=` (B, T) codes: fixed Z, e.g. to compare with another implementation.
- `generate()` follows the paper's generation semantics, as ftbench does: posterior Z
  over the prompt at prefill, a fresh prior Z for every new token (`z_protocol="prior"`
  uses prior Z for the prompt too). Z comes from `z_generator` (or `z_seed`), apart from
  the token sampler, in the order ftbench draws it: the same seed gives ftbench's codes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from transformers.cache_utils import DynamicCache
except ImportError:  # pragma: no cover - very old transformers: no cache objects
    DynamicCache = None

# transformers 5 renamed `past_key_values` to `cache` (the old name still works, with a
# warning); use whichever this version's outputs have.
CACHE_KEY = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) \
    else "past_key_values"


class FreeTransformerConfig(PretrainedConfig):
    model_type = "ftbench_free"

    def __init__(self, vocab_size: int = 8192, hidden_size: int = 256,
                 num_hidden_layers: int = 8, num_attention_heads: int = 4,
                 num_key_value_heads: int = 4, intermediate_size: int = 1024,
                 max_position_embeddings: int = 1024, rope_base: float = 500_000.0,
                 rms_norm_eps: float = 1e-5, tie_embeddings: bool = False,
                 latent_bits: int = 16, kv_injection: str = "norm_of_sum", **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_base = rope_base
        self.rms_norm_eps = rms_norm_eps
        # Not transformers' tie_word_embeddings: the tied model has no lm_head at all, as in
        # ftbench, so nothing in transformers' tying logic has to agree with it.
        self.tie_embeddings = tie_embeddings
        self.latent_bits = latent_bits
        self.kv_injection = kv_injection
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(positions_BT, head_dim: int, base: float, dtype):
    # float64 angles, as ftbench builds its tables, so both round the same way.
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float64,
                                            device=positions_BT.device) / half))
    angles = positions_BT.to(torch.float64)[..., None] * inv_freq
    return (angles.cos().to(torch.float32).unsqueeze(1),
            angles.sin().to(torch.float32).unsqueeze(1))


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: FreeTransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, xq, xkv, rope, mask, cache=None, layer_idx: int = 0):
        B, T, _ = xq.shape
        q = self.wq(xq).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(xkv).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(xkv).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if self.n_heads != self.n_kv_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(o.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: FreeTransformerConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block; `kv_source` / `kv_add` are the Free Transformer's two hooks."""

    def __init__(self, cfg: FreeTransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, rope, mask, cache=None, layer_idx: int = 0, kv_source=None,
                kv_add=None):
        h = self.attn_norm(x)
        kv = h if kv_source is None else self.attn_norm(kv_source)
        if kv_add is not None:
            kv = kv + kv_add
        x = x + self.attn(h, kv, rope, mask, cache, layer_idx)
        return x + self.mlp(self.mlp_norm(x))


class LatentEncoder(nn.Module):
    def __init__(self, cfg: FreeTransformerConfig):
        super().__init__()
        self.zeta = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.block = Block(cfg)
        self.readout_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.readout = nn.Linear(cfg.hidden_size, cfg.latent_bits, bias=False)

    def forward(self, x, rope, mask):
        y = self.block(self.zeta.expand_as(x), rope, mask, kv_source=x)
        return self.readout(self.readout_norm(y))


def causal_mask(key_valid_BS, T: int):
    """(B, 1, T, S) bool: query i (slot S-T+i) sees valid keys up to its own slot."""
    S = key_valid_BS.shape[1]
    q_slot = torch.arange(S - T, S, device=key_valid_BS.device)
    k_slot = torch.arange(S, device=key_valid_BS.device)
    allowed = (k_slot[None, :] <= q_slot[:, None])[None] & key_valid_BS[:, None, :]
    # A pad query with no visible key would give NaN rows; let it see itself.
    allowed |= (k_slot[None, :] == q_slot[:, None])[None]
    return allowed.unsqueeze(1)


def encoder_mask(seen_BT):
    """Non-causal view over the tokens the encoder may see (None: all of them)."""
    if bool(seen_BT.all()):
        return None
    eye = torch.eye(seen_BT.shape[1], dtype=torch.bool, device=seen_BT.device)
    return (seen_BT[:, None, :] | eye[None]).unsqueeze(1)


def sample_codes(logits_BTH, generator):
    """idx = sum_h 2^h b_h, b_h ~ Bernoulli(sigmoid(L_h)): ftbench's draws, in its order."""
    gen_device = generator.device if generator is not None else logits_BTH.device
    u = torch.rand(logits_BTH.shape, generator=generator, device=gen_device)
    bits = (u.to(logits_BTH.device) < torch.sigmoid(logits_BTH.float())).long()
    return (bits * 2 ** torch.arange(logits_BTH.shape[-1], device=logits_BTH.device)).sum(-1)


def prior_codes(shape, n_bits: int, device, generator):
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, 2**n_bits, shape, generator=generator, device=gen_device).to(device)


class FreeTransformerForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = FreeTransformerConfig
    base_model_prefix = "free_transformer"
    _no_split_modules = ["Block"]
    _supports_cache_class = True
    _supports_static_cache = False

    def __init__(self, config: FreeTransformerConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_embeddings else \
            nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.encoder = LatentEncoder(config)
        self.post_sampler = nn.Embedding(2**config.latent_bits, config.hidden_size)
        self._z_protocol = None  # set by generate() for the calls it makes
        self._z_generator = None
        self.post_init()

    @property
    def inject_layer(self) -> int:
        return self.config.num_hidden_layers // 2

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def _init_weights(self, module):
        # Weights always come from the checkpoint; nothing to initialise.
        pass

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, past_key_values=None,
                cache=None, use_cache: Optional[bool] = None,
                labels: Optional[torch.LongTensor] = None,
                latent: str = "prior", z: Optional[torch.LongTensor] = None,
                z_generator: Optional[torch.Generator] = None,
                posterior_mask: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits with Z chosen by `latent` ("prior", the default, or "posterior"), or
        fixed by `z` (B, T). `attention_mask` (B, past + T): 0 marks pad slots; positions
        default to the count of earlier real tokens, so left padding changes nothing.
        `posterior_mask` (B, T): which tokens the encoder may see (default: the real ones).
        The output's `z` holds the codes used at every position."""
        B, T = input_ids.shape
        device = input_ids.device
        past_key_values = cache if cache is not None else past_key_values
        if use_cache and past_key_values is None:
            if DynamicCache is None:
                raise ValueError("use_cache needs transformers with cache_utils.DynamicCache")
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=device)
        key_valid_BS = attention_mask.bool()
        if position_ids is None:
            position_ids = (key_valid_BS.long().cumsum(1) - 1).clamp(min=0)[:, past:]
        rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_base,
                             self.tok_emb.weight.dtype)
        mask = causal_mask(key_valid_BS, T)
        cache = past_key_values  # one name from here on
        del past_key_values

        x = self.tok_emb(input_ids)
        for i in range(self.inject_layer):
            x = self.blocks[i](x, rope, mask, cache, i)

        n_bits = self.config.latent_bits
        if z is not None:
            if tuple(z.shape) != (B, T):
                raise ValueError(f"z: codes of shape {(B, T)} expected, got {tuple(z.shape)}")
        elif latent == "prior":
            z = prior_codes((B, T), n_bits, device, z_generator)
        elif latent == "posterior":
            if past:
                raise ValueError("latent='posterior' is only defined for a first call (no "
                                 "cache); later tokens take prior Z")
            seen_BT = (posterior_mask if posterior_mask is not None
                       else attention_mask[:, past:]).bool()
            logits_BTH = self.encoder(x, rope, encoder_mask(seen_BT))
            z = sample_codes(logits_BTH, z_generator)
            if not bool(seen_BT.all()):
                z = torch.where(seen_BT, z, prior_codes((B, T), n_bits, device, z_generator))
        else:
            raise ValueError(f"latent: {latent!r} is not one of prior, posterior")

        r = self.post_sampler(z).to(x.dtype)
        block = self.blocks[self.inject_layer]
        if self.config.kv_injection == "norm_of_sum":
            x = block(x, rope, mask, cache, self.inject_layer, kv_source=x + r)
        else:
            x = block(x, rope, mask, cache, self.inject_layer, kv_add=r)
        for i in range(self.inject_layer + 1, self.config.num_hidden_layers):
            x = self.blocks[i](x, rope, mask, cache, i)

        h = self.norm(x)
        logits = h @ self.tok_emb.weight.t() if self.lm_head is None else self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits,
                                     **{CACHE_KEY: cache})
        out["z"] = z
        return out

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None,
                                      attention_mask=None, **kwargs):
        cache = past_key_values if past_key_values is not None else kwargs.get("cache")
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        protocol = self._z_protocol or "prior"
        first = past == 0
        return {"input_ids": input_ids[:, past:], "attention_mask": attention_mask,
                CACHE_KEY: cache, "use_cache": True,
                "latent": "posterior" if (first and protocol == "posterior") else "prior",
                "z_generator": self._z_generator}

    @torch.no_grad()
    def generate(self, *args, z_protocol: str = "posterior",
                 z_generator: Optional[torch.Generator] = None, z_seed: Optional[int] = None,
                 **kwargs):
        """transformers' generate(), with Z drawn as in ftbench: posterior Z over the prompt
        (`z_protocol="prior"`: prior Z there too), a fresh prior Z per new token, all from
        `z_generator` (or a CPU generator seeded with `z_seed`), apart from any token
        sampling. Cached positions never get a new Z."""
        if z_protocol not in ("posterior", "prior"):
            raise ValueError(f"z_protocol: {z_protocol!r} is not one of posterior, prior")
        if z_generator is None and z_seed is not None:
            z_generator = torch.Generator().manual_seed(z_seed)
        kwargs.setdefault("use_cache", True)
        self._z_protocol, self._z_generator = z_protocol, z_generator
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._z_protocol = self._z_generator = None

"""Batched generation with a KV cache for both architectures.

Prompts are left-padded so every row's last prompt token sits in the same slot; rotary
positions restart at 0 for each row, so padding changes nothing a row computes.

For the Free Transformer, Z follows the paper's generation semantics (section 5 of the
recipe) by default: prefill runs the encoder over the prompt and samples Z from the
posterior for every prompt position; each new token gets a fresh uniform Z. Cached
positions are never resampled, every row draws its own Z, and Z comes from its own
generator, apart from the token sampler. `z_protocol="prior"` uses uniform Z for the
prompt too; `shared_z_BS` imposes one Z sequence per row (for shared-Z studies).

`z_streams` (and `token_streams`) give each row a generator of its own: a row's Z (and
sampled tokens) then depend only on its stream, never on which rows share its batch, so
an evaluator can seed each (prompt, sample) and batch them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from ftbench.model.baseline import BaselineDecoder

ZProtocol = Literal["posterior", "prior"]


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationOutput:
    tokens: list[list[int]]
    """New tokens per prompt, cut at the step where the row stopped: after its first stop
    token, or after the token that completed a stop string (both kept). Their lengths are
    the tokens each row really generated."""
    stopped: list[bool]
    """Whether each row ended on a stop token or a stop string (rather than
    max_new_tokens)."""
    step_logits: list[torch.Tensor] = field(default_factory=list)
    """If requested: logits (B, V) that chose each new token."""
    z_BS: torch.Tensor | None = None
    """Free Transformer only: the code used at every slot (left-padded prompt + new)."""
    prompt_slots: int = 0
    """Slots taken by the left-padded prompts."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(tokens_BP, valid_BP, positions_BP) for left-padded prompts."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (use a BOS/EOT token for "
                         "unconditional generation)")
    P = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        valid[i, P - len(p):] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    return tokens.to(device), valid.to(device), positions.to(device)


def sample_next(logits_BV: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits_BV.argmax(-1)
    probs = torch.softmax(logits_BV.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    gen_device = generator.device if generator is not None else probs.device
    choice = torch.multinomial(probs.to(gen_device), 1, generator=generator)
    return choice.squeeze(-1).to(logits_BV.device)


def sample_next_per_row(logits_BV: torch.Tensor, cfg: SamplingConfig,
                        streams: Sequence[torch.Generator]) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits_BV.argmax(-1)
    return torch.cat([sample_next(logits_BV[b:b + 1], cfg, g) for b, g in enumerate(streams)])


def _row_stream_codes(model, valid_BP: torch.Tensor, protocol: ZProtocol, max_new: int,
                      streams: Sequence[torch.Generator]) -> tuple[dict, torch.Tensor]:
    """Prefill latent kwargs and the decode codes (B, max_new), each row from its own
    stream: first the prompt's draws (posterior uniforms or prior codes), then one code per
    new token."""
    B, P = valid_BP.shape
    H = model.cfg.latent_bits
    device = valid_BP.device
    u_BPH = torch.zeros(B, P, H)
    z_BP = torch.zeros(B, P, dtype=torch.long)
    decode_BN = torch.empty(B, max_new, dtype=torch.long)
    for b, g in enumerate(streams):
        n = int(valid_BP[b].sum())
        if protocol == "posterior":
            u_BPH[b, P - n:] = torch.rand(n, H, generator=g)
        else:
            z_BP[b, P - n:] = torch.randint(0, 2**H, (n,), generator=g)
        decode_BN[b] = torch.randint(0, 2**H, (max_new,), generator=g)
    if protocol == "posterior":
        # Pad slots get prior codes from a fixed generator: they are never attended to.
        kw = {"latent": "posterior", "z_uniform_BTH": u_BPH.to(device),
              "z_generator": torch.Generator().manual_seed(0)}
    else:
        kw = {"latent": "fixed", "z_BT": z_BP.to(device)}
    return kw, decode_BN.to(device)


def _latent_kwargs(model, phase: str, protocol: ZProtocol, z_slice, z_generator) -> dict:
    if model.arch != "free":
        return {}
    if z_slice is not None:
        return {"latent": "fixed", "z_BT": z_slice}
    latent = "posterior" if (phase == "prefill" and protocol == "posterior") else "prior"
    return {"latent": latent, "z_generator": z_generator}


@torch.no_grad()
def generate(model: BaselineDecoder, prompts: Sequence[Sequence[int]], cfg: SamplingConfig,
             *, pad_id: int = 0, token_generator: torch.Generator | None = None,
             z_generator: torch.Generator | None = None, z_protocol: ZProtocol = "posterior",
             shared_z_BS: torch.Tensor | None = None,
             return_logits: bool = False, stop_strings: Sequence[str] = (),
             decode: Callable[[list[int]], str] | None = None,
             z_streams: Sequence[torch.Generator] | None = None,
             token_streams: Sequence[torch.Generator] | None = None,
             amp: str | None = None) -> GenerationOutput:
    """Generate up to cfg.max_new_tokens per prompt. A row ends at a stop token, or, when
    `stop_strings` and `decode` are given, as soon as its decoded text contains one of
    them (the caller cuts the text there). `amp="auto"` runs under bf16 autocast on CUDA."""
    from ftbench.evaluation.scoring import autocast_for

    device = next(model.parameters()).device
    with autocast_for(device, amp):
        return _generate(model, prompts, cfg, pad_id, token_generator, z_generator, z_protocol,
                         shared_z_BS, return_logits, stop_strings, decode, z_streams,
                         token_streams, device)


def _generate(model, prompts, cfg, pad_id, token_generator, z_generator, z_protocol,
              shared_z_BS, return_logits, stop_strings, decode, z_streams, token_streams,
              device) -> GenerationOutput:
    tokens_BP, valid_BP, positions_BP = left_pad(prompts, pad_id, device)
    B, P = tokens_BP.shape
    total = P + cfg.max_new_tokens
    if shared_z_BS is not None and shared_z_BS.shape != (B, total):
        raise ValueError(f"shared_z_BS must have shape {(B, total)} (prompt slots + new tokens)")
    for name, streams in (("z_streams", z_streams), ("token_streams", token_streams)):
        if streams is not None and len(streams) != B:
            raise ValueError(f"{name}: one generator per prompt ({B}), got {len(streams)}")
    cache = model.new_cache(B, total)
    z_slot = (lambda s, e: shared_z_BS[:, s:e].to(device)) if shared_z_BS is not None \
        else (lambda s, e: None)
    prefill_kw = _latent_kwargs(model, "prefill", z_protocol, z_slot(0, P), z_generator)
    if z_streams is not None and shared_z_BS is None and model.arch == "free":
        prefill_kw, decode_BN = _row_stream_codes(model, valid_BP, z_protocol,
                                                  cfg.max_new_tokens, z_streams)
        z_slot = lambda s, e: decode_BN[:, s - P:e - P]  # noqa: E731 - decode slots only

    out = model(tokens_BP, positions_BT=positions_BP, valid_BT=valid_BP, cache=cache,
                **prefill_kw)
    z_parts = [out.z_BT] if out.z_BT is not None else []
    logits_BV = out.logits_BTV[:, -1]
    next_pos_B = positions_BP[:, -1] + 1
    new_tokens = torch.empty(B, 0, dtype=torch.long, device=device)
    done_B = torch.zeros(B, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device)
    step_logits = []
    # The step at which each row stopped: later slots hold pad_id, never generated tokens.
    end_B: list[int | None] = [None] * B
    for step in range(cfg.max_new_tokens):
        if return_logits:
            step_logits.append(logits_BV.cpu())
        tok_B = (sample_next_per_row(logits_BV, cfg, token_streams) if token_streams is not None
                 else sample_next(logits_BV, cfg, token_generator))
        tok_B = torch.where(done_B, torch.full_like(tok_B, pad_id), tok_B)
        new_tokens = torch.cat((new_tokens, tok_B[:, None]), dim=1)
        was_done = done_B.clone()
        if len(stop_ids):
            done_B |= torch.isin(tok_B, stop_ids)
        if stop_strings and decode is not None:
            for b in (~done_B).nonzero().flatten().tolist():
                text = decode(new_tokens[b].tolist())
                if any(stop in text for stop in stop_strings):
                    done_B[b] = True
        for b in (done_B & ~was_done).nonzero().flatten().tolist():
            end_B[b] = step
        if bool(done_B.all()) or step == cfg.max_new_tokens - 1:
            break
        out = model(tok_B[:, None], positions_BT=next_pos_B[:, None], cache=cache,
                    **_latent_kwargs(model, "decode", z_protocol, z_slot(P + step, P + step + 1),
                                     z_generator))
        if out.z_BT is not None:
            z_parts.append(out.z_BT)
        logits_BV = out.logits_BTV[:, -1]
        next_pos_B = next_pos_B + 1

    rows, stopped = [], []
    for row, end in zip(new_tokens.tolist(), end_B):
        rows.append(row if end is None else row[:end + 1])
        stopped.append(end is not None)
    return GenerationOutput(rows, stopped, step_logits,
                            torch.cat(z_parts, dim=1) if z_parts else None, P)

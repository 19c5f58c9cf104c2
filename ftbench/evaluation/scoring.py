"""Log-likelihood of continuations, for both architectures, without answer leakage.

For a Free Transformer the encoder is non-causal, so a forward over context +
continuation would put the continuation into Z. Protocols (recorded with every result):
- "posterior" (default, the paper's generation semantics): the encoder sees the context
  only; context positions get posterior Z, continuation positions prior (uniform) Z;
- "prior": uniform Z everywhere, the context included.
With K draws per request, the continuation's log-probability is log-mean-exp over the
draws: an estimate of log E_Z p(continuation | context, Z). Every draw is seeded by the
request's tokens, the draw index and the seed, so scores do not depend on batching.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from ftbench.model.binary_mapper import sample_codes

Protocol = Literal["posterior", "prior"]


@dataclass(frozen=True)
class ZProtocol:
    protocol: Protocol = "posterior"
    draws: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in ("posterior", "prior"):
            raise ValueError(f"z protocol: {self.protocol!r} is not one of posterior, prior")
        if self.draws < 1:
            raise ValueError(f"z draws: must be >= 1, got {self.draws}")


def _request_generator(seed: int, ids: Sequence[int], ctx_len: int, draw: int) -> torch.Generator:
    h = hashlib.sha256(f"{seed}/{draw}/{ctx_len}/".encode() + bytes(str(list(ids)), "ascii"))
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") >> 1)


def _context_only_generator(seed: int, ctx: Sequence[int], draw: int) -> torch.Generator:
    """Z at context positions depends on the context alone (never on the continuation)."""
    return _request_generator(seed, ctx, len(ctx), draw)


@torch.no_grad()
def score_continuations(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                        z: ZProtocol = ZProtocol(), batch_size: int = 8,
                        max_length: int | None = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens), is_greedy) for each (context, continuation).

    Inputs are left-truncated to max_length + 1 tokens (default: the model's max_seq_len);
    the context must keep at least one token. Batches are right-padded; order is preserved.
    """
    device = next(model.parameters()).device
    max_length = max_length or model.cfg.max_seq_len
    prepared = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation needs at least one token")
        if not ctx:
            raise ValueError("a context needs at least one token (use the EOT/prefix token)")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        n_ctx = len(full) - len(cont)
        if n_ctx < 1:
            raise ValueError(f"continuation of {len(cont)} tokens does not fit max_length "
                             f"{max_length}")
        prepared.append((full, n_ctx, len(cont)))
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        rows = [prepared[i] for i in idx]
        for i, out in zip(idx, _score_batch(model, rows, z, device)):
            results[i] = out
    return results


def _score_batch(model, rows, z: ZProtocol, device) -> list[tuple[float, bool]]:
    T = max(len(full) for full, _, _ in rows) - 1
    B = len(rows)
    tokens = torch.zeros(B, T, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    seen = torch.zeros(B, T, dtype=torch.bool)  # what the encoder may see: the context
    for b, (full, n_ctx, _) in enumerate(rows):
        tokens[b, :len(full) - 1] = torch.tensor(full[:-1])
        valid[b, :len(full) - 1] = True
        seen[b, :n_ctx] = True
    tokens, valid, seen = tokens.to(device), valid.to(device), seen.to(device)

    draws_logp = []  # (K, B) continuation log-probs
    mix_logp_BTV = None  # log-mean-exp over draws of per-position distributions
    if model.arch == "free" and z.protocol == "posterior":
        latent_BTH = model.latent_logits(tokens, valid_BT=valid, encoder_mask_BT=seen)
    for k in range(z.draws if model.arch == "free" else 1):
        kw = {}
        if model.arch == "free":
            z_BT = torch.empty(B, T, dtype=torch.long)
            H = model.cfg.latent_bits
            for b, (full, n_ctx, _) in enumerate(rows):
                g_ctx = _context_only_generator(z.seed, full[:n_ctx], k)
                g_rest = _request_generator(z.seed, full, n_ctx, k)
                z_BT[b] = torch.randint(0, 2**H, (T,), generator=g_rest)
                if z.protocol == "posterior":
                    u = torch.rand(n_ctx, H, generator=g_ctx)
                    z_BT[b, :n_ctx] = sample_codes(latent_BTH[b, :n_ctx].cpu(), uniform_NH=u)
                else:
                    z_BT[b, :n_ctx] = torch.randint(0, 2**H, (n_ctx,), generator=g_ctx)
            kw = {"latent": "fixed", "z_BT": z_BT.to(device)}
        logits = model(tokens, valid_BT=valid, **kw).logits_BTV
        # Log-softmax in at least fp32 (bf16 logits lose the tail probabilities).
        logp_BTV = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)
        mix_logp_BTV = logp_BTV if mix_logp_BTV is None else torch.logaddexp(mix_logp_BTV, logp_BTV)
        per_row = []
        for b, (full, n_ctx, n_cont) in enumerate(rows):
            pos = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont, device=device)
            target = torch.tensor(full[n_ctx:], device=device)
            per_row.append(logp_BTV[b, pos, target].sum())
        draws_logp.append(torch.stack(per_row))
    K = len(draws_logp)
    logp_B = torch.logsumexp(torch.stack(draws_logp), dim=0) - math.log(K)
    out = []
    for b, (full, n_ctx, n_cont) in enumerate(rows):
        pos = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont, device=device)
        target = torch.tensor(full[n_ctx:], device=device)
        greedy = bool((mix_logp_BTV[b, pos].argmax(-1) == target).all())
        out.append((float(logp_B[b]), greedy))
    return out

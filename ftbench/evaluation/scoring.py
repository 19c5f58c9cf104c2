"""Log-likelihood of continuations, for both architectures, without answer leakage.

For a Free Transformer the encoder is non-causal, so a forward over context +
continuation would put the continuation into Z. Protocols (recorded with every result):
- "posterior" (the paper's generation semantics): the encoder sees the context only;
  context positions get posterior Z, continuation positions prior (uniform) Z;
- "prior": uniform Z everywhere, the context included.
With K draws per request, the continuation's log-probability is log-mean-exp over the
draws: an estimate of log E_Z p(continuation | context, Z), biased low by Jensen's
inequality (the bias shrinks as K grows).

What makes two choices of an item comparable: draw k uses the same Z for every
continuation of a context. Context Z depends on (seed, draw, context); the code at a
continuation position depends on (seed, draw, context, position) and never on the
continuation's tokens. Nothing depends on batching.

What makes it cheap:
- requests that share a context are scored from one pass over it (its KV cache is copied
  into one row per continuation), so the 4 choices of an MMLU item cost about one;
- a Free model's first half (blocks 1..L/2) does not depend on Z: it runs once per
  context and once per continuation; only blocks L/2+1..L run once per draw and protocol;
- vocabulary logits and log-softmax are computed only where a continuation token is read;
- on a GPU the model runs under bf16 autocast; log-softmax is always taken in fp32.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from ftbench.model.binary_mapper import sample_codes

Protocol = Literal["posterior", "prior"]
PROTOCOLS: tuple[str, ...] = ("posterior", "prior")
BASELINE_KEY = "baseline"
"""score_requests' key for a baseline, which has no Z protocol."""


@dataclass(frozen=True)
class ZProtocol:
    protocol: Protocol = "posterior"
    draws: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"z protocol: {self.protocol!r} is not one of posterior, prior")
        if self.draws < 1:
            raise ValueError(f"z draws: must be >= 1, got {self.draws}")


@dataclass(frozen=True)
class Score:
    logp: float
    """log-mean-exp over the draws of log p(continuation | context, Z)."""
    greedy: bool
    """Every continuation token is the argmax of the draws' mixture distribution."""
    draws: tuple[float, ...]
    """log p(continuation | context, Z_k) for each draw k (one value for a baseline)."""


# ---- Z draws: a pure function of (seed, draw, context, position) ----------------------

def context_key(ctx: Sequence[int]) -> bytes:
    return hashlib.sha256(b",".join(str(int(t)).encode() for t in ctx)).digest()


def stream_generator(seed: int, key: bytes, draw: int, what: str) -> torch.Generator:
    """A generator seeded by (seed, draw or sample index, content key, purpose)."""
    h = hashlib.sha256(f"{seed}/{draw}/{what}/".encode() + key).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)


def context_uniforms(key: bytes, n_ctx: int, n_bits: int, seed: int, draw: int) -> torch.Tensor:
    """U(0,1) draws (n_ctx, H) that turn the encoder's bit logits into posterior codes."""
    return torch.rand(n_ctx, n_bits, generator=stream_generator(seed, key, draw, "ctx-posterior"))


def context_codes(latent_TH: torch.Tensor | None, key: bytes, n_ctx: int, n_bits: int,
                  seed: int, draw: int) -> torch.Tensor:
    """Codes (n_ctx,) at the context positions: posterior samples from the encoder's bit
    logits `latent_TH` (which saw the context only), or uniform ones when it is None."""
    if latent_TH is None:
        return torch.randint(0, 2**n_bits, (n_ctx,),
                             generator=stream_generator(seed, key, draw, "ctx-prior"))
    u_TH = context_uniforms(key, n_ctx, n_bits, seed, draw)
    return sample_codes(latent_TH.detach().float().cpu(), uniform_NH=u_TH)


def continuation_codes(key: bytes, positions: Sequence[int], n_bits: int, seed: int,
                       draw: int) -> torch.Tensor:
    """Uniform codes at the given absolute positions after a context: each one hashed from
    (seed, draw, context, position), so no continuation token can influence any of them."""
    prefix = f"{seed}/{draw}/cont/".encode() + key
    codes = [int.from_bytes(hashlib.sha256(prefix + str(p).encode()).digest()[:8], "little")
             % 2**n_bits for p in positions]
    return torch.tensor(codes, dtype=torch.long)


# ---- scoring ---------------------------------------------------------------------------

def autocast_for(device: torch.device, amp: str | None):
    """bf16 autocast on CUDA by default ("auto"); "bf16" forces it (tests on CPU); None or
    "fp32" keeps the weights' dtype."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else nullcontext()


def _log_softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    # bf16 logits would lose the small probabilities that log-likelihoods are made of.
    return F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)


@dataclass
class _Group:
    ctx: tuple[int, ...]
    conts: list[tuple[int, ...]]
    owners: list[int]  # request index of each continuation


@torch.no_grad()
def score_requests(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   protocols: Sequence[str] = ("posterior",), draws: int = 1, seed: int = 0,
                   batch_size: int = 8, max_length: int | None = None,
                   amp: str | None = "auto") -> dict[str, list[Score]]:
    """Score every (context, continuation); returns {protocol: [Score per request]} for a
    Free model (all protocols from one pass over the Z-independent blocks) and
    {"baseline": [...]} for a baseline (one deterministic pass).

    Inputs are left-truncated to max_length + 1 tokens (default: the model's max_seq_len);
    the context must keep at least one token. `batch_size` counts distinct contexts.
    """
    free = model.arch == "free"
    if free:
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise ValueError(f"protocols: {list(protocols)} must be a non-empty subset of "
                             f"{list(PROTOCOLS)}")
        if draws < 1:
            raise ValueError(f"z draws: must be >= 1, got {draws}")
    keys = list(dict.fromkeys(protocols)) if free else [BASELINE_KEY]
    K = draws if free else 1
    max_length = max_length or model.cfg.max_seq_len
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError("a continuation needs at least one token")
        if not ctx:
            raise ValueError("a context needs at least one token (use the EOT/prefix token)")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        n_ctx = len(full) - len(cont)
        if n_ctx < 1:
            raise ValueError(f"continuation of {len(cont)} tokens does not fit max_length "
                             f"{max_length}")
        g = groups.setdefault(tuple(full[:n_ctx]), _Group(tuple(full[:n_ctx]), [], []))
        g.conts.append(tuple(cont))
        g.owners.append(i)
    order = sorted(groups.values(), key=lambda g: (-len(g.ctx), -max(map(len, g.conts))))
    out: dict[str, list[Score | None]] = {k: [None] * len(requests) for k in keys}
    batch: list[_Group] = []

    def flush():
        for g, per_cont in zip(batch, _score_groups(model, batch, keys, K, seed, amp)):
            for owner, scores in zip(g.owners, per_cont):
                for k in keys:
                    out[k][owner] = scores[k]
        batch.clear()

    for g in order:
        # The cache holds the longest context plus the longest continuation of the batch.
        longest_cont = max([len(c) for b in batch for c in b.conts] + [len(c) for c in g.conts])
        if batch and (len(batch) == batch_size or
                      len(batch[0].ctx) + longest_cont - 1 > model.cfg.max_seq_len):
            flush()
        batch.append(g)
    if batch:
        flush()
    return out  # type: ignore[return-value]


def score_continuations(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                        z: ZProtocol = ZProtocol(), batch_size: int = 8,
                        max_length: int | None = None,
                        amp: str | None = "auto") -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens), is_greedy) for each (context, continuation),
    under one protocol."""
    res = score_requests(model, requests, protocols=(z.protocol,), draws=z.draws, seed=z.seed,
                         batch_size=batch_size, max_length=max_length, amp=amp)
    (scores,) = res.values()
    return [(s.logp, s.greedy) for s in scores]


def _left_pad(rows: Sequence[Sequence[int]], device):
    T = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        tokens[b, T - len(r):] = torch.tensor(r)
        valid[b, T - len(r):] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    return tokens.to(device), valid.to(device), positions.to(device)


def _score_groups(model, groups: list[_Group], keys: list[str], K: int, seed: int,
                  amp: str | None) -> list[list[dict[str, Score]]]:
    """One batch of contexts, each with its continuations: [group][continuation][key]."""
    device = next(model.parameters()).device
    free = model.arch == "free"
    G = len(groups)
    ctx_GT, valid_GT, pos_GT = _left_pad([g.ctx for g in groups], device)
    Tc = ctx_GT.shape[1]
    n_ctx = [len(g.ctx) for g in groups]
    rows = [(gi, c) for gi, g in enumerate(groups) for c in g.conts]  # one per continuation
    Lc = max(len(c) for _, c in rows) - 1  # continuation tokens fed back as inputs
    half = range(model.z_independent_layers)
    autocast = autocast_for(device, amp)

    # Z-independent blocks: once per context, then once per continuation from its cache.
    with autocast:
        cache1 = model.new_cache(G, Tc + Lc, layers=half) if Lc > 0 else None
        s1 = model.run_z_independent(ctx_GT, positions_BT=pos_GT, valid_BT=valid_GT,
                                     cache=cache1)
        s1c = None
        if Lc > 0:
            cont_NL = torch.zeros(len(rows), Lc, dtype=torch.long)
            cvalid_NL = torch.zeros(len(rows), Lc, dtype=torch.bool)
            for r, (gi, c) in enumerate(rows):
                cont_NL[r, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                cvalid_NL[r, :len(c) - 1] = True
            row_group_N = torch.tensor([gi for gi, _ in rows], device=device)
            cpos_NL = (torch.tensor([n_ctx[gi] for gi, _ in rows])[:, None]
                       + torch.arange(Lc)[None]).to(device)
            s1c = model.run_z_independent(cont_NL.to(device), positions_BT=cpos_NL,
                                          valid_BT=cvalid_NL.to(device),
                                          cache=cache1.select(row_group_N))

    if not free:
        hid_last_GD, hid_cont_NLD = s1.x_BTD[:, -1], (s1c.x_BTD if s1c is not None else None)
        per_key = {BASELINE_KEY: _collect(model, rows, hid_last_GD[:, None],
                                          None if hid_cont_NLD is None else hid_cont_NLD[:, None],
                                          1, autocast)}
        return _regroup(groups, per_key)

    H = model.cfg.latent_bits
    ckeys = [context_key(g.ctx) for g in groups]
    latent_GTH = None
    if "posterior" in keys:
        with autocast:
            latent_GTH = model.encode(s1)
    # Rows of the Z-dependent passes: context g, draw k at g*K + k; continuation r, draw k
    # at r*K + k.
    s2 = s1.select(torch.arange(G, device=device).repeat_interleave(K))
    s2c = None
    if s1c is not None:
        s2c = s1c.select(torch.arange(len(rows), device=device).repeat_interleave(K))
        zc_GKL = torch.stack([torch.stack([
            continuation_codes(ckeys[gi], range(n_ctx[gi], n_ctx[gi] + Lc), H, seed, k)
            for k in range(K)]) for gi in range(G)])
        zc_NKL = torch.stack([zc_GKL[gi] for gi, _ in rows]).to(device)
        cache_rows = torch.tensor([gi * K + k for gi, _ in rows for k in range(K)],
                                  device=device)
    per_key = {}
    for key in keys:
        z_GKT = torch.zeros(G, K, Tc, dtype=torch.long)
        for gi in range(G):
            lat = latent_GTH[gi, Tc - n_ctx[gi]:] if key == "posterior" else None
            for k in range(K):
                z_GKT[gi, k, Tc - n_ctx[gi]:] = context_codes(lat, ckeys[gi], n_ctx[gi], H,
                                                              seed, k)
        with autocast:
            cache2 = (model.new_cache(G * K, Tc + Lc, layers=range(half.stop,
                                                                   model.cfg.n_layers))
                      if s2c is not None else None)
            x2 = model.run_z_dependent(s2, z_GKT.view(G * K, Tc).to(device), cache2)
            hid_last = x2[:, -1].view(G, K, -1)
            hid_cont = None
            if s2c is not None:
                xc = model.run_z_dependent(s2c, zc_NKL.view(-1, Lc), cache2.select(cache_rows))
                hid_cont = xc.view(len(rows), K, Lc, -1)
        per_key[key] = _collect(model, rows, hid_last, hid_cont, K, autocast)
    return _regroup(groups, per_key)


def _collect(model, rows, hid_last_GKD, hid_cont_NKLD, K: int, autocast) -> list[Score]:
    """Scores per continuation row from the hidden states at the positions that predict
    its tokens: the context's last slot, then its own first len - 1 slots."""
    with autocast:
        logits_last = model.readout(hid_last_GKD)
    logp_last_GKV = _log_softmax_fp32(logits_last)
    mix_last_GV = torch.logsumexp(logp_last_GKV, 1) - math.log(K)
    out = []
    for r, (gi, c) in enumerate(rows):
        draws_K = logp_last_GKV[gi, :, c[0]].double()
        greedy = int(mix_last_GV[gi].argmax()) == c[0]
        if len(c) > 1:
            with autocast:
                logits = model.readout(hid_cont_NKLD[r, :, :len(c) - 1])
            logp_KLV = _log_softmax_fp32(logits)
            target_L = torch.tensor(c[1:], device=logp_KLV.device)
            draws_K = draws_K + logp_KLV.gather(
                -1, target_L[None, :, None].expand(K, -1, 1))[..., 0].double().sum(-1)
            mix_LV = torch.logsumexp(logp_KLV, 0)
            greedy = greedy and bool((mix_LV.argmax(-1) == target_L).all())
        logp = float(torch.logsumexp(draws_K, 0) - math.log(K))
        out.append(Score(logp, greedy, tuple(float(x) for x in draws_K)))
    return out


def _regroup(groups: list[_Group], per_key: dict[str, list[Score]]):
    out, r = [], 0
    for g in groups:
        out.append([{k: v[r + j] for k, v in per_key.items()} for j in range(len(g.conts))])
        r += len(g.conts)
    return out

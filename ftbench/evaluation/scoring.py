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
- requests that share a context are scored from one pass over it; their continuations
  are packed after it in one row, each seeing the context and its own tokens only, so the
  4 choices of an MMLU item cost about one request;
- a Free model's first half (blocks 1..L/2) does not depend on Z: it runs once per
  context and once per continuation; only blocks L/2+1..L run once per draw and protocol;
- vocabulary logits and log-softmax are computed only where a continuation token is read,
  and the last block runs its queries and MLP only there;
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
FREE_Z_DRAWS = 8
"""Z draws per log-likelihood item for Free models (docs/evaluation.md, "How Free models
are scored")."""
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
    """Every continuation token is the argmax of the draws' unweighted mean of per-token
    distributions. For K > 1 this approximates greedy decoding of the K-draw mixture, which
    weights draw k at position i by its likelihood of the tokens before i; exact for one
    draw or a one-token continuation. lm-eval's accuracy metrics do not read it."""
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

    Contexts are left-truncated to fit max_length (default: the model's max_seq_len) by
    `truncate_contexts`: one cut per context, so an item's choices share it (and its Z).
    `batch_size` counts distinct contexts.
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
    for i, ((ctx, cont), (kept, _)) in enumerate(zip(requests,
                                                     truncate_contexts(requests, max_length))):
        g = groups.setdefault(kept, _Group(kept, [], []))
        g.conts.append(tuple(cont))
        g.owners.append(i)
    order = sorted(_fit(groups.values(), model.cfg.max_seq_len),
                   key=lambda g: (-len(g.ctx), -_packed_len(g)))
    out: dict[str, list[Score | None]] = {k: [None] * len(requests) for k in keys}
    batch: list[_Group] = []

    def flush():
        for g, per_cont in zip(batch, _score_groups(model, batch, keys, K, seed, amp, batch_size)):
            for owner, scores in zip(g.owners, per_cont):
                for k in keys:
                    out[k][owner] = scores[k]
        batch.clear()

    for g in order:
        # The caches hold the longest context plus the longest packed continuations.
        packed = max([_packed_len(b) for b in batch] + [_packed_len(g)])
        if batch and (len(batch) == batch_size or
                      len(batch[0].ctx) + packed > model.cfg.max_seq_len):
            flush()
        batch.append(g)
    if batch:
        flush()
    return out  # type: ignore[return-value]


def truncate_contexts(requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                      max_length: int) -> list[tuple[tuple[int, ...], int]]:
    """(context kept, tokens dropped) for each (context, continuation).

    lm-eval's rule, (context + continuation)[-(max_length + 1):][:-1], applied per context
    with its longest continuation: every request with that context keeps its last
    max_length + 1 - longest tokens, so the choices of one item are scored on one context,
    under one Z (per-request cuts would give choices of different lengths different
    contexts). Where the longest continuation fits, this is lm-eval's cut exactly."""
    longest: dict[tuple[int, ...], int] = {}
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation needs at least one token")
        if not ctx:
            raise ValueError("a context needs at least one token (use the EOT/prefix token)")
        key = tuple(int(t) for t in ctx)
        longest[key] = max(longest.get(key, 0), len(cont))
    out = []
    for ctx, cont in requests:
        key = tuple(int(t) for t in ctx)
        keep = max_length + 1 - longest[key]
        if keep < 1:
            raise ValueError(f"continuation of {longest[key]} tokens does not fit max_length "
                             f"{max_length}")
        dropped = max(0, len(key) - keep)
        out.append((key[dropped:], dropped))
    return out


def _packed_len(g: _Group) -> int:
    return sum(len(c) - 1 for c in g.conts)


def _fit(groups, max_len: int) -> list[_Group]:
    """Split a context's continuations over several groups when, packed after it, they
    would not fit the model (scores do not change: Z depends on positions, not packing)."""
    out = []
    for g in groups:
        part = _Group(g.ctx, [], [])
        for cont, owner in zip(g.conts, g.owners):
            if part.conts and len(g.ctx) + _packed_len(part) + len(cont) - 1 > max_len:
                out.append(part)
                part = _Group(g.ctx, [], [])
            part.conts.append(cont)
            part.owners.append(owner)
        out.append(part)
    return out


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


def _packed_continuations(groups: list[_Group], n_ctx: list[int], Tc: int, device):
    """Each group's continuation inputs (every token but the last) packed into one row
    after its context: tokens, validity, positions (each continuation restarts at the end
    of its context) and an attention pattern in which a token sees the context and the
    earlier tokens of its own continuation only. Returns those and each continuation's
    first packed slot."""
    lengths = [[len(c) - 1 for c in g.conts] for g in groups]
    P = max(sum(ls) for ls in lengths)
    G = len(groups)
    tokens = torch.zeros(G, P, dtype=torch.long)
    valid = torch.zeros(G, P, dtype=torch.bool)
    positions = torch.zeros(G, P, dtype=torch.long)
    owner = torch.full((G, P), -1, dtype=torch.long)
    starts = []
    for gi, g in enumerate(groups):
        at = 0
        for ci, c in enumerate(g.conts):
            n = len(c) - 1
            starts.append(at)
            tokens[gi, at:at + n] = torch.tensor(c[:-1], dtype=torch.long)
            valid[gi, at:at + n] = True
            positions[gi, at:at + n] = n_ctx[gi] + torch.arange(n)
            owner[gi, at:at + n] = ci
            at += n
    slot = torch.arange(P)
    same_GPP = owner[:, :, None] == owner[:, None, :]
    own_GPP = same_GPP & (slot[None, None, :] <= slot[None, :, None]) & valid[:, None, :]
    return tokens.to(device), valid.to(device), positions.to(device), own_GPP, starts


def _score_groups(model, groups: list[_Group], keys: list[str], K: int, seed: int,
                  amp: str | None, batch_size: int) -> list[list[dict[str, Score]]]:
    """One batch of contexts, each with its continuations: [group][continuation][key]."""
    device = next(model.parameters()).device
    free = model.arch == "free"
    G = len(groups)
    ctx_GT, valid_GT, pos_GT = _left_pad([g.ctx for g in groups], device)
    Tc = ctx_GT.shape[1]
    n_ctx = [len(g.ctx) for g in groups]
    rows = [(gi, c) for gi, g in enumerate(groups) for c in g.conts]  # one per continuation
    P = max(sum(len(c) - 1 for c in g.conts) for g in groups)  # packed continuation inputs
    half = range(model.z_independent_layers)
    # Left padding puts every context's last token in slot Tc - 1: the only context
    # position whose output is read (it predicts each continuation's first token).
    last_slot = torch.tensor([Tc - 1], device=device)
    autocast = autocast_for(device, amp)

    # Z-independent blocks: once per context, then once for all its continuations.
    with autocast:
        cache1 = model.new_cache(G, Tc + P, layers=half) if P > 0 else None
        s1 = model.run_z_independent(ctx_GT, positions_BT=pos_GT, valid_BT=valid_GT,
                                     cache=cache1, rows_N=last_slot)
        s1c, starts = None, []
        if P > 0:
            tok_GP, cvalid_GP, cpos_GP, own_GPP, starts = _packed_continuations(
                groups, n_ctx, Tc, device)
            attend_GPS = torch.cat((valid_GT[:, None, :].expand(G, P, Tc).cpu(), own_GPP),
                                   dim=2).to(device)
            s1c = model.run_z_independent(tok_GP, positions_BT=cpos_GP, valid_BT=cvalid_GP,
                                          cache=cache1, attend_BTS=attend_GPS)

    if not free:
        hid_cont = None if s1c is None else s1c.x_BTD[:, None]
        per_key = {BASELINE_KEY: _collect(model, rows, starts, s1.x_BTD[:, None, -1], hid_cont,
                                          1, autocast)}
        return _regroup(groups, per_key)

    H = model.cfg.latent_bits
    ckeys = [context_key(g.ctx) for g in groups]
    latent_GTH = None
    if "posterior" in keys:
        with autocast:
            latent_GTH = model.encode(s1)
    zc_GKP = None
    if s1c is not None:
        # A packed slot's code depends on its position after the context only, so every
        # continuation of an item sees the same Z at the same offset.
        zc_GKP = torch.zeros(G, K, P, dtype=torch.long)
        cpos = cpos_GP.cpu()
        for gi in range(G):
            for k in range(K):
                zc_GKP[gi, k] = continuation_codes(ckeys[gi], cpos[gi].tolist(), H, seed, k)
    # Draws run a chunk at a time, about `batch_size` rows per pass like the first half:
    # G x K rows at once would leave the CPU caches for memory with no fewer FLOPs.
    per_pass = max(1, batch_size // G)
    per_key = {}
    for key in keys:
        z_GKT = torch.zeros(G, K, Tc, dtype=torch.long)
        for gi in range(G):
            lat = latent_GTH[gi, Tc - n_ctx[gi]:] if key == "posterior" else None
            for k in range(K):
                z_GKT[gi, k, Tc - n_ctx[gi]:] = context_codes(lat, ckeys[gi], n_ctx[gi], H,
                                                              seed, k)
        hid_last_GKD = hid_cont_GKPD = None
        for k0 in range(0, K, per_pass):
            ks = range(k0, min(K, k0 + per_pass))
            # Row k * G + g of this pass: context g under draw k.
            rep = torch.arange(G, device=device).repeat(len(ks))
            with autocast:
                cache2 = (model.new_cache(len(rep), Tc + P,
                                          layers=range(half.stop, model.cfg.n_layers))
                          if s1c is not None else None)
                z_RT = z_GKT[:, ks].transpose(0, 1).reshape(-1, Tc).to(device)
                x2 = model.run_z_dependent(s1.select(rep), z_RT, cache2, rows_N=last_slot)
                if hid_last_GKD is None:
                    hid_last_GKD = x2.new_empty(G, K, x2.shape[-1])
                hid_last_GKD[:, ks] = x2.view(len(ks), G, -1).transpose(0, 1)
                if s1c is not None:
                    zc_RP = zc_GKP[:, ks].transpose(0, 1).reshape(-1, P).to(device)
                    xc = model.run_z_dependent(s1c.select(rep), zc_RP, cache2)
                    if hid_cont_GKPD is None:
                        hid_cont_GKPD = xc.new_empty(G, K, P, xc.shape[-1])
                    hid_cont_GKPD[:, ks] = xc.view(len(ks), G, P, -1).transpose(0, 1)
        per_key[key] = _collect(model, rows, starts, hid_last_GKD, hid_cont_GKPD, K, autocast)
    return _regroup(groups, per_key)


def _collect(model, rows, starts, hid_last_GKD, hid_cont_GKPD, K: int,
             autocast) -> list[Score]:
    """Scores per continuation from the hidden states at the positions that predict its
    tokens: the context's last slot, then its own packed slots but the last."""
    with autocast:
        logits_last = model.readout(hid_last_GKD)
    logp_last_GKV = _log_softmax_fp32(logits_last)
    mix_last_GV = torch.logsumexp(logp_last_GKV, 1) - math.log(K)
    out = []
    for r, (gi, c) in enumerate(rows):
        draws_K = logp_last_GKV[gi, :, c[0]].double()
        greedy = int(mix_last_GV[gi].argmax()) == c[0]
        if len(c) > 1:
            st = starts[r]
            with autocast:
                logits = model.readout(hid_cont_GKPD[gi, :, st:st + len(c) - 1])
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

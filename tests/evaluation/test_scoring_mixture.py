"""The K-draw mixture's greedy flag, the posterior's seeded uniforms and the CUDA autocast
dtype, each against an independent computation."""
import hashlib

import torch
import torch.nn.functional as F

from ftbench.evaluation.scoring import (autocast_for, context_codes, context_key,
                                        continuation_codes, score_requests)
from ftbench.model import build_model


@torch.no_grad()
def _mixture_step(model, ctx, prefix, draws, seed):
    """Per draw, a full forward over ctx + prefix with that draw's prior Z; the mixture
    sum_k p_k(. | ctx, prefix) at the next position (unnormalised: argmax is what counts)."""
    H, n, key = model.cfg.latent_bits, len(ctx), context_key(ctx)
    x = torch.tensor([ctx + prefix])
    probs = 0
    for k in range(draws):
        z = torch.cat((context_codes(None, key, n, H, seed, k),
                       continuation_codes(key, range(n, n + len(prefix)), H, seed, k)))
        logits = model(x, latent="fixed", z_BT=z[None]).logits_BTV[0, -1]
        probs = probs + F.softmax(logits, -1)
    return probs


def test_greedy_flag_of_multi_token_continuations_follows_the_mixture_over_draws(toy_cfg):
    """With K > 1 a continuation is greedy when each token is the argmax of the mixture over
    draws at its position; the reference decodes that argmax token by token, one full
    forward per draw. A mixture taken over positions instead of draws, or an argmax over the
    flattened (position, vocabulary) table, flags the greedy continuation wrongly."""
    free = build_model(toy_cfg, "free", seed=3, dtype=torch.float64).eval()
    # At initialisation, residual updates are small and the embeddings tied, so the argmax
    # copies the last token and every greedy continuation is one token repeated, which an
    # argmax over the flattened table matches by chance. Weights of gain 2 give varied
    # argmaxes that depend on the draw.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in free.named_parameters():
            if p.ndim == 2 and "tok_emb" not in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 2.0
                        / p.shape[1] ** 0.5)
    ctx, K, seed = [5, 9, 13, 2], 3, 4
    g = []
    for _ in range(4):
        g.append(int(_mixture_step(free, ctx, g, K, seed).argmax()))
    assert len(set(g)) >= 3, g  # the construction above did its job
    V = free.cfg.vocab_size
    conts = [g[:3], g[:4], [g[0], (g[1] + 1) % V], g[:2] + [(g[2] + 1) % V], g[:2]]
    expected = [True, True, False, False, True]
    res = score_requests(free, [(ctx, c) for c in conts], protocols=("prior",), draws=K,
                         seed=seed, batch_size=8)["prior"]
    assert [s.greedy for s in res] == expected


def test_posterior_codes_follow_the_seed_through_their_uniforms():
    """Posterior codes are Bernoulli(sigmoid(logit)) bits from U(0,1) draws seeded by
    (seed, draw, context): by hand, bit h = [u_h < sigmoid(L_h)], code = sum 2^h bit_h.
    At logits 0 every bit is a fair coin, so two seeds must give different codes."""
    key, H, n = context_key([7, 1, 8]), 5, 64
    logits = torch.zeros(n, H)
    for seed in (0, 1):
        h = hashlib.sha256(f"{seed}/0/ctx-posterior/".encode() + key).digest()
        u = torch.rand(n, H, generator=torch.Generator().manual_seed(
            int.from_bytes(h[:8], "little") >> 1))
        by_hand = ((u < 0.5).long() * 2 ** torch.arange(H)).sum(-1)
        assert torch.equal(context_codes(logits, key, n, H, seed=seed, draw=0), by_hand)
    assert not torch.equal(context_codes(logits, key, n, H, seed=0, draw=0),
                           context_codes(logits, key, n, H, seed=1, draw=0))


def test_cuda_autocast_is_bf16_not_the_cuda_default_fp16():
    """torch.autocast on CUDA defaults to fp16, whose range (max 65504) overflows logits
    and activations that bf16 keeps; the scorer must name bf16 on every path."""
    import warnings
    cuda = torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here: torch warns and disables autocast
        for amp in ("auto", "bf16"):
            ctx = autocast_for(cuda, amp)
            assert isinstance(ctx, torch.autocast) and ctx.device == "cuda", amp
            assert ctx.fast_dtype == torch.bfloat16, amp
    assert autocast_for(torch.device("cpu"), "bf16").fast_dtype == torch.bfloat16

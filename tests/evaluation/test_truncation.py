"""Log-likelihood contexts cut to fit the model: lm-eval's rule, one cut per context (so an
item's choices share context and Z), counted."""

import torch

from ftbench.evaluation.scoring import score_requests, truncate_contexts
from ftbench.model import build_model


def test_one_cut_per_context_by_its_longest_continuation():
    ctx = list(range(1, 71))  # 70 tokens
    reqs = [(ctx, [5]), (ctx, [6, 7, 8]), ([1, 2, 3], [4])]
    out = truncate_contexts(reqs, max_length=64)
    # Longest continuation 3: keep 64 + 1 - 3 = 62 tokens, drop 70 - 62 = 8, for both
    # choices (lm-eval's per-request rule would keep 64 for the one-token choice).
    assert out[0] == (tuple(ctx[8:]), 8) and out[1] == (tuple(ctx[8:]), 8)
    assert out[2] == ((1, 2, 3), 0)


def test_an_items_choices_are_scored_on_one_context_when_cut(toy_cfg):
    cfg = toy_cfg.replace(max_seq_len=48)
    free = build_model(cfg, "free", seed=3, dtype=torch.float64).eval()
    with torch.no_grad():
        free.post_sampler.weight.mul_(20.0)  # Z matters: a different context Z shows
    ctx = [(7 * i) % 90 + 1 for i in range(58)]
    short, long_ = [5], [6, 7, 8, 9, 10]
    got = score_requests(free, [(ctx, short), (ctx, long_)], protocols=("posterior",),
                         draws=3, seed=1, amp=None)["posterior"]
    kept = ctx[-(48 + 1 - 5):]  # cut by the longest choice, by hand
    ref = score_requests(free, [(kept, short), (kept, long_)], protocols=("posterior",),
                         draws=3, seed=1, amp=None)["posterior"]
    for a, b in zip(got, ref):
        assert abs(a.logp - b.logp) < 1e-12
    # Per-request cuts would score the short choice on a longer context, under other Z.
    alone = score_requests(free, [(ctx[-48:], short)], protocols=("posterior",), draws=3,
                           seed=1, amp=None)["posterior"][0]
    assert abs(alone.logp - got[0].logp) > 1e-6


def test_requests_that_cannot_be_scored_are_refused_with_the_reason():
    import pytest

    with pytest.raises(ValueError, match="^a continuation needs at least one token$"):
        truncate_contexts([([1, 2], [])], max_length=8)
    with pytest.raises(ValueError, match=r"^a context needs at least one token \(use the "
                                         r"EOT/prefix token\)$"):
        truncate_contexts([([], [3])], max_length=8)
    # 8 + 1 - 9 = 0 context tokens would remain; 8 + 1 - 8 = 1 is the least that scores.
    with pytest.raises(ValueError, match="^continuation of 9 tokens does not fit "
                                         "max_length 8$"):
        truncate_contexts([([1], list(range(9)))], max_length=8)
    assert truncate_contexts([([1, 2, 3], list(range(8)))], max_length=8) == [((3,), 2)]


def test_tokens_are_compared_as_integers_and_no_cut_leaves_the_context_whole():
    """Contexts arrive as tensors' items or ints: the same tokens are one context. A
    context that fits is kept whole, with 0 dropped (not a negative count)."""
    reqs = [(torch.tensor([4, 5, 6]).tolist(), [1]), ([4, 5, 6], [2, 3]),
            ([torch.tensor(4), torch.tensor(5), torch.tensor(6)], [7])]
    out = truncate_contexts(reqs, max_length=4)
    # Longest continuation of that context: 2 tokens; keep 4 + 1 - 2 = 3 = all of it.
    assert out == [((4, 5, 6), 0)] * 3
    assert all(type(t) is int for t in out[2][0])
    out = truncate_contexts(reqs, max_length=3)  # keep 2: drop 1, for every choice
    assert out == [((5, 6), 1)] * 3

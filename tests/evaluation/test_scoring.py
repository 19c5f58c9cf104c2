import hashlib
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from ftbench.evaluation import scoring
from ftbench.evaluation.scoring import (ZProtocol, autocast_for, context_codes, context_key,
                                        context_uniforms, continuation_codes,
                                        score_continuations, score_requests, stream_generator)
from ftbench.model import build_model

REQUESTS = [([5, 9, 13, 2], [7, 11]), ([40, 41], [3]), ([3, 3, 3, 8, 1, 2, 4], [9, 9, 10]),
            ([12], [30, 31, 32, 33])]


@torch.no_grad()
def _direct(model, ctx, cont):
    x = torch.tensor([ctx + cont[:-1]])
    logp = F.log_softmax(model(x).logits_BTV[0], dim=-1)
    n = len(ctx)
    return sum(float(logp[n - 1 + i, t]) for i, t in enumerate(cont)), \
        all(int(logp[n - 1 + i].argmax()) == t for i, t in enumerate(cont))


def test_baseline_scores_equal_a_direct_sum_of_log_probs(toy_pair):
    base, _ = toy_pair
    scores = score_continuations(base, REQUESTS, batch_size=3)
    for (ctx, cont), (lp, greedy) in zip(REQUESTS, scores):
        ref_lp, ref_greedy = _direct(base, ctx, cont)
        assert abs(lp - ref_lp) < 1e-9 and greedy == ref_greedy
    # A continuation made of the greedy tokens is reported as greedy.
    ctx = [5, 9, 13]
    tok = int(base(torch.tensor([ctx])).logits_BTV[0, -1].argmax())
    assert score_continuations(base, [(ctx, [tok])])[0][1] is True


@pytest.mark.parametrize("protocol", ["posterior", "prior"])
def test_free_scores_do_not_depend_on_batching(toy_pair, protocol):
    _, free = toy_pair
    z = ZProtocol(protocol, draws=3, seed=1)
    one = score_continuations(free, REQUESTS, z, batch_size=1)
    many = score_continuations(free, REQUESTS, z, batch_size=4)
    for a, b in zip(one, many):
        assert abs(a[0] - b[0]) < 1e-9 and a[1] == b[1]


class Spy:
    """Records what the scorer feeds a Free model's encoder and Z-dependent blocks."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode(self, stream, seen_BT=None):
        out = self.model.encode(stream, seen_BT)
        self.calls.append(("encode", stream.x_BTD.shape[1], out.clone()))
        return out

    def run_z_dependent(self, stream, z_BT, cache=None, rows_N=None):
        out = self.model.run_z_dependent(stream, z_BT, cache, rows_N)
        self.calls.append(("z", z_BT.clone(), out.clone()))
        return out


def test_free_context_z_never_sees_the_continuation(toy_pair):
    _, free = toy_pair
    with torch.no_grad():  # a sharp encoder makes any leak visible in the codes
        free.encoder.readout.weight.mul_(50.0)
    ctx = [5, 9, 13, 2, 7, 1]
    runs = []
    for cont in ([4, 8, 15], [60, 61, 62]):
        spy = Spy(free)
        score_continuations(spy, [(ctx, cont)], ZProtocol("posterior", draws=2, seed=3))
        runs.append(spy.calls)
    n = len(ctx)
    (kind_a, seen_a, lat_a), (_, seen_b, lat_b) = runs[0][0], runs[1][0]
    assert kind_a == "encode" and seen_a == seen_b == n  # the encoder read the context only
    assert torch.equal(lat_a, lat_b)
    (_, z_ctx_a, out_a), (_, z_ctx_b, out_b) = runs[0][1], runs[1][1]
    assert torch.equal(z_ctx_a, z_ctx_b) and torch.equal(out_a, out_b)  # context Z and states
    (_, z_cont_a, _), (_, z_cont_b, _) = runs[0][2], runs[1][2]
    assert torch.equal(z_cont_a, z_cont_b)  # continuation Z ignores the continuation's text
    # Whereas an encoder allowed to see everything would have changed its view of the context.
    full_a = free.latent_logits(torch.tensor([ctx + [4, 8]]))
    full_b = free.latent_logits(torch.tensor([ctx + [60, 61]]))
    assert not torch.allclose(full_a[:, :n], full_b[:, :n])


def test_draws_and_protocols_are_recorded_choices(toy_pair):
    _, free = toy_pair
    post1 = score_continuations(free, REQUESTS, ZProtocol("posterior", 1, 0))
    post8 = score_continuations(free, REQUESTS, ZProtocol("posterior", 8, 0))
    prior = score_continuations(free, REQUESTS, ZProtocol("prior", 1, 0))
    assert all(abs(a[0] - b[0]) > 0 for a, b in zip(post1, post8))
    assert all(abs(a[0] - b[0]) > 0 for a, b in zip(post1, prior))
    with pytest.raises(ValueError, match="z protocol"):
        ZProtocol("argmax")


# ---- the new scorer against brute force, and the properties it must keep ------------

MC = [  # items as lm-eval sends them: several continuations share one context
    ([5, 9, 13, 2, 7, 1, 3], [[4], [8, 15], [60, 61, 62], [9]]),
    ([40, 41, 42], [[3, 5], [7], [11, 12]]),
    ([12], [[30, 31, 32, 33], [2]]),
]


def _flat(items):
    return [(ctx, cont) for ctx, conts in items for cont in conts]


@torch.no_grad()
def _brute_force(model, ctx, cont, protocol, draws, seed):
    """A full uncached forward over context + continuation per draw, with the draw's Z."""
    H, n, key = model.cfg.latent_bits, len(ctx), context_key(ctx)
    latent = model.latent_logits(torch.tensor([ctx]))[0] if protocol == "posterior" else None
    x = torch.tensor([ctx + cont[:-1]])
    per_draw = []
    for k in range(draws):
        z = torch.cat((context_codes(latent, key, n, H, seed, k),
                       continuation_codes(key, range(n, n + len(cont) - 1), H, seed, k)))
        logp = F.log_softmax(model(x, latent="fixed", z_BT=z[None]).logits_BTV[0], -1)
        per_draw.append(sum(logp[n - 1 + i, t] for i, t in enumerate(cont)))
    per_draw = torch.stack(per_draw)
    return float(torch.logsumexp(per_draw, 0) - math.log(draws)), per_draw.tolist()


@pytest.mark.parametrize("protocol", ["posterior", "prior"])
@pytest.mark.parametrize("n_layers", [4, 2])  # with 2, the injection block is the last one
def test_k_draws_equal_a_full_forward_per_draw(toy_cfg, protocol, n_layers):
    free = build_model(toy_cfg.replace(n_layers=n_layers), "free", seed=3,
                       dtype=torch.float64).eval()
    reqs = _flat(MC)
    res = score_requests(free, reqs, protocols=(protocol,), draws=4, seed=2, batch_size=2)
    for (ctx, cont), s in zip(reqs, res[protocol]):
        ref, ref_draws = _brute_force(free, ctx, cont, protocol, 4, 2)
        assert abs(s.logp - ref) < 1e-5
        assert max(abs(a - b) for a, b in zip(s.draws, ref_draws)) < 1e-5


def test_both_protocols_from_one_pass_equal_separate_runs(toy_pair):
    _, free = toy_pair
    reqs = _flat(MC)
    both = score_requests(free, reqs, protocols=("posterior", "prior"), draws=3, seed=1)
    for p in ("posterior", "prior"):
        alone = score_requests(free, reqs, protocols=(p,), draws=3, seed=1)[p]
        assert [s.draws for s in both[p]] == [s.draws for s in alone]


@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_prefix_shared_scores_equal_unshared_scores(toy_pair, arch):
    model = toy_pair[0] if arch == "baseline" else toy_pair[1]
    reqs = _flat(MC)
    protocols = ("posterior", "prior") if arch == "free" else ()
    shared = score_requests(model, reqs, protocols=protocols, draws=3, seed=4)
    for i, req in enumerate(reqs):  # each request alone: nothing to share
        alone = score_requests(model, [req], protocols=protocols, draws=3, seed=4)
        for key, scores in alone.items():
            assert abs(scores[0].logp - shared[key][i].logp) < 1e-9
            assert scores[0].greedy == shared[key][i].greedy


def test_continuations_too_long_to_pack_together_score_the_same(toy_pair):
    # max_seq_len 128: three 50-token continuations cannot all follow a 40-token context.
    _, free = toy_pair
    ctx = list(range(1, 41))
    reqs = [(ctx, [(7 * i + j) % 97 for j in range(50)]) for i in range(3)]
    together = score_requests(free, reqs, protocols=("prior",), draws=2, seed=1)["prior"]
    for req, s in zip(reqs, together):
        (alone,) = score_requests(free, [req], protocols=("prior",), draws=2, seed=1)["prior"]
        assert abs(alone.logp - s.logp) < 1e-9


def test_continuation_z_does_not_depend_on_the_continuation(toy_pair):
    """With Z at the second continuation slot shared by every second token b, the
    two-token scores marginalise exactly: sum_b p(a, b | ctx) = p(a | ctx), at K = 8."""
    _, free = toy_pair
    ctx, a, V = [5, 9, 13, 2], 17, free.cfg.vocab_size
    for protocol in ("posterior", "prior"):
        z = ZProtocol(protocol, draws=8, seed=5)
        pairs = score_continuations(free, [(ctx, [a, b]) for b in range(V)], z)
        (single,) = score_continuations(free, [(ctx, [a])], z)
        total = torch.logsumexp(torch.tensor([lp for lp, _ in pairs], dtype=torch.float64), 0)
        assert abs(float(total) - single[0]) < 1e-9


@pytest.mark.parametrize("arch,draws", [("baseline", 1), ("free", 1), ("free", 8)])
def test_single_token_continuations_sum_to_one_over_the_vocabulary(toy_pair, arch, draws):
    """No leak: were the continuation to reach Z, the probabilities of every possible next
    token would not sum to 1."""
    model = toy_pair[0] if arch == "baseline" else toy_pair[1]
    ctx, V = [5, 9, 13, 2, 7, 1], model.cfg.vocab_size
    for protocol in ("posterior", "prior"):
        scores = score_continuations(model, [(ctx, [v]) for v in range(V)],
                                     ZProtocol(protocol, draws, seed=6))
        total = sum(math.exp(lp) for lp, _ in scores)
        assert abs(total - 1.0) < 1e-4
        assert sum(greedy for _, greedy in scores) == 1  # the mixture's argmax, once


def test_bf16_autocast_path_keeps_log_softmax_in_fp32(toy_cfg):
    # bf16 matmuls are 20-30x slower on these CPUs: a tiny model and four requests.
    free = build_model(toy_cfg.replace(n_layers=2, d_model=32, ffn_hidden=64), "free",
                       seed=3).eval()
    reqs = _flat(MC[:2])[:4]
    fp32 = score_requests(free, reqs, protocols=("prior",), draws=2, amp=None)["prior"]
    bf16 = score_requests(free, reqs, protocols=("prior",), draws=2, amp="bf16")["prior"]
    # The tolerance comes from the error it must detect. Log-probabilities here are near
    # -ln 97 = -4.6 per token; bf16 spaces numbers in [4, 8) by 2^-5, so a log-softmax taken
    # in bf16 is off by about 2^-5 / 4 = 7.8e-3 per token on average (measured: up to
    # 1.7e-2). With it in fp32 only the matmuls' bf16 rounding remains (measured: at most
    # 3.8e-4 per token). 2e-3 per token sits between the two, 5x above the latter.
    for (ctx, cont), a, b in zip(reqs, fp32, bf16):
        assert all(math.isfinite(x) for x in b.draws)
        per_token = max(abs(x - y) for x, y in zip(a.draws, b.draws)) / len(cont)
        assert per_token < 2e-3, per_token
        assert a.logp != b.logp  # the autocast path did run in bf16


# ---- what else a mutation of the scorer could change unseen ------------------------------

def _greedy_tokens(model, ctx, n):
    out = list(ctx)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits_BTV[0, -1].argmax()))
    return out[len(ctx):]


def test_greedy_flag_of_packed_multi_token_continuations(toy_pair):
    """A continuation is greedy when every one of its tokens is the argmax; packed beside
    others of the same context, with a first token that is greedy and a second that is not,
    or with the greedy tokens followed by more."""
    base, _ = toy_pair
    ctx = [5, 9, 13, 2]
    g = _greedy_tokens(base, ctx, 4)
    not_second = (g[1] + 1) % base.cfg.vocab_size
    conts = [g[:3], [g[0], not_second], [7], g[:4], g[:2] + [(g[2] + 1) % 97]]
    reqs = [(ctx, c) for c in conts]
    shared = score_continuations(base, reqs, batch_size=8)
    assert [greedy for _, greedy in shared] == [True, False, False, True, False]
    for req, (lp, greedy) in zip(reqs, shared):
        ref_lp, ref_greedy = _direct(base, *req)
        assert abs(lp - ref_lp) < 1e-9 and greedy == ref_greedy


def test_prior_codes_cover_every_code_and_follow_seed_and_draw():
    key, H = context_key([5, 9, 13]), 6
    codes = context_codes(None, key, 4000, H, seed=0, draw=0)
    assert codes.min() == 0 and codes.max() == 2**H - 1 and len(set(codes.tolist())) == 2**H
    cont = continuation_codes(key, range(4, 4004), H, seed=0, draw=0)
    assert cont.min() == 0 and cont.max() == 2**H - 1 and len(set(cont.tolist())) == 2**H
    u = context_uniforms(key, 3000, 2, seed=0, draw=0)
    assert u.shape == (3000, 2) and not torch.equal(u[0], u[1])
    assert 0.48 < float(u.mean()) < 0.52  # U(0, 1): mean 1/2, sd of the mean 0.004
    for other in ({"seed": 1, "draw": 0}, {"seed": 0, "draw": 1}):
        assert not torch.equal(context_codes(None, key, 50, H, **other), codes[:50])
        assert not torch.equal(context_uniforms(key, 50, 2, **other), u[:50])
        assert not torch.equal(continuation_codes(key, range(4, 54), H, **other), cont[:50])


def test_z_streams_are_the_recorded_ones():
    """Results record (seed, draws) so that anyone can reproduce a score: the streams those
    name must not change between versions. Recorded from this version."""
    assert context_key([5, 9, 13]) == hashlib.sha256(b"5,9,13").digest()
    key = context_key([5, 9, 13])
    assert context_codes(None, key, 6, 6, seed=0, draw=0).tolist() == [10, 27, 52, 59, 49, 17]
    assert context_codes(None, key, 6, 6, seed=1, draw=0).tolist() == [5, 57, 46, 24, 29, 42]
    assert context_codes(None, key, 6, 6, seed=0, draw=1).tolist() == [59, 49, 35, 51, 49, 1]
    u = context_uniforms(key, 2, 3, seed=0, draw=0)
    assert torch.allclose(u, torch.tensor([[0.9945514798, 0.9168008566, 0.7697747350],
                                           [0.4998888373, 0.8643751144, 0.6009707451]]))
    assert continuation_codes(key, [3, 4, 5, 6], 6, seed=0, draw=0).tolist() == [31, 59, 6, 25]
    assert continuation_codes(key, [3, 4, 5, 6], 16, seed=2, draw=1).tolist() == [
        18374, 11731, 44905, 58848]
    x = torch.rand(3, generator=stream_generator(0, key, 0, "x"))
    assert torch.allclose(x, torch.tensor([0.2160379887, 0.6514164209, 0.5808393359]))


def test_autocast_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for amp in (None, "fp32", "auto"):
        assert isinstance(autocast_for(cpu, amp), nullcontext), amp
    on = autocast_for(cpu, "bf16")
    assert isinstance(on, torch.autocast) and on.fast_dtype == torch.bfloat16
    assert on.device == "cpu"
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        gpu = autocast_for(cuda, "auto")  # bf16 on CUDA by default
    assert isinstance(gpu, torch.autocast) and gpu.device == "cuda"
    assert isinstance(autocast_for(cuda, "fp32"), nullcontext)


def test_score_continuations_passes_its_settings_on(toy_pair, monkeypatch):
    _, free = toy_pair
    ctx, cont = list(range(1, 30)), [7, 8]
    z = ZProtocol("prior", draws=2, seed=5)
    (lp,) = score_continuations(free, [(ctx, cont)], z, max_length=10)
    (ref,) = score_requests(free, [(ctx, cont)], protocols=("prior",), draws=2, seed=5,
                            max_length=10)["prior"]
    assert lp[0] == ref.logp
    (full,) = score_continuations(free, [(ctx, cont)], z)
    assert full[0] != lp[0]  # truncated to 10 + 1 tokens: another context
    seen = []
    real = scoring.autocast_for
    monkeypatch.setattr(scoring, "autocast_for", lambda d, amp: seen.append(amp) or real(d, amp))
    score_continuations(free, [(ctx, cont)], z)
    score_continuations(free, [(ctx, cont)], z, amp=None)
    assert seen == ["auto", None]


def test_z_draws_below_one_are_refused_with_their_value():
    with pytest.raises(ValueError, match=r"^z draws: must be >= 1, got 0$"):
        ZProtocol("prior", draws=0)


@pytest.mark.parametrize("last", [31, 32])  # 40 + 29 + 29 + 30 = 128 fits; + 1 does not
def test_packing_at_the_models_length_exactly(toy_pair, last):
    _, free = toy_pair
    ctx = list(range(1, 41))
    reqs = [(ctx, [(5 * i + j) % 97 for j in range(n)]) for i, n in enumerate((30, 30, last))]
    together = score_requests(free, reqs, protocols=("prior",), draws=2, seed=1)["prior"]
    for req, s in zip(reqs, together):
        (alone,) = score_requests(free, [req], protocols=("prior",), draws=2, seed=1)["prior"]
        assert abs(alone.logp - s.logp) < 1e-9

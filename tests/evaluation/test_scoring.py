import pytest
import torch
import torch.nn.functional as F

from ftbench.evaluation.scoring import ZProtocol, score_continuations

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


class Spy(torch.nn.Module):
    """Records what the scorer feeds a Free model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.arch, self.cfg, self.calls = model, model.arch, model.cfg, []

    def latent_logits(self, tokens, **kw):
        out = self.model.latent_logits(tokens, **kw)
        self.calls.append(("latent", tokens.clone(), out.clone()))
        return out

    def forward(self, tokens, **kw):
        out = self.model(tokens, **kw)
        self.calls.append(("forward", tokens.clone(), kw["z_BT"].clone(), out.logits_BTV.clone()))
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
    (_, _, lat_a), (_, _, lat_b) = runs[0][0], runs[1][0]
    assert torch.equal(lat_a[:, :n], lat_b[:, :n])
    for call_a, call_b in zip(runs[0][1:], runs[1][1:]):
        assert torch.equal(call_a[2][:, :n], call_b[2][:, :n])  # context Z identical
        assert torch.equal(call_a[3][:, :n], call_b[3][:, :n])  # context logits identical
    # Whereas an encoder allowed to see everything would have changed its view of the context.
    full_a = free.latent_logits(runs[0][1][1])
    full_b = free.latent_logits(runs[1][1][1])
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

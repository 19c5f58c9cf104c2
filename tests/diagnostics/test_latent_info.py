"""The latent's mutual information: what Z carries, apart from what it costs (KL)."""

import math

import pytest
import torch

from ftbench.diagnostics.latent_info import (UNUSED_MI_BITS, LatentInfoAccumulator,
                                             exact_mixture_mi_bits, latent_info)
from ftbench.model.factory import build_model
from ftbench.model.presets import get_preset


def _h(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _logit(p):
    return math.log(p / (1 - p))


def test_hand_computation_two_positions_one_bit():
    # Q(B=1) is 0.9 at one position and 0.7 at the other: the aggregate is 0.8, and
    # I = H_b(0.8) - (H_b(0.9) + H_b(0.7)) / 2 while the KL is 1 - mean H_b.
    info = latent_info(torch.tensor([[[_logit(0.9)], [_logit(0.7)]]], dtype=torch.float64))
    assert info.mi_bits == pytest.approx(_h(0.8) - (_h(0.9) + _h(0.7)) / 2, abs=1e-12)
    assert info.mi_bits == pytest.approx(0.04678, abs=1e-5)
    assert info.kl_bits == pytest.approx(1 - (_h(0.9) + _h(0.7)) / 2, abs=1e-12)
    assert info.logit_std == pytest.approx(abs(_logit(0.9) - _logit(0.7)) / 2, abs=1e-12)
    # Opposite posteriors average to the prior: every bit of KL is information.
    info = latent_info(torch.tensor([[[_logit(0.9)], [_logit(0.1)]]], dtype=torch.float64))
    assert info.mi_bits == pytest.approx(info.kl_bits, abs=1e-12)
    assert info.mi_bits == pytest.approx(1 - _h(0.9), abs=1e-12)


def test_constant_encoder_carries_nothing_whatever_its_kl():
    logits = torch.tensor([1.3, -0.4, 2.0, 0.1]).expand(3, 50, 4)
    info = latent_info(logits)
    assert info.kl_bits > 0.2
    assert info.mi_bits == pytest.approx(0.0, abs=1e-12)
    assert info.mi_content_bits == pytest.approx(0.0, abs=1e-12)
    assert info.logit_std == pytest.approx(0.0, abs=1e-9)
    assert info.unused and info.as_dict()["unused"]


def test_per_bit_estimate_bounds_the_exact_mixture_mi_from_above():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = 2 * torch.randn(40, 5, generator=g)
        # Correlated bits (bit 1 copies bit 0) make the product of marginals loose.
        logits[:, 1] = logits[:, 0]
        est = latent_info(logits[None]).mi_bits
        exact = exact_mixture_mi_bits(logits)
        assert est >= exact - 1e-9
        assert exact > 0.1
    one_bit = 2 * torch.randn(30, 1, generator=g)
    assert latent_info(one_bit[None]).mi_bits == pytest.approx(exact_mixture_mi_bits(one_bit),
                                                               abs=1e-9)


def test_position_only_latent_carries_nothing_beyond_the_position():
    per_position = torch.linspace(-3, 3, 16)[:, None].expand(16, 2)
    info = latent_info(per_position.expand(4, 16, 2))  # every sequence alike
    assert info.mi_bits > 0.3
    assert info.mi_content_bits == pytest.approx(0.0, abs=1e-12)


def test_batches_and_ranks_combine_to_the_whole():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 8, 3, generator=g) * 1.5
    whole = latent_info(logits)
    acc = LatentInfoAccumulator()
    for chunk in logits.split(2):
        acc.add(chunk)
    assert acc.result().mi_bits == pytest.approx(whole.mi_bits, abs=1e-12)
    assert acc.result().mi_content_bits == pytest.approx(whole.mi_content_bits, abs=1e-12)
    # Two ranks with equal shares, combined by the mean of their sums (all_reduce_mean).
    a, b = LatentInfoAccumulator(), LatentInfoAccumulator()
    a.add(logits[:3])
    b.add(logits[3:])
    merged = LatentInfoAccumulator()
    merged.load_tensors([(x + y) / 2 for x, y in zip(a.tensors(), b.tensors())])
    r = merged.result()
    assert (r.mi_bits, r.kl_bits, r.logit_std) == pytest.approx(
        (whole.mi_bits, whole.kl_bits, whole.logit_std), abs=1e-9)
    assert r.n_tokens == whole.n_tokens // 2  # the mean of counts; ratios are unchanged


def test_masked_positions_do_not_count():
    logits = torch.zeros(1, 4, 1)
    logits[0, 3, 0] = 8.0  # a pad position with a confident posterior
    valid = torch.tensor([[True, True, True, False]])
    info = latent_info(logits, valid)
    assert info.n_tokens == 3 and info.mi_bits == pytest.approx(0.0, abs=1e-12)


def _tiny_free():
    cfg = get_preset("toy")
    torch.manual_seed(0)
    return build_model(cfg, "free", seed=0).eval(), cfg


def test_free_model_with_a_constant_encoder_is_flagged():
    model, cfg = _tiny_free()
    H = cfg.latent_bits
    model.encoder.forward = lambda x, rope, mask: torch.full((*x.shape[:2], H), 1.2)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(2))
    info = latent_info(model.latent_logits(tokens))
    assert info.kl_bits > 0.5 and info.unused


def test_free_model_whose_encoder_reads_the_tokens_carries_information():
    model, cfg = _tiny_free()
    H = cfg.latent_bits
    # Hand-built encoder: bit logits are a fixed projection of the first half's output,
    # so Q(Z_t|S) depends on the tokens, not only on t.
    proj = torch.randn(cfg.d_model, H, generator=torch.Generator().manual_seed(3))

    def encoder(x, rope, mask):
        x = x / x.norm(dim=-1, keepdim=True)
        return 4.0 * x @ proj

    model.encoder.forward = encoder
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(4))
    info = latent_info(model.latent_logits(tokens))
    assert info.mi_bits > 10 * UNUSED_MI_BITS and not info.unused
    assert info.mi_content_bits > 10 * UNUSED_MI_BITS
    assert info.mi_bits <= info.kl_bits + 1e-9  # I(X;Z) <= E KL(Q || P) for any P
    assert info.logit_std > 0.1

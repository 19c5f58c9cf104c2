"""The objectives against hand computations: CE from a softmax written out, Eq. 5's
token-wise hinge, the masks, the bits/nats conversion."""

import math

import torch

from ftbench.objective import (LN2, bits_to_nats, free_transformer_loss, lm_loss,
                               mean_cross_entropy, nats_to_bits, token_cross_entropy)


def test_token_cross_entropy_is_minus_log_softmax_written_out():
    # Row [0, ln 2, ln 3, 0]: softmax = [1, 2, 3, 1] / 7.
    logits = torch.tensor([[[0.0, math.log(2), math.log(3), 0.0],
                            [5.0, 5.0, 5.0, 5.0]]])
    targets = torch.tensor([[2, 1]])
    ce = token_cross_entropy(logits, targets)
    assert ce.shape == (1, 2) and ce.dtype == torch.float32
    assert abs(float(ce[0, 0]) - math.log(7 / 3)) < 1e-6
    assert abs(float(ce[0, 1]) - math.log(4)) < 1e-6
    # bf16 logits: the CE is still taken in fp32.
    assert token_cross_entropy(logits.bfloat16(), targets).dtype == torch.float32
    assert abs(float(mean_cross_entropy(logits, targets)) - (math.log(7 / 3) + math.log(4)) / 2) \
        < 1e-6


def test_masked_mean_counts_only_the_kept_tokens():
    logits = torch.zeros(2, 3, 4)  # uniform: CE ln 4 everywhere
    logits[0, 0, 1] = math.log(9)   # p(1) = 9 / 12 at one position: CE ln(12/9) for target 1
    targets = torch.ones(2, 3, dtype=torch.long)
    mask = torch.tensor([[True, False, False], [False, True, False]])
    got = float(mean_cross_entropy(logits, targets, mask))
    assert abs(got - (math.log(12 / 9) + math.log(4)) / 2) < 1e-6
    # An all-False mask divides by 1, not by 0.
    assert float(mean_cross_entropy(logits, targets, torch.zeros(2, 3, dtype=torch.bool))) == 0


def test_eq5_hinge_is_per_token_and_in_nats():
    ce = torch.tensor(2.5)
    kl = torch.tensor([[0.1, 0.5, 1.5, 3.0]])
    kappa = 1.0
    out = free_transformer_loss(ce, kl, kappa)
    # mean_t max(0, KL_t - 1) = (0 + 0 + 0.5 + 2.0) / 4 = 0.625; a hinge on the mean KL
    # (1.275) would give 0.275.
    assert set(out) == {"loss", "ce", "hinge", "kl_nats", "frac_above_kappa"}
    assert abs(float(out["hinge"]) - 0.625) < 1e-7
    assert abs(float(out["loss"]) - 3.125) < 1e-7 and float(out["ce"]) == 2.5
    assert abs(float(out["kl_nats"]) - 1.275) < 1e-7
    assert abs(float(out["frac_above_kappa"]) - 0.5) < 1e-7
    # A token exactly at kappa costs nothing and is not above it.
    at = free_transformer_loss(ce, torch.tensor([[1.0, 1.0]]), 1.0)
    assert float(at["hinge"]) == 0.0 and float(at["frac_above_kappa"]) == 0.0


def test_eq5_mask_drops_pad_tokens_from_every_term():
    ce = torch.tensor(1.0)
    kl = torch.tensor([[0.0, 2.0, 4.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = free_transformer_loss(ce, kl, 1.0, mask)
    # Kept KL: 0, 2, 3 -> hinge (0 + 1 + 2) / 3 = 1, mean KL 5/3, 2 of 3 above kappa.
    assert abs(float(out["hinge"]) - 1.0) < 1e-7
    assert abs(float(out["loss"]) - 2.0) < 1e-7
    assert abs(float(out["kl_nats"]) - 5 / 3) < 1e-6
    assert abs(float(out["frac_above_kappa"]) - 2 / 3) < 1e-6


def test_hinge_gradient_reaches_only_tokens_above_kappa():
    kl = torch.tensor([[0.2, 1.7, 0.9, 3.0]], requires_grad=True)
    free_transformer_loss(torch.tensor(0.0), kl, 1.0)["loss"].backward()
    assert kl.grad.tolist() == [[0.0, 0.25, 0.0, 0.25]]


def test_baseline_loss_is_its_ce():
    ce = torch.tensor(3.25)
    out = lm_loss(ce)
    assert set(out) == {"loss", "ce"} and out["loss"] is ce and out["ce"] is ce


def test_bits_and_nats():
    assert LN2 == math.log(2)
    assert abs(bits_to_nats(0.5) - 0.5 * math.log(2)) < 1e-15
    assert abs(nats_to_bits(math.log(8)) - 3.0) < 1e-12
    assert abs(nats_to_bits(bits_to_nats(1.7)) - 1.7) < 1e-12


def test_a_single_kept_token_is_its_own_mean():
    kl = torch.tensor([[0.5, 3.0, 7.0]])
    one = torch.tensor([[False, True, False]])
    out = free_transformer_loss(torch.tensor(0.0), kl, 1.0, one)
    assert float(out["hinge"]) == 2.0 and float(out["kl_nats"]) == 3.0

import itertools
import math

import pytest
import torch

from ftbench.model.binary_mapper import (MapperTiles, binary_mapper, code_bits, code_probabilities,
                                         dense_binary_mapper, kl_to_uniform, sample_codes)
from tests.conftest import z_gen


def _inputs(N=13, H=6, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(N, H, generator=g, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(2**H, D, generator=g, dtype=torch.float64).requires_grad_()
    idx = sample_codes(logits, z_gen(seed))
    upstream = torch.randn(N, D, generator=g, dtype=torch.float64)
    return logits, weight, idx, upstream


@pytest.mark.parametrize("tokens,codes,H", [(1, 64, 6), (4, 8, 6), (13, 16, 6), (64, 4096, 6),
                                            (5, 1, 1), (4, 2, 5), (3, 1, 7)])
def test_eq8_gradient_matches_dense_autograd_in_float64(tokens, codes, H):
    logits, weight, idx, upstream = _inputs(H=H)
    fast = binary_mapper(logits, weight, idx, MapperTiles(tokens, codes))
    g_fast = torch.autograd.grad((fast * upstream).sum(), (logits, weight))
    dense = dense_binary_mapper(logits, weight, idx)
    g_dense = torch.autograd.grad((dense * upstream).sum(), (logits, weight))
    assert torch.equal(fast, weight[idx].detach())  # the value is the gathered row
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_fast[0], g_dense[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_fast[1], g_dense[1], rtol=1e-12, atol=1e-12)
    # The gradient reaches the logits through all codes, not just the sampled one.
    assert g_fast[0].abs().min() > 0


def test_code_probabilities_are_the_product_distribution():
    logits = torch.randn(7, 5, dtype=torch.float64)
    G = code_probabilities(logits)
    U = code_bits(5, logits.device, torch.float64)
    p = torch.sigmoid(logits)
    brute = torch.stack([torch.prod(p ** U[d] * (1 - p) ** (1 - U[d]), dim=-1)
                         for d in range(32)], dim=-1)
    torch.testing.assert_close(G.double(), brute, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(G.sum(-1).double(), torch.ones(7, dtype=torch.float64))


def test_kl_equals_brute_force_enumeration():
    H = 5
    logits = 3 * torch.randn(11, H, dtype=torch.float64)
    p = torch.sigmoid(logits)
    for t in range(11):
        kl_brute = 0.0
        for bits in itertools.product([0, 1], repeat=H):
            q = math.prod(float(p[t, h]) if b else 1 - float(p[t, h]) for h, b in enumerate(bits))
            kl_brute += q * math.log(q * 2**H)
        assert abs(float(kl_to_uniform(logits[t:t + 1])) - kl_brute) < 1e-9
    assert torch.allclose(kl_to_uniform(torch.zeros(2, H)), torch.zeros(2), atol=1e-7)


def test_sampled_bits_follow_sigmoid_and_index_is_little_endian():
    logits = torch.tensor([[3.0, -3.0, 0.0]]).expand(20000, 3)
    idx = sample_codes(logits, z_gen(1))
    bits = (idx[:, None] >> torch.arange(3)) & 1
    freq = bits.float().mean(0)
    expected = torch.sigmoid(torch.tensor([3.0, -3.0, 0.0]))
    assert torch.allclose(freq, expected, atol=0.015)
    # Same generator seed, same codes; the global RNG plays no part.
    torch.manual_seed(123)
    assert torch.equal(sample_codes(logits, z_gen(1)), idx)


# Eq. 8's GEMM in bf16 (fp32 accumulation, fp32 probability-weighted sums) at the paper's
# H = 16, against the fp64 dense reference. bf16 keeps 8 significant bits: rounding g and
# W_post to it puts a relative error of up to 2 x 2^-9 ~ 4e-3 on each a = g W_post^T, and
# the gradient inherits about that (measured: 3.1e-3 near the prior, 2.5e-3 with peaked
# logits, the same for every tile size). The fp32 path stays at ~6e-7.
BF16_REL_TOL = 1e-2
FP32_REL_TOL = 1e-5


def _h16_case(scale, N=12, D=64):
    g = torch.Generator().manual_seed(1)
    logits = (scale * torch.randn(N, 16, generator=g, dtype=torch.float64)).requires_grad_()
    weight = (0.02 * torch.randn(2**16, D, generator=g, dtype=torch.float64)).requires_grad_()
    idx = sample_codes(logits, z_gen(2))
    upstream = torch.randn(N, D, generator=g, dtype=torch.float64)
    ref = torch.autograd.grad((dense_binary_mapper(logits, weight, idx) * upstream).sum(),
                              logits)[0]
    return logits.detach().float(), weight.detach().float(), idx, upstream.float(), ref


def _rel(got, ref):
    return float((got.double() - ref).norm() / ref.norm())


@pytest.fixture(scope="module", params=[0.5, 3.0], ids=["near-prior", "peaked"])
def h16(request):
    return _h16_case(request.param)


@pytest.mark.parametrize("tokens,codes", [(4, 4096), (5, 256), (12, 2**16), (1, 2**12)])
def test_bf16_eq8_matmul_matches_fp64_dense_at_h16(h16, tokens, codes):
    logits, weight, idx, upstream, ref = h16
    results = {}
    for matmul in ("bf16", "fp32"):
        L = logits.clone().requires_grad_()
        out = binary_mapper(L, weight, idx, MapperTiles(tokens, codes, matmul))
        results[matmul] = _rel(torch.autograd.grad((out * upstream).sum(), L)[0], ref)
    assert results["bf16"] < BF16_REL_TOL, results
    assert results["fp32"] < FP32_REL_TOL, results
    # The bf16 path really ran in bf16 (else this test would prove nothing about it).
    assert results["bf16"] > 10 * results["fp32"], results


def test_autocast_selects_the_bf16_matmul(h16):
    logits, weight, idx, upstream, ref = h16
    L = logits.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = binary_mapper(L, weight, idx, MapperTiles(4, 4096))
    got = torch.autograd.grad((out.float() * upstream).sum(), L)[0]
    assert got.dtype == torch.float32
    assert FP32_REL_TOL * 10 < _rel(got, ref) < BF16_REL_TOL
    L2 = logits.clone().requires_grad_()  # outside autocast: fp32
    out = binary_mapper(L2, weight, idx, MapperTiles(4, 4096))
    assert _rel(torch.autograd.grad((out * upstream).sum(), L2)[0], ref) < FP32_REL_TOL


def test_unknown_matmul_precision_is_an_error():
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        MapperTiles(matmul="fp8").matmul_dtype("cpu")

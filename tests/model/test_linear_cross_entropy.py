"""The fused head + cross-entropy against the plain one: `F.cross_entropy` over the
materialised fp32 logits, the reference every trainer uses."""

import gzip
import json

import pytest
import torch
import torch.nn.functional as F

from ftbench.model import build_model, get_preset
from ftbench.model.linear_cross_entropy import linear_cross_entropy
from ftbench.objective import mean_cross_entropy


def _reference(h, w, y):
    return F.cross_entropy((h @ w.t()).float(), y)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])  # one token, a ragged tail, one chunk
def test_loss_and_gradients_match_the_materialised_logits(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    w = torch.randn(300, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 300, (50,), generator=g)
    got = linear_cross_entropy(h, w, y, chunk=chunk)
    got.backward()
    got = got.detach()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want = _reference(h, w, y)
    want.backward()
    want = want.detach()
    # fp32: summed in another order, the mean may differ in its last bits (1e-7 relative).
    assert abs(float(got) - float(want)) < 1e-6 * abs(float(want))
    torch.testing.assert_close(gh, h.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-6)


def test_upstream_gradient_scales_both_gradients():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 8, generator=g, requires_grad=True)
    w = torch.randn(20, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 20, (9,), generator=g)
    (3.0 * linear_cross_entropy(h, w, y, chunk=4)).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (3.0 * _reference(h, w, y)).backward()
    torch.testing.assert_close(gh, h.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-6)


def test_without_gradients_it_returns_the_loss_only():
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(10, 8, generator=g), torch.randn(30, 8, generator=g)
    y = torch.randint(0, 30, (10,), generator=g)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, y, chunk=3)
        want = _reference(h, w, y)
    assert abs(float(got) - float(want)) < 1e-6 * abs(float(want))


def test_bf16_autocast_follows_the_unfused_numerics():
    """Under bf16 autocast both compute bf16 logits and an fp32 softmax: the same loss up
    to bf16 GEMM rounding (summation order inside the chunks differs)."""
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(16, 32, generator=g), torch.randn(64, 32, generator=g)
    y = torch.randint(0, 64, (16,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, y, chunk=5)
        want = _reference(h, w, y)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) < 1e-2 * float(want)


def _real_tokens(data_dir, n: int, vocab: int) -> torch.Tensor:
    """Bytes of real English text (TinyStories), as token ids below the vocabulary."""
    with gzip.open(data_dir / "corpus" / "tinystories_subset.jsonl.gz", "rt") as f:
        text = "".join(json.loads(next(f))["text"] for _ in range(40))
    ids = torch.tensor(list(text.encode())[:n], dtype=torch.int64)
    assert len(ids) == n
    return ids % vocab


@pytest.mark.parametrize("size", ["toy", "tiny"])
@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_models_train_on_the_same_loss_and_gradients(data_dir, size, arch):
    """The models' fused loss (targets given) against CE over their logits, on real text,
    with several chunks per batch."""
    import ftbench.model.linear_cross_entropy as lce

    cfg = get_preset(size).replace(max_seq_len=64)
    model = build_model(cfg, arch, seed=0).train()
    tokens = _real_tokens(data_dir, 4 * 65, cfg.vocab_size).view(4, 65)
    x, y = tokens[:, :-1], tokens[:, 1:]
    u = torch.rand(4, 64, cfg.latent_bits, generator=torch.Generator().manual_seed(0))
    kw = {"z_uniform_BTH": u} if arch == "free" else {}

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    old = lce.CHUNK_ELEMENTS
    lce.CHUNK_ELEMENTS = cfg.vocab_size * 48  # 48-token chunks: 256 tokens in 6 chunks
    try:
        fused = model(x, targets_BT=y, **kw)
    finally:
        lce.CHUNK_ELEMENTS = old
    assert fused.logits_BTV is None
    fused_grads = grads(fused.ce)
    plain = mean_cross_entropy(model(x, **kw).logits_BTV, y)
    plain_grads = grads(plain)
    assert abs(float(fused.ce.detach()) - float(plain.detach())) < 1e-6
    assert fused_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=0, atol=1e-5,
                                   msg=name)

"""Per-block torch.compile (`run.compile`) keeps the model's numbers: loss and every
parameter's gradient of a training step match the plain model's, for both arms."""

import pytest
import torch
from torch._dynamo.utils import counters

from ftbench.model import build_model
from ftbench.model.factory import canonical_name
from ftbench.objective import free_transformer_loss, lm_loss
from ftbench.training.distributed import DistContext, parallelize

# In float64, compiling may only reorder floating-point sums: fused kernels reduce in their
# own order and blocking. Reordering a sum of n terms moves it by at most about
# n * u * sum|x_i| (u = 2^-53 = 1.1e-16); the longest sums here have n <= 256 (the FFN
# width), so about 3e-14 per operation, and a few tens of such operations in a row between
# input and gradient stay below 1e-12 (measured: 8e-16). Changing any operation by as little
# as fp32's precision shows up far above that: moving SiLU's argument by a relative 1e-7
# in the compiled graph alone moves the gradients by 1.6e-8 (the loss by 3e-12 or less,
# which is why the gradients are compared too). 1e-10 sits two orders of magnitude from
# each.
TOLERANCE = 1e-10

# One graph per distinct call of Block.forward: a decoder block (causal); for the Free
# model also the encoder block (non-causal) and the injection block (keys and values from
# X + R). More would mean a graph break or a recompile in training.
GRAPHS = {"baseline": 1, "free": 3}


def _step(model, arch, tokens_BT, u_BTH):
    x, y = tokens_BT[:, :-1], tokens_BT[:, 1:]
    if arch == "free":
        out = model(x, z_uniform_BTH=u_BTH, targets_BT=y)
        # kappa 0: the KL term's gradient reaches the encoder for every token.
        loss = free_transformer_loss(out.ce, out.kl_BT, 0.0)["loss"]
    else:
        out = model(x, targets_BT=y)
        loss = lm_loss(out.ce)["loss"]
    loss.backward()
    grads = {canonical_name(n): p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, out.z_BT


@pytest.mark.slow  # compiling on CPU: about 15-30 s per arm
@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_compiled_blocks_match_plain_model(toy_cfg, arch):
    torch.compiler.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    tokens_BT = torch.randint(0, toy_cfg.vocab_size, (2, 33), generator=g)
    u_BTH = torch.rand(2, 32, toy_cfg.latent_bits, generator=g)
    plain = build_model(toy_cfg, arch, seed=3, dtype=torch.float64).train()
    compiled = parallelize(build_model(toy_cfg, arch, seed=3, dtype=torch.float64).train(),
                           DistContext(), activation_checkpointing=False, compile=True)

    loss_p, grads_p, z_p = _step(plain, arch, tokens_BT, u_BTH)
    loss_c, grads_c, z_c = _step(compiled, arch, tokens_BT, u_BTH)

    # Not vacuous: the blocks did run compiled, whole.
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == GRAPHS[arch], dict(counters["stats"])
    if arch == "free":
        assert torch.equal(z_c, z_p), "the two models drew different codes"
    assert abs(loss_c - loss_p) <= TOLERANCE * abs(loss_p), (loss_c, loss_p)
    assert grads_c.keys() == grads_p.keys()
    for name, g_p in grads_p.items():
        assert g_p is not None and grads_c[name] is not None, name
        rel = ((grads_c[name] - g_p).norm() / g_p.norm()).item()
        assert rel <= TOLERANCE, f"{name}: gradient differs by {rel:.1e} (relative)"

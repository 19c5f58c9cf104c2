"""The throughput recipe changes how a step is computed, never what: selective and full
activation checkpointing and fused AdamW against the plain step, both arms, on real text.

Tolerances are fp32's own (torch.testing's defaults for float32: rtol 1.3e-6, atol 1e-5):
recomputing a block runs the same kernels on the same inputs, and the fused and foreach
AdamW evaluate one formula, so any difference beyond rounding is a bug (a tensor saved
from the wrong op, a recompute with another random draw, a skipped bias correction)."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ftbench.model.factory import build_model
from ftbench.model.presets import get_preset
from ftbench.training.distributed import DistContext, parallelize
from ftbench.training.loop import z_uniforms

TOY = get_preset("toy").replace(vocab_size=256, n_layers=2)


def real_batch(data_dir, rows=4, T=48):
    """Bytes of real text (the Shakespeare corpus of the data mirror) as tokens."""
    import gzip
    import json

    path = data_dir / "corpus" / "tinyshakespeare.jsonl.gz"
    with gzip.open(path, "rt") as f:
        text = " ".join(json.loads(line)["text"] for _, line in zip(range(50), f))
    data = np.frombuffer(text.encode()[: rows * (T + 1)], dtype=np.uint8).astype(np.int64)
    return torch.from_numpy(data.reshape(rows, T + 1))


class MatmulCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.mm = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func._overloadpacket.__name__ in ("mm", "addmm", "bmm"):
            self.mm += 1
        return func(*args, **(kwargs or {}))


def step(arch, policy, batch):
    torch.manual_seed(0)
    model = build_model(TOY, arch, seed=0)
    model = parallelize(model, DistContext(), activation_checkpointing=policy, compile=False)
    x, y = batch[:, :-1], batch[:, 1:]
    kwargs = {}
    if arch == "free":
        kwargs["z_uniform_BTH"] = z_uniforms(0, "t", range(len(x)), x.shape[1],
                                             TOY.latent_bits, torch.device("cpu"))
    out = model(x, targets_BT=y, **kwargs)
    loss = out.ce + (out.kl_BT.mean() if arch == "free" else 0)
    counter = MatmulCounter()
    with counter:
        loss.backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
             for n, p in model.named_parameters()}
    return loss.detach(), grads, counter


@pytest.mark.parametrize("arch", ["baseline", "free"])
def test_checkpointing_policies_match_the_plain_step(arch, data_dir):
    batch = real_batch(data_dir)
    loss0, grads0, plain = step(arch, "none", batch)
    for policy in ("full", "selective"):
        loss, grads, ran = step(arch, policy, batch)
        torch.testing.assert_close(loss, loss0)
        assert grads.keys() == grads0.keys()
        for name in grads0:
            torch.testing.assert_close(grads[name], grads0[name], msg=f"{policy}: {name}")
        if policy == "full":
            assert ran.mm > plain.mm  # the blocks' matmuls run again in the backward
        else:
            # Every matmul output kept (none runs again); the pointwise ops do run again.
            assert ran.mm == plain.mm and ran.ops > plain.ops


def test_fused_adamw_matches_foreach(data_dir):
    batch = real_batch(data_dir)
    x, y = batch[:, :-1], batch[:, 1:]
    params = {}
    for fused in (True, None):
        model = build_model(TOY, "baseline", seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
        for _ in range(3):
            model(x, targets_BT=y).ce.backward()
            opt.step()
            opt.zero_grad()
        params[fused] = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = 0
    for name, p in params[True].items():
        torch.testing.assert_close(p, params[None][name], msg=name)
        moved += not torch.equal(p, build_model(TOY, "baseline", seed=0).state_dict()[name])
    assert moved  # the steps changed the weights (lr 1e-2): the comparison is not vacuous

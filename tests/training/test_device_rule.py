"""NCCL's device rule on CPU: collectives refuse host tensors, as NCCL refuses CPU tensors.

The reference is torch's own: a process group whose only backend is registered for the
"cuda" device (`backend="cuda:gloo"`, as NCCL is) refuses a CPU tensor in `all_reduce`
with the message that NCCL gives on a GPU machine. The training loop, validation,
checkpointing and resume then run on 2 gloo ranks under the rule.
"""

import os
import tempfile

import pytest
import torch

from ftbench.doctor.parity import loaded_state, spawn, train_phase
from ftbench.training.device_rule import NCCL_MESSAGE


def _cuda_only_group_message() -> str:
    """What a CPU tensor gets from a group with no CPU backend (NCCL's situation)."""
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("cuda:gloo", init_method=f"file://{os.path.join(d, 'rdzv')}",
                                rank=0, world_size=1)
        try:
            dist.all_reduce(torch.tensor(1.0))
        except RuntimeError as e:
            return str(e)
        finally:
            dist.destroy_process_group()
    return ""


def _rules(ctx, out):
    """In a rank with the rule installed: what is refused and what passes."""
    import numpy as np
    import torch.distributed as dist

    dev = ctx.device
    refused = {}
    cases = {
        "python float": lambda: torch.tensor(1.0),
        "zeros without device": lambda: torch.zeros(3),
        "from numpy": lambda: torch.from_numpy(np.ones(2)),
        "host arithmetic": lambda: torch.tensor(2.0) * 3,
        "stack of host": lambda: torch.stack([torch.tensor(1.0), torch.tensor(2.0)]),
        "moved back to host": lambda: torch.ones(2, device=dev).cpu(),
        "host written in place": lambda: torch.zeros(2).copy_(torch.ones(2, device=dev)),
        "moved like a host tensor": lambda: torch.ones(2, device=dev).to(torch.zeros(1)),
        "explicit device": lambda: torch.tensor(1.0, device=dev),
        "moved to device": lambda: torch.tensor(1.0).to(dev),
        "device arithmetic": lambda: torch.ones(2, device=dev) * torch.tensor(2.0),
        "model output": lambda: torch.nn.Linear(2, 1).to(dev)(torch.ones(1, 2, device=dev)),
        "like a host tensor, on the device": lambda: torch.zeros_like(torch.ones(2), device=dev),
        "new on the device": lambda: torch.ones(2).new_zeros(3, device=dev),
    }
    for name, make in cases.items():
        try:
            dist.all_reduce(make().detach())
            refused[name] = ""
        except RuntimeError as e:
            refused[name] = str(e)
    box = [{"object": 1}]
    dist.broadcast_object_list(box, src=0)  # torch moves these itself on NCCL
    if ctx.is_main:
        torch.save(refused, out)


def test_rule_refuses_what_nccl_refuses(tmp_path):
    reference = _cuda_only_group_message()
    assert reference.startswith(NCCL_MESSAGE), reference
    out = tmp_path / "refused.pt"
    spawn(2, [(_rules, dict(out=out))], device_rule=True)
    refused = torch.load(out)
    for name in ("python float", "zeros without device", "from numpy", "host arithmetic",
                 "stack of host", "moved back to host", "host written in place",
                 "moved like a host tensor"):
        assert refused[name].startswith(NCCL_MESSAGE), (name, refused[name])
    for name in ("explicit device", "moved to device", "device arithmetic", "model output",
                 "like a host tensor, on the device", "new on the device"):
        assert refused[name] == "", (name, refused[name])


def test_training_validation_checkpoints_and_resume_obey_the_rule(tmp_path):
    """Both arms, with validation at steps 2 and 4, checkpoints at 2 and 4, and a resume
    from step 2: every collective of the loop gets device tensors."""
    common = dict(root=tmp_path, run="rule", eval_every=2)
    spawn(2, [(train_phase, dict(common, stop_after=2)),
              (train_phase, common),
              (loaded_state, dict(root=tmp_path, run="rule", out=tmp_path / "state"))],
          device_rule=True)
    for arm in ("baseline", "free-k0p5"):
        lines = (tmp_path / "rule" / arm / "metrics.jsonl").read_text().splitlines()
        assert [__import__("json").loads(l)["step"] for l in lines] == [1, 2, 3, 4]
        assert (tmp_path / "state" / f"{arm}.pt").is_file()


def _z_uniform_dtypes(ctx, out):
    """A Free arm's training forward in bf16 under FSDP2 (one rank, mixed precision):
    the dtypes in which Z's uniforms reach the sampler."""
    import ftbench.model.free_transformer as ft
    from ftbench.doctor.parity import parity_config
    from ftbench.training.arms import pair_arms
    from ftbench.training.loop import autocast_dtype, build_arm_model, forward_loss

    cfg = parity_config(out.parent, dtype="bfloat16")
    arm = pair_arms(cfg, cfg.model.vocab_size)[1]
    model = build_arm_model(arm, cfg, ctx)
    seen, real = [], ft.sample_codes

    def spy(logits, generator=None, uniform=None):
        seen.append(str(uniform.dtype))
        return real(logits, generator, uniform)
    ft.sample_codes = spy
    tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.data.seq_len + 1), device=ctx.device)
    forward_loss(model, arm, tokens, cfg, "z-dtype", 0, autocast_dtype(cfg, ctx.device))
    torch.save(seen, out)


def test_z_uniforms_keep_fp32_under_fsdp_mixed_precision(tmp_path):
    """bf16 keeps 8 bits of a uniform: Bernoulli draws would become a staircase in p and
    differ from a one-device run's. FSDP2 must not cast the root's float inputs."""
    out = tmp_path / "dtypes.pt"
    spawn(1, [(_z_uniform_dtypes, dict(out=out))])
    assert torch.load(out) == ["torch.float32"]

"""Distributed parity checks shared by `ftbench doctor` and the tests: sharded vs one
process, and resharding resume (a DCP checkpoint written at one world size, resumed at
another).

Everything runs through the real training code (`train_arm`, `Checkpointer`) on a model
small enough that a 2-rank gloo job on a 2-core CPU takes seconds. Ranks are started with
`torch.multiprocessing` (no torchrun: each torchrun launch costs ~6 s on these machines),
and the rendezvous goes through a file, so no port can collide with another job.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

ARMS = ("baseline", "free-k0p5")


def parity_config(out_dir: Path | str, steps: int = 4, checkpoint_every: int = 2, **run):
    from ftbench.config import pair_config_from_dict

    return pair_config_from_dict({
        "size": "toy",
        "model": {"vocab_size": 48, "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
                  "ffn_hidden": 64, "latent_bits": 4, "max_seq_len": 64},
        "data": {"sources": [{"kind": "synthetic"}], "seq_len": 32,
                 "tokenizer": {"kind": "char"}},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "latent": {"kappas_bits": [0.5]},
        # eval_every > steps: validation runs only at the last step, the one part of the
        # run that is not under test here. float32 on any device: the tolerances of these
        # comparisons are fp32's (a bf16 run differs from one process by bf16 rounding).
        "run": {"name": "parity", "steps": steps, "batch_size": 4, "dtype": "float32",
                "checkpoint_every": checkpoint_every, "eval_every": 1000, "val_batches": 1,
                "out_dir": str(out_dir), **run},
    })


def parity_tokens(vocab: int = 48, n: int = 8192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Token values only need to be fixed and in range: these checks compare arithmetic
    # between runs, not what the model learns.
    rng = np.random.default_rng(seed)
    return (rng.integers(0, vocab, n, dtype=np.int64),
            rng.integers(0, vocab, 1024, dtype=np.int64))


def _fingerprint(arm_name: str) -> dict:
    return {"arm": arm_name, "check": "parity"}


def full_state(model, optim) -> dict[str, torch.Tensor]:
    """Model and optimiser state as full (unsharded) CPU tensors, keyed by flat names;
    collective under FSDP2, so every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, optim, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    flat = {f"model/{k}": v for k, v in msd.items()}
    for name, st in osd.get("state", {}).items():
        for k, v in st.items():
            if torch.is_tensor(v):
                flat[f"optim/{name}/{k}"] = v
    return {k: v.detach().float().cpu().clone() for k, v in flat.items()}


def train_phase(ctx, root: Path, run: str, stop_after: int | None = None, steps: int = 4,
                checkpoint_every: int = 2, **run_options) -> None:
    """Train both arms under `root/run/<arm>` (resuming from any checkpoint there) up to
    `stop_after` (None: to the end)."""
    from ftbench.training.arms import pair_arms
    from ftbench.training.loop import train_arm

    cfg = parity_config(root, steps=steps, checkpoint_every=checkpoint_every, **run_options)
    train, val = parity_tokens(cfg.model.vocab_size)
    for arm in pair_arms(cfg, cfg.model.vocab_size):
        # train_arm's progress lines would bury the doctor's table; metrics.jsonl has it all.
        with contextlib.redirect_stderr(io.StringIO()):
            train_arm(arm, cfg, train, val, root / run / arm.name, ctx, _fingerprint(arm.name),
                      log=lambda s: None, stop_after=stop_after)


def loaded_state(ctx, root: Path, run: str, out: Path, steps: int = 4,
                 checkpoint_every: int = 2) -> None:
    """Load each arm's newest checkpoint under `root/run` into a freshly built model at
    this world size and write its full state to `out/<arm>.pt` (rank 0)."""
    from ftbench.training.arms import pair_arms
    from ftbench.training.checkpoint import Checkpointer
    from ftbench.training.loop import build_arm_model, make_optimizer

    cfg = parity_config(root, steps=steps, checkpoint_every=checkpoint_every)
    for arm in pair_arms(cfg, cfg.model.vocab_size):
        model = build_arm_model(arm, cfg, ctx)
        optim = make_optimizer(model, cfg)
        ckpt = Checkpointer(root / run / arm.name / "checkpoints", ctx, _fingerprint(arm.name))
        latest = ckpt.latest()
        if latest is None:
            raise RuntimeError(f"no checkpoint under {ckpt.root}")
        ckpt.load(latest, model, optim)
        state = full_state(model, optim)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(state, out / f"{arm.name}.pt")


def losses(root: Path, run: str, arm: str) -> list[float]:
    path = Path(root) / run / arm / "metrics.jsonl"
    return [json.loads(l)["loss"] for l in path.read_text().splitlines() if l.strip()]


def compare_states(a: dict, b: dict) -> float:
    """Max abs difference over every tensor of two full states (inf if keys differ)."""
    if set(a) != set(b):
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


# ---- process launch ------------------------------------------------------------------

def _worker(rank: int, world: int, init_file: str, jobs: list, threads: int,
            device_rule: bool, like_world: int) -> None:
    import torch.distributed as dist

    from ftbench.training.device_rule import install
    from ftbench.training.distributed import DistContext, new_host_group

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device, backend = _device_for(rank, like_world)
    if device_rule and device.type == "cpu":
        install()
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world, **({"device_id": device}
                                                 if device.type == "cuda" else {}))
    try:
        ctx = DistContext(rank=rank, world=world, local_rank=rank, device=device,
                          host_group=new_host_group(), one_rank_fsdp=world == 1)
        for fn, kwargs in jobs:
            fn(ctx, **kwargs)
    finally:
        dist.destroy_process_group()


def _device_for(rank: int, world: int) -> tuple[torch.device, str]:
    """One GPU per rank with NCCL where there are enough GPUs, else CPU with gloo."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= world:
        torch.cuda.set_device(rank)
        # cuBLAS is deterministic only with a fixed workspace; some CUDA kernels
        # (index_add_) have no deterministic variant, hence warn_only there.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        return torch.device("cuda", rank), "nccl"
    torch.use_deterministic_algorithms(True)
    return torch.device("cpu"), "gloo"


def run_local(jobs: list, like_world: int = 2) -> None:
    """Run `(fn, kwargs)` jobs in this process as world size 1 (no process group), on
    the device kind that `spawn(like_world, ...)` uses, so the two are comparable (one GPU
    and 2 ranks: both on CPU)."""
    from ftbench.training.distributed import DistContext

    device, _ = _device_for(0, like_world)
    ctx = DistContext(device=device)
    for fn, kwargs in jobs:
        fn(ctx, **kwargs)


def spawn(world: int, jobs: list, threads: int = 1, device_rule: bool = True,
          like_world: int | None = None) -> None:
    """Run `(fn, kwargs)` jobs on `world` ranks in fresh processes (fn(ctx, **kwargs)).
    On CPU ranks, `device_rule` makes collectives refuse host tensors as NCCL does
    (ftbench.training.device_rule), so a host tensor in a collective fails here as it
    would on GPUs. `world` 1: a one-rank group run as if sharded (FSDP2 units and their
    mixed precision), on the device kind that `like_world` ranks get."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="ftbench-rdzv-") as d:
        init_file = os.path.join(d, "rendezvous")
        mp.spawn(_worker, args=(world, init_file, jobs, threads, device_rule,
                                like_world or world), nprocs=world, join=True)

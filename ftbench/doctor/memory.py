"""Measured peak memory of training steps, to hold the memory plan to account.

CUDA: `torch.cuda.max_memory_allocated`, the bytes of live tensors at the peak.

CPU: the process's resident high-water mark (VmHWM) minus its resident size just before
the model is built, in a fresh subprocess. Two things make that delta a count of live
tensor bytes rather than of what the C library happens to keep:
- a warm-up step of a micro model first, so kernel code, thread pools and one-off
  buffers are resident before the baseline is read (then `malloc_trim` returns the
  warm-up's freed memory);
- `MALLOC_MMAP_THRESHOLD_=65536`: every allocation above 64 KiB gets its own mapping,
  returned to the system when freed, so a freed activation cannot stay resident in a
  heap arena and count twice. (glibc's default raises the threshold up to 32 MiB as
  memory is freed, after which freed tensors linger in the heap.)

Usage: python -m ftbench.doctor.memory --size toy --arch free --batch 8 --seq 256 [--ckpt]
prints one JSON object; --specs '[{...}, ...]' measures several in turn, a line each.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (needs Linux)")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def step_config(size: str, batch: int, seq: int, ckpt: bool, layers: int | None = None,
                overrides: dict | None = None, dtype: str = "auto", fused: bool = True):
    from ftbench.config import pair_config_from_dict

    model = {"max_seq_len": max(seq, 64), **(overrides or {})}
    if layers:
        model["n_layers"] = layers
    return pair_config_from_dict({"size": size, "model": model, "data": {"seq_len": seq},
                                  "latent": {"kappas_bits": [0.5]}, "optim": {"fused": fused},
                                  "run": {"batch_size": batch, "steps": 10, "dtype": dtype,
                                          "activation_checkpointing": ckpt}})


def _train_steps(cfg, arch: str, steps: int, device, ctx=None):
    import torch

    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext
    from ftbench.training.loop import (autocast_dtype, build_arm_model, forward_loss,
                                       make_optimizer)

    arm = pair_arms(cfg, cfg.model.vocab_size)[0 if arch == "baseline" else 1]
    ctx = ctx or DistContext(device=device)
    model = build_arm_model(arm, cfg, ctx)
    optim = make_optimizer(model, cfg)
    amp = autocast_dtype(cfg, device)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.run.batch_size, cfg.data.seq_len + 1),
                           generator=g).to(device)
    for i in range(steps):
        # AdamW's state does not depend on the batch, so the first step (which creates it)
        # runs on one sequence: the peak is a later step's, at the full batch with the state
        # live, and the measurement costs about half as much.
        batch = tokens[:1] if i == 0 and steps > 1 else tokens
        loss = forward_loss(model, arm, batch, cfg, f"mem/{i}", 0, amp)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    return model, optim


def measure_here(size: str, arch: str, batch: int, seq: int, ckpt: bool,
                 layers: int | None = None, overrides: dict | None = None,
                 dtype: str = "auto", fsdp: bool = False, fused: bool = True) -> dict:
    """Peak bytes of two training steps (the second, at the full batch, has the optimiser
    state), this process. `fsdp`: under FSDP2 on a one-rank group (bf16: with its
    MixedPrecisionPolicy), as each rank of a sharded run holds its units."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)
    ctx = _one_rank_fsdp(device) if fsdp else None
    warm = step_config("toy", 2, 16, ckpt, layers=2, dtype=dtype,
                       overrides={"vocab_size": 64, "d_model": 32, "latent_bits": 4})
    _train_steps(warm, arch, 2, device, ctx)
    _trim()
    cfg = step_config(size, batch, seq, ckpt, layers, overrides, dtype, fused)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model, optim = _train_steps(cfg, arch, 2, device, ctx)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        model, optim = _train_steps(cfg, arch, 2, device, ctx)
        peak = _status("VmHWM") - base
    return {"size": size, "arch": arch, "batch": batch, "seq": seq, "ckpt": ckpt,
            "layers": cfg.model.n_layers, "device": device.type, "dtype": cfg.run.dtype,
            "fsdp": fsdp, "fused": fused, "peak_bytes": int(peak)}


def _one_rank_fsdp(device):
    """A one-rank process group (NCCL on a GPU, gloo on CPU) and a context that shards."""
    import tempfile

    import torch
    import torch.distributed as dist

    from ftbench.training.distributed import DistContext

    if device.type == "cuda" and device.index is None:  # NCCL wants the device's index
        device = torch.device("cuda", torch.cuda.current_device())
    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="ftbench-mem-"), "rendezvous")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"file://{store}", rank=0, world_size=1,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistContext(device=device, one_rank_fsdp=True)


def measure(size: str, arch: str, batch: int, seq: int, ckpt: bool = False,
            layers: int | None = None, timeout: float = 600) -> dict:
    """`measure_here` in a fresh subprocess (a clean high-water mark and allocator)."""
    spec = {"size": size, "arch": arch, "batch": batch, "seq": seq, "ckpt": ckpt,
            "layers": layers}
    return measure_many([spec], timeout)[0]


def measure_many(specs: list[dict], timeout: float = 600) -> list[dict]:
    """`measure_here` for each spec (keys size, arch, batch, seq, ckpt, layers; optional
    overrides of model fields, dtype, fsdp), one after
    another in one fresh subprocess: the high-water mark is reset and the resident baseline
    read again before each, and with MALLOC_MMAP_THRESHOLD_ every large tensor of the
    previous measurement has gone back to the system. One process instead of one per spec
    saves its start (torch and ftbench imports, about 3 s each)."""
    cmd = [sys.executable, "-m", "ftbench.doctor.memory", "--specs", json.dumps(specs)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=timeout * len(specs))
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(specs):]]


def main() -> None:
    ap = argparse.ArgumentParser(description="peak memory of two training steps")
    ap.add_argument("--size", default="toy")
    ap.add_argument("--arch", default="free", choices=("baseline", "free"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--ckpt", action="store_true")
    ap.add_argument("--specs", default=None,
                    help="a JSON list of {size, arch, batch, seq, ckpt, layers}: measure each "
                         "in turn, one JSON line per spec (overrides the other options)")
    a = ap.parse_args()
    specs = json.loads(a.specs) if a.specs else [
        {"size": a.size, "arch": a.arch, "batch": a.batch, "seq": a.seq, "ckpt": a.ckpt,
         "layers": a.layers}]
    for spec in specs:
        print(json.dumps(measure_here(spec["size"], spec["arch"], spec["batch"], spec["seq"],
                                      spec.get("ckpt", False), spec.get("layers"),
                                      overrides=spec.get("overrides"),
                                      dtype=spec.get("dtype", "auto"),
                                      fsdp=spec.get("fsdp", False))), flush=True)
        _trim()


if __name__ == "__main__":
    main()

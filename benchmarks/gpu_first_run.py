"""The first run on a GPU machine, beside its rehearsal: the real 1.5B shape (fewer layers)
trained for 20 steps by `train_arm` on the GPUs present, then the same run rehearsed on
fake tensors (ftbench doctor --simulate) and planned (the memory plan), side by side.

Launch on every GPU of the machine (benchmarks/gpu_first_run.sh does, then runs the
doctor):
    torchrun --nproc_per_node=$(nvidia-smi -L | wc -l) benchmarks/gpu_first_run.py

Per rank it prints tokens/s (median of the steps after the first five), MFU, and the
allocated and reserved peaks; rank 0 then prints the rehearsal's traced peak and roofline
step time and the plan's peak for the same run. Each rank trains 16 sequences of 4,096
tokens per step (the per-rank batch of configs/1.5b.yaml on 8 GPUs), bf16 under FSDP2 (a
group of one on a single GPU), the config's activation checkpointing, validation at steps
10 and 20. Tokens are random: this measures the machine, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--per-rank", type=int, default=16, help="sequences per rank per step")
    ap.add_argument("--set", action="append", default=[], help="config override, repeatable")
    ap.add_argument("--out", default=None, help="where metrics and the JSON summary go")
    args = ap.parse_args()

    import torch.distributed as dist

    from ftbench.api import resolve_pair_config
    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext, init_distributed, shutdown
    from ftbench.training.loop import train_arm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.out or tempfile.mkdtemp(prefix="ftbench-first-run-"))
    cfg = resolve_pair_config(None, "1.5b", [
        f"model.n_layers={args.layers}", f"run.steps={args.steps + 1}",
        f"run.batch_size={args.per_rank * world}", "run.grad_accum=1", "run.eval_every=10",
        "run.checkpoint_every=100000", "run.val_batches=1", "run.matched_control=false",
        "latent.kappas_bits=[0.5]", f"run.out_dir={out}", "run.dtype=auto", *args.set])
    if world == 1 and torch.cuda.is_available():
        # One GPU: shard anyway (FSDP2 over a group of one), as each rank of 8 does.
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        store = os.path.join(tempfile.mkdtemp(prefix="ftbench-pg-"), "rendezvous")
        dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1,
                                device_id=device)
        ctx = DistContext(device=device, one_rank_fsdp=True)
    else:
        ctx = init_distributed(cfg.run.timeout_minutes)
    T, V = cfg.data.seq_len, cfg.model.vocab_size
    rng = np.random.default_rng(0)
    train = rng.integers(0, V, cfg.run.batch_size * (T + 1) * 4, dtype=np.int64)
    val = rng.integers(0, V, 4 * (T + 1), dtype=np.int64)
    measured = {}
    for arm in pair_arms(cfg, V)[:2]:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)
        res = train_arm(arm, cfg, train, val, out / arm.name, ctx, {"check": "first-run"},
                        log=lambda m: None, stop_after=args.steps)
        lines = [json.loads(l) for l in (out / arm.name / "metrics.jsonl").read_text()
                 .splitlines()] if ctx.is_main else []
        steady = [l for l in lines if l["step"] > 5]
        row = {"rank": ctx.rank, "steps": res.steps,
               "tokens_per_s": statistics.median(l["tokens_per_s"] for l in steady)
               if steady else res.tokens_per_s,
               "mfu": statistics.median(l["mfu"] for l in steady) if steady else res.mfu,
               "allocated_peak_bytes": torch.cuda.max_memory_allocated(ctx.device)
               if ctx.device.type == "cuda" else res.peak_memory_bytes,
               "reserved_peak_bytes": torch.cuda.max_memory_reserved(ctx.device)
               if ctx.device.type == "cuda" else None,
               "val": {k: v for k, v in res.final_val.items() if isinstance(v, float)}}
        print(f"[rank {ctx.rank}] {arm.name}: {json.dumps(row)}", flush=True)
        measured[arm.name] = row
        del res
    shutdown(ctx)
    if not ctx.is_main:
        return
    from ftbench.doctor.simulate import simulate
    # simulate() takes the device's own name (ftbench.training.hardware.gpu_spec).
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "h100"
    sim = simulate(cfg, world, 1, gpu, None)
    summary = {"world_size": world, "gpu": torch.cuda.get_device_name(0)
               if torch.cuda.is_available() else "cpu", "layers": args.layers,
               "arms": {}}
    print(f"\n{'arm':12s} {'measured':>34s} | {'rehearsal (traced, roofline)':>34s} | plan")
    for name, m in measured.items():
        a = sim["arms"].get(name, {})
        mem_row = next((r for r in sim["rows"] if r["name"].startswith(name)
                        and "peak memory" in r["name"]), None)
        plan = mem_row["planned"]["peak_bytes"] if mem_row else None
        traced = a.get("trace", {}).get("memory", {}).get("train_peak", {}).get("total")
        est = a.get("throughput", {})
        summary["arms"][name] = {"measured": m, "traced_peak_bytes": traced,
                                 "planned_peak_bytes": plan,
                                 "roofline_tokens_per_s": est.get("tokens_per_s"),
                                 "roofline_mfu": est.get("mfu")}
        gib = 2**30
        print(f"{name:12s} {m['tokens_per_s']:10,.0f} tok/s MFU {m['mfu']:.1%} "
              f"alloc {m['allocated_peak_bytes'] / gib:5.2f} GiB reserved "
              f"{(m['reserved_peak_bytes'] or 0) / gib:5.2f} GiB | "
              f"{(est.get('tokens_per_s') or 0):10,.0f} tok/s MFU {(est.get('mfu') or 0):.1%} "
              f"peak {(traced or 0) / gib:5.2f} GiB | {(plan or 0) / gib:5.2f} GiB")
    names = list(measured)
    if len(names) == 2:
        r_meas = measured[names[0]]["tokens_per_s"] / measured[names[1]]["tokens_per_s"]
        print(f"Free/baseline step time: measured {r_meas:.3f}, rehearsal "
              f"{(sim['ratio'] or {}).get('time', float('nan')):.3f}, FLOPs "
              f"{(sim['ratio'] or {}).get('flops', float('nan')):.3f}")
        summary["time_ratio_measured"] = r_meas
        summary["rehearsal"] = sim["ratio"]
    (out / "first_run.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {out / 'first_run.json'}")


if __name__ == "__main__":
    main()

"""The paper's 1.5B run rehearsed on this CPU (ftbench doctor --simulate), and the
throughput recipe compared option by option on its roofline.

1. The full 28-layer 1.5B step of both arms (and the matched control) at 8 ranks, traced
   at full depth: every row, the trace time, the estimated Free/baseline step-time ratio
   on 8 x H100 with its terms beside the FLOP ratio and the paper's 1.036.
2. Each recipe option at 1.5B on 8 x H100 (traced at 2 and 4 layers, extrapolated to 28):
   activation checkpointing none / full / selective, AdamW fused / foreach, and across 4
   nodes (32 GPUs) HSDP (shard within a node) against one FSDP group over all ranks;
   estimated tokens/s and peak memory per rank side by side. Per-block compile cannot run
   on fake tensors: its row is the most it could give, if fusion removed every block's
   memory-bound traffic (the part of the step that grows with depth outside matmuls).
3. (--plan-table) The memory plan against the rehearsal's traced peak per rank, GiB, both
   arms, at 2 layers, for the ladder's presets and 1.5b at 1 and 8 ranks (and 64 with
   --worlds 1,8,64). At one rank the rehearsal shards over a group of one (FSDP2's bf16
   policy), so its plan is the FSDP2 one; the plan `train-pair` uses on a single device
   (plain autocast, no FSDP2) is printed beside it.

Usage: python benchmarks/bench_rehearsal.py [--skip-full] [--gpu h100]
       python benchmarks/bench_rehearsal.py --plan-table [--sizes 125m,350m,760m,1.5b]
           [--worlds 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import time

GiB = 2**30


def run(cfg, world, nodes, gpu, layers, arms=None):
    from ftbench.doctor.simulate import simulate

    return simulate(cfg, world, nodes, gpu, layers, arms)


def full_depth(gpu: str) -> dict:
    from ftbench.api import resolve_pair_config

    cfg = resolve_pair_config(None, "1.5b", [])
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    r = run(cfg, 8, 1, gpu, None)
    wall = time.perf_counter() - t0
    print(f"\n## Full 1.5B (28 layers), 8 ranks, {r['gpu']}: rehearsal took {wall:.0f} s "
          f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    for row in r["rows"]:
        print(f"{'PASS' if row['passed'] else 'FAIL'}  {row['name']}: {row['measured']}  "
              f"[{row['expected']}]")
    for name, a in r["arms"].items():
        print(f"  {name}: traced in {a['trace']['trace_seconds']:.0f} s")
    if r["ratio"]:
        t = r["ratio"]["terms"]
        print(f"Free/baseline step time {r['ratio']['time']:.3f}; FLOPs {r['ratio']['flops']:.3f};"
              f" paper {r['ratio']['paper_1p5b']}; by term: "
              + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    return {"seconds": wall, "result": r}


def recipes(gpu: str) -> list[dict]:
    from ftbench.api import resolve_pair_config

    variants = [
        ("checkpointing full (config)", [], 8, 1),
        ("checkpointing selective", ["run.checkpoint_policy=selective"], 8, 1),
        ("checkpointing selective, grad_accum 2",
         ["run.checkpoint_policy=selective", "run.grad_accum=2"], 8, 1),
        ("checkpointing none", ["run.activation_checkpointing=false"], 8, 1),
        ("checkpointing none, grad_accum 4",
         ["run.activation_checkpointing=false", "run.grad_accum=4"], 8, 1),
        ("AdamW foreach", ["optim.fused=false"], 8, 1),
        ("4 nodes, HSDP (shard 8)", [], 32, 4),
        ("4 nodes, FSDP over 32", ["run.shard_ranks=32"], 32, 4),
    ]
    out = []
    print(f"\n## Recipe options at 1.5B on {gpu} (traced at 2 and 4 layers, extrapolated to 28)")
    print(f"{'option':30s} {'arm':10s} {'tokens/s/GPU':>13s} {'MFU':>6s} {'step ms':>8s} "
          f"{'peak GiB':>9s} {'fits':>5s} {'bound by':>14s}")
    for label, sets, world, nodes in variants:
        cfg = resolve_pair_config(None, "1.5b", sets)
        r = run(cfg, world, nodes, gpu, 2, arms=["baseline", "free"])
        for name, a in r["arms"].items():
            fits = next(x["passed"] for x in r["rows"]
                        if x["name"].startswith(name) and "fits" in x["name"])
            row = {"option": label, "arm": name, "world": world, "nodes": nodes,
                   "tokens_per_s_per_gpu": a["throughput"]["tokens_per_s_per_gpu"],
                   "mfu": a["throughput"]["mfu"], "step_s": a["timing"]["step_s"],
                   "peak_bytes": a["peak_bytes_full_depth"], "fits": fits,
                   "bound_by": a["timing"]["bound_by"], "timing": a["timing"]}
            out.append(row)
            print(f"{label:30s} {name[:10]:10s} {row['tokens_per_s_per_gpu']:13,.0f} "
                  f"{row['mfu']:6.1%} {row['step_s'] * 1e3:8.0f} {row['peak_bytes'] / GiB:9.2f} "
                  f"{'yes' if fits else 'NO':>5s} {row['bound_by']:>14s}")
    # Compile's ceiling: the depth-dependent memory-bound time (the blocks' pointwise ops)
    # of the configured run, if fusion removed all of it.
    for name in ("baseline", "free-k0p25"):
        base = next(r for r in out if r["option"].startswith("checkpointing full")
                    and r["arm"] == name)
        t = base["timing"]
        print(f"compile ceiling ({name}): the step's memory-bound time is "
              f"{t['memory_s'] * 1e3:.0f} ms of {t['step_s'] * 1e3:.0f} ms; removing the "
              f"blocks' share would save at most that much (see bench_compile.py for what "
              f"compile gains on this CPU)")
    return out


def plan_table(sizes: list[str], worlds: list[int], layers: int = 2) -> list[dict]:
    """Planned vs traced peak per rank for each size, world size and distinct arm."""
    from ftbench.api import resolve_pair_config
    from ftbench.doctor.rehearsal import rehearsal_config, rehearse, unique_arms
    from ftbench.training.memory_plan import arm_memory

    rows = []
    print(f"\n## Memory plan vs rehearsal, GiB per rank, {layers} layers (gap: traced / plan - 1;"
          f" negative: the plan is above the trace)")
    print(f"{'size':6s} {'ranks':>5s} {'arm':18s} {'traced':>8s} {'plan':>8s} {'gap':>7s} "
          f"{'phase':>15s} {'1-device plan':>14s}")
    for size in sizes:
        cfg = resolve_pair_config(None, size, [])
        arms = {a.name: a for a in unique_arms(rehearsal_config(cfg, layers))}
        for world in worlds:
            t0 = time.perf_counter()
            traced = rehearse(cfg, world, 1, (layers,))
            for (name, _), t in traced.items():
                if "error" in t:
                    print(f"{size:6s} {world:5d} {name:18s} rehearsal failed: {t['error']}")
                    continue
                kw = dict(seq_len=t["seq_len"], micro_batch=t["micro_batch"],
                          checkpointing=t["checkpointing"], bf16=True, device_type="cuda",
                          fused_optimizer=t["fused_adamw"], grad_accum=t["grad_accum"])
                plan = arm_memory(arms[name].model, t["arch"], world=t["shard_ranks"],
                                  fsdp=True, **kw)
                # What train-pair plans on one device: plain autocast, no FSDP2.
                single = (arm_memory(arms[name].model, t["arch"], world=1, fsdp=False, **kw)
                          if world == 1 else None)
                got = t["memory"]["train_peak"]["total"]
                row = {"size": size, "world": world, "arm": name, "traced_gib": got / GiB,
                       "plan_gib": plan["peak_bytes"] / GiB, "gap": got / plan["peak_bytes"] - 1,
                       "phase": plan["peak_phase"],
                       "single_device_plan_gib": single["peak_bytes"] / GiB if single else None,
                       "traced_by_category": t["memory"]["train_peak"]}
                rows.append(row)
                print(f"{size:6s} {world:5d} {name:18s} {row['traced_gib']:8.2f} "
                      f"{row['plan_gib']:8.2f} {row['gap']:+7.1%} {row['phase']:>15s} "
                      + (f"{row['single_device_plan_gib']:14.2f}" if single else f"{'':14s}"),
                      flush=True)
            print(f"{'':6s} {'':5s} (traced in {time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--skip-full", action="store_true", help="only the recipe comparison")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--plan-table", action="store_true",
                    help="only the memory plan vs the rehearsal's traced peaks")
    ap.add_argument("--sizes", default="125m,350m,760m,1.5b")
    ap.add_argument("--worlds", default="1,8")
    args = ap.parse_args()
    figures = {}
    if args.plan_table:
        figures["plan_table"] = plan_table(args.sizes.split(","),
                                           [int(w) for w in args.worlds.split(",")])
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(figures, f, indent=1, default=str)
            os.replace(tmp, args.json)
        return
    if not args.skip_full:
        figures["full"] = full_depth(args.gpu)
    figures["recipes"] = recipes(args.gpu)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, default=str)


if __name__ == "__main__":
    main()

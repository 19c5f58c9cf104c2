"""What per-block torch.compile (`run.compile`) buys each arm, measured side by side.

Both arms at the CPU benchmark shape (V 8192, D 256, 8 layers, T 256, B 8, H 16), each
built twice from one seed: plain, and compiled as training compiles it
(`parallelize(..., compile=True)`: every decoder block and the encoder block). A training
step is the loop's: `forward_loss`, backward, gradient clipping, fused AdamW.

On a shared machine one wall-clock figure means little, and a busy one's load comes in
bursts that can slow one step several-fold. So each round runs both arms, one after the
other (the arm that goes first alternates), and each arm's two variants as
plain, compiled, compiled, plain (a drift in load over the four steps hits both variants
alike); a round gives each arm the ratio of its plain to its compiled time, and Free's
ratio over the baseline's. The figures printed are the medians of the rounds' ratios with
their range, and beside them the ratios of each variant's best round (the one least
disturbed by other work). The 1-minute load average is recorded each round.

Then a profile of each compiled arm says where its time goes (the compiled blocks,
the Binary Mapper's backward, the fused head + cross-entropy, the optimiser), and the
block speed-up implied by the baseline's figure predicts the Free arm's from its block
share (Amdahl): a Free arm that gains less than the baseline only because less of its
step is in blocks matches the prediction.

Usage: python benchmarks/bench_compile.py [--threads 2] [--rounds 9] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from ftbench.config.schema import PairConfig
from ftbench.model import build_model, get_preset
from ftbench.training.arms import Arm
from ftbench.training.distributed import DistContext, parallelize
from ftbench.training.loop import forward_loss, make_optimizer

SHAPE = dict(vocab_size=8192, d_model=256, n_layers=8, n_heads=4, n_kv_heads=4,
             ffn_hidden=1024, latent_bits=16, max_seq_len=256)
BATCH, SEQ = 8, 256
ARMS = {"baseline": None, "free": 0.5}  # arch: kappa in bits

# Profiler events (CPU total) that make up a step; each holds everything below it.
PARTS = {
    "compiled blocks": ("CompiledFunction", "CompiledFunctionBackward"),
    "Binary Mapper backward": ("_BinaryMapperBackward",),
    "head + cross-entropy": ("_LinearCrossEntropy", "_LinearCrossEntropyBackward"),
    "AdamW": ("Optimizer.step#AdamW.step",),
}


class Variant:
    def __init__(self, arch: str, compiled: bool, pair: PairConfig):
        self.arch, self.compiled, self.pair = arch, compiled, pair
        cfg = get_preset("small").replace(**SHAPE)
        self.arm = Arm(name=arch, arch=arch, model=cfg, kappa_bits=ARMS[arch])
        model = build_model(cfg, arch, seed=pair.run.seed).train()
        self.model = parallelize(model, DistContext(), activation_checkpointing=False,
                                 compile=compiled)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = make_optimizer(self.model, pair)
        g = torch.Generator().manual_seed(1)
        self.batch = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=g)
        self.n = 0

    @property
    def name(self) -> str:
        return f"{self.arch} {'compiled' if self.compiled else 'plain'}"

    def step(self) -> float:
        # Z's uniforms follow the loop's per-step tag, so both variants of an arm see the
        # same draws at the same step.
        losses = forward_loss(self.model, self.arm, self.batch, self.pair, f"train/{self.n}",
                              0, None)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.pair.optim.grad_clip)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        self.n += 1
        return losses["loss"].item()

    def timed(self) -> float:
        t0 = time.perf_counter()
        self.step()
        return time.perf_counter() - t0


def profile_parts(v: Variant, steps: int) -> dict:
    """Seconds per step in each part (the profiler's elapsed time of its events)."""
    from torch.profiler import ProfilerActivity, profile

    w0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            v.step()
    step_s = (time.perf_counter() - w0) / steps
    totals = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    parts = {part: sum(totals.get(k, 0.0) for k in keys) for part, keys in PARTS.items()}
    parts["rest"] = max(0.0, step_s - sum(parts.values()))
    return {"step_s": step_s, "parts_s": parts}


def load1() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pair = PairConfig()
    loads = [load1()]
    print(f"torch {torch.__version__}, {args.threads} threads, shape {SHAPE}, batch {BATCH} x "
          f"{SEQ} tokens, fp32; load average (1 min) at start {loads[0]:.2f}", flush=True)

    variants = [Variant(a, c, pair) for a in ARMS for c in (False, True)]
    first_loss = {}
    for v in variants:  # warm-up: compilation, allocator, optimiser state
        t0 = time.perf_counter()
        first_loss[v.name] = v.step()
        print(f"  first step {v.name}: {time.perf_counter() - t0:.1f} s", flush=True)
        v.step()
    for arch in ARMS:
        a, b = first_loss[f"{arch} plain"], first_loss[f"{arch} compiled"]
        print(f"  {arch}: first-step loss plain {a:.8f}, compiled {b:.8f} "
              f"(relative difference {abs(a - b) / abs(a):.1e})")

    by_name = {v.name: v for v in variants}
    wall = {v.name: [] for v in variants}  # per round: the sum of the variant's two steps
    for r in range(args.rounds):
        for arch in (ARMS if r % 2 == 0 else reversed(ARMS)):
            plain, compiled = by_name[f"{arch} plain"], by_name[f"{arch} compiled"]
            steps = [(v, v.timed()) for v in (plain, compiled, compiled, plain)]
            for v in (plain, compiled):
                wall[v.name].append(sum(t for u, t in steps if u is v))
        loads.append(load1())
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {wall[n][-1] / 2:.3f} s" for n in wall) + f"; load {loads[-1]:.2f}",
              flush=True)
    best = {n: min(t) / 2 for n, t in wall.items()}

    def ratios(num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(wall[num], wall[den])]

    def fmt(x: list[float]) -> str:
        return f"{statistics.median(x):.3f} [{min(x):.3f}, {max(x):.3f}]"

    result = {"shape": SHAPE, "batch": BATCH, "seq": SEQ, "threads": args.threads,
              "rounds": args.rounds,
              "load_avg_1min": {"start": loads[0], "max": max(loads), "end": loads[-1]},
              "median_step_s": {n: statistics.median(t) / 2 for n, t in wall.items()},
              "best_round_step_s": best,
              "first_step_loss": first_loss}
    print("\nmedian step: " + ", ".join(
        f"{n} {s:.3f} s" for n, s in result["median_step_s"].items()))
    speedup = {arch: ratios(f"{arch} plain", f"{arch} compiled") for arch in ARMS}
    speedup["free_over_baseline"] = [f / b for f, b in zip(speedup["free"], speedup["baseline"])]
    time_ratio = {kind: ratios(f"free {kind}", f"baseline {kind}")
                  for kind in ("plain", "compiled")}
    result["speedup"] = {k: statistics.median(x) for k, x in speedup.items()}
    result["free_over_baseline_time"] = {k: statistics.median(x) for k, x in time_ratio.items()}
    print("medians of the rounds' ratios [range over rounds]:")
    print(f"  compile speed-up (plain / compiled step time): baseline {fmt(speedup['baseline'])}, "
          f"Free {fmt(speedup['free'])}; Free's over the baseline's "
          f"{fmt(speedup['free_over_baseline'])}")
    print(f"  Free / baseline step time: plain {fmt(time_ratio['plain'])}, "
          f"compiled {fmt(time_ratio['compiled'])}")
    best_speedup = {arch: best[f"{arch} plain"] / best[f"{arch} compiled"] for arch in ARMS}
    result["speedup_of_best_rounds"] = best_speedup
    print(f"  from each variant's best round: baseline {best_speedup['baseline']:.3f}x, "
          f"Free {best_speedup['free']:.3f}x; Free / baseline step time plain "
          f"{best['free plain'] / best['baseline plain']:.3f}, compiled "
          f"{best['free compiled'] / best['baseline compiled']:.3f}")
    print(f"load average (1 min): start {loads[0]:.2f}, max {max(loads):.2f}, end {loads[-1]:.2f}")

    print(f"\nwhere a compiled step's time goes ({args.profile_steps} profiled steps):")
    shares = {}
    for v in variants:
        if not v.compiled:
            continue
        prof = profile_parts(v, args.profile_steps)
        shares[v.arch] = prof["parts_s"]["compiled blocks"] / prof["step_s"]
        print(f"  {v.arch}: step {prof['step_s']:.3f} s; " + ", ".join(
            f"{part} {100 * s / prof['step_s']:.0f} %" for part, s in prof["parts_s"].items()))
        result[f"profile_{v.arch}"] = prof
    # Blocks take share f of the compiled step and run s times faster than plain ones:
    # speed-up S = (1 - f) + f s. The baseline's S and f give s; the Free arm's f predicts
    # its S, if its blocks gain what the baseline's do.
    s_base, f_base = result["speedup"]["baseline"], shares["baseline"]
    s_blocks = (s_base - (1 - f_base)) / f_base
    predicted = (1 - shares["free"]) + shares["free"] * s_blocks
    result["block_speedup_from_baseline"] = s_blocks
    result["free_speedup_predicted"] = predicted
    print(f"blocks alone: {s_blocks:.3f}x (from the baseline's speed-up and block share); "
          f"predicted Free speed-up {predicted:.3f}x, measured "
          f"{result['speedup']['free']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

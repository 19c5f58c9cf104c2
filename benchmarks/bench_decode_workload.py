"""Free/baseline generation time on the fixed decode workload, side by side in one run.

The evaluator times this same workload on every arm after each generative task
(`generation.workload` in the results), so that the report compares generation like for
like; here both models run it in one process, in rounds whose order alternates (baseline
first, then Free first), and the ratio of each round is printed with the machine's load.
The analytic counterpart is the ratio of decode FLOPs per token.

Usage: PYTHONPATH=. python benchmarks/bench_decode_workload.py [--size toy] [--vocab 4096]
       [--rounds 4] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import statistics


def main() -> None:
    import torch

    from ftbench.inference.workload import time_decode_workload, workload_shape
    from ftbench.model import build_model, get_preset
    from ftbench.model.accounting import model_cost

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="toy")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary (the toy tokenizer's)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.size).replace(vocab_size=args.vocab)
    models = {arch: build_model(cfg, arch, seed=0).eval() for arch in ("baseline", "free")}
    shape = workload_shape(cfg.max_seq_len, args.batch_size)
    seq = cfg.max_seq_len
    analytic = (model_cost(cfg, "free", seq).decode_flops_per_token
                / model_cost(cfg, "baseline", seq).decode_flops_per_token)
    print(f"{args.size} (V {args.vocab}), workload {shape}, torch threads "
          f"{torch.get_num_threads()}, analytic decode FLOPs ratio {analytic:.3f}")
    ratios = []
    for i in range(args.rounds):
        order = ("baseline", "free") if i % 2 == 0 else ("free", "baseline")
        seconds = {arch: time_decode_workload(models[arch], shape, amp=None)["seconds"]
                   for arch in order}
        ratios.append(seconds["free"] / seconds["baseline"])
        print(f"round {i}: baseline {seconds['baseline']:.3f} s, free {seconds['free']:.3f} s, "
              f"ratio {ratios[-1]:.3f}, load {os.getloadavg()[0]:.2f}", flush=True)
    sd = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
    print(f"Free/baseline: median {statistics.median(ratios):.3f}, sd {sd:.3f} over "
          f"{len(ratios)} rounds; analytic {analytic:.3f}")


if __name__ == "__main__":
    main()

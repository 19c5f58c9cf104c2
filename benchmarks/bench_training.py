"""Training throughput of both arms through the real training code, at several sizes.

For each size: the baseline and the Free model (kappa 1/2 bit) take interleaved training
steps (fp32 on CPU, bf16 autocast on GPU) through ftbench.training.loop's model builder,
optimiser and loss; prints tokens/s, model-FLOPs utilisation against the device peak
(measured for CPUs, tabulated for GPUs), peak memory, and Free/baseline ratios.

Usage:
  python benchmarks/bench_training.py                      # CPU: toy and small
  python benchmarks/bench_training.py --sizes 1.5b --layers 4 --batch 8 --seq 2048  # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ftbench.config import pair_config_from_dict
from ftbench.model.accounting import model_cost
from ftbench.training.arms import pair_arms
from ftbench.training.distributed import DistContext
from ftbench.doctor.memory import measure
from ftbench.training.hardware import peak_flops
from ftbench.training.loop import autocast_dtype, build_arm_model, forward_loss, make_optimizer
from ftbench.training.memory_plan import arm_memory


def bench_size(size: str, batch: int, seq: int, steps: int, layers: int | None,
               device: torch.device, measure_memory: bool = True) -> dict:
    model = {"max_seq_len": max(seq, 256)}
    if layers:
        model["n_layers"] = layers
    cfg = pair_config_from_dict({"size": size, "model": model,
                                 "data": {"seq_len": seq},
                                 "latent": {"kappas_bits": [0.5]},
                                 "run": {"batch_size": batch, "steps": steps + 2}})
    ctx = DistContext(device=device)
    amp = autocast_dtype(cfg, device)
    arms = pair_arms(cfg, cfg.model.vocab_size)[:2]
    state = {}
    for arm in arms:
        m = build_arm_model(arm, cfg, ctx)
        state[arm.name] = (arm, m, make_optimizer(m, cfg))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=g).to(device)

    def step(name, i):
        arm, m, opt = state[name]
        loss = forward_loss(m, arm, tokens, cfg, f"bench/{i}", 0, amp)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name in state:
        step(name, 0)
        step(name, 1)
    times = {name: [] for name in state}
    for i in range(steps):
        for name in state:
            t0 = time.perf_counter()
            step(name, i + 2)
            times[name].append(time.perf_counter() - t0)
    peak = peak_flops(device, amp)
    out = {}
    for arm in arms:
        t = statistics.median(times[arm.name])
        tps = batch * seq / t
        flops = model_cost(arm.model, arm.arch, seq).train_flops_per_token
        planned = arm_memory(arm.model, arm.arch, seq_len=seq, micro_batch=batch,
                             bf16=amp is not None, device_type=device.type)["peak_bytes"]
        out[arm.name] = {"step_s": t, "tokens_per_s": tps, "flops_per_token": flops,
                         "planned_peak": planned,
                         "mfu": flops * tps / peak if peak else None,
                         # Interleaved arms share one process, so each arm's peak is
                         # measured alone in a fresh one (ftbench.doctor.memory).
                         "peak_memory": measure(size, arm.arch, batch, seq, layers=layers)[
                             "peak_bytes"] if measure_memory else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="toy,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=None,
                    help="override the preset's depth (a 1.5B-shaped model with fewer layers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the per-arm peak memory measurement (a subprocess per arm)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__} on {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
          f"batch {args.batch} x {args.seq}, median of {args.steps} interleaved steps")
    print(f"{'size':7s}{'arm':11s}{'step s':>9s}{'tokens/s':>11s}{'MFU':>7s}")
    for size in args.sizes.split(","):
        res = bench_size(size, args.batch, args.seq, args.steps, args.layers, device,
                         not args.no_memory)
        for name, r in res.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
            print(f"{size:7s}{name:11s}{r['step_s']:9.3f}{r['tokens_per_s']:11.0f}{mfu:>7s}")
        b, f = res["baseline"], res["free-k0p5"]
        print(f"{size:7s}Free/baseline time ratio {f['step_s'] / b['step_s']:.3f} measured, "
              f"{f['flops_per_token'] / b['flops_per_token']:.3f} analytic FLOPs; planned peak "
              f"memory ratio {f['planned_peak'] / b['planned_peak']:.3f}"
              + (f", measured {f['peak_memory'] / b['peak_memory']:.3f}"
                 if b["peak_memory"] else ""))


if __name__ == "__main__":
    main()

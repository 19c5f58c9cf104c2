"""Peak memory of one training step with the fused head + cross-entropy and with the
materialised logits, side by side in one run.

Each variant runs in a fresh subprocess (a clean high-water mark; on CPU the resident
high-water mark above the resident size just before the model is built, on CUDA
`max_memory_allocated`), the two variants alternating, `--repeats` times each. The model
is the toy shape with a 32k vocabulary, where the (tokens x V) logits dominate the step;
the default 4 x 2,048 tokens make two chunks of the fused loss.

Usage:
  python benchmarks/bench_loss_memory.py                        # CPU, fp32 (about 1 min)
  python benchmarks/bench_loss_memory.py --batch 16 --seq 4096  # a GPU (bf16 autocast)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

VOCAB = 32768


def one_step(variant: str, batch: int, seq: int) -> dict:
    """Two training steps (the second has AdamW's state) of the baseline; peak bytes."""
    import torch

    from ftbench.doctor.memory import _status, _trim
    from ftbench.model import build_model, get_preset
    from ftbench.objective import mean_cross_entropy

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    cfg = get_preset("toy").replace(vocab_size=VOCAB, max_seq_len=max(seq, 256))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (batch, seq + 1), generator=g).to(device)
    _trim()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    model = build_model(cfg, "baseline", seed=0, device=device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for _ in range(2):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if variant == "fused":
                loss = model(x, targets_BT=y).ce
            else:
                loss = mean_cross_entropy(model(x).logits_BTV, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status("VmHWM") - base
    return {"variant": variant, "peak_bytes": int(peak), "loss": float(loss.detach()),
            "device": device.type}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variant", choices=("fused", "plain"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(one_step(a.variant, a.batch, a.seq)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    peaks: dict[str, list[int]] = {"fused": [], "plain": []}
    losses = {}
    for _ in range(a.repeats):
        for variant in peaks:  # alternating, each in a fresh process
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch",
                                  str(a.batch), "--seq", str(a.seq)], env=env, check=True,
                                 capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[variant].append(r["peak_bytes"])
            losses[variant] = r["loss"]
            device = r["device"]
    fused, plain = (statistics.median(peaks[v]) for v in ("fused", "plain"))
    print(f"one training step of the toy baseline with a {VOCAB:,}-token vocabulary, "
          f"{a.batch} x {a.seq} tokens, {device}:")
    print(f"  materialised logits  peak {plain / 2**20:8.1f} MiB  (runs: "
          f"{', '.join(f'{p / 2**20:.1f}' for p in peaks['plain'])})")
    print(f"  fused head + CE      peak {fused / 2**20:8.1f} MiB  (runs: "
          f"{', '.join(f'{p / 2**20:.1f}' for p in peaks['fused'])})")
    print(f"  fused / materialised {fused / plain:.3f}; second-step loss "
          f"{losses['fused']:.6f} vs {losses['plain']:.6f}")


if __name__ == "__main__":
    main()

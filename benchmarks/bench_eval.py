"""Evaluation speed, same weights side by side in one run, rounds interleaved.

A baseline and a Free model of the "small" shape (V 8192, D 256, 8 layers, H 16; random
weights sharing the decoder init) are built; the baseline is also exported to a
transformers Llama folder. Two request shapes, as lm-eval sends them:
- MMLU-shaped: items x 4 choices sharing a ~500-token context (a 5-shot prompt), each
  continuation 1-3 tokens;
- CSQA-shaped: items x 5 choices sharing a ~60-token context, continuations 1-4 tokens.
Printed, per shape (median over rounds; each round times every contender once, in turn):
- ftbench baseline requests/s / lm-eval HFLM requests/s (target >= 1.5x), and the largest
  log-likelihood difference between them;
- Free at K = 8 draws / baseline at K = 1, same requests, per Z protocol (target <= 5x);
then generation tokens/s of ftbench's KV-cache `generate` against transformers' `generate`
(greedy, same prompts and number of new tokens). Threads are pinned; the load average is
printed before and after, since the machine may be shared.

Needs `accelerate` (lm-eval's HF backend imports it).

Usage: PYTHONPATH=. python benchmarks/bench_eval.py [--items 64] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_items(n_items: int, n_choices: int, ctx_len: int, cont_lens: tuple[int, int], V: int,
               seed: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for _ in range(n_items):
        n_ctx = ctx_len + int(torch.randint(-ctx_len // 10, ctx_len // 10 + 1, (1,), generator=g))
        ctx = torch.randint(1, V, (n_ctx,), generator=g).tolist()
        for _ in range(n_choices):
            n = int(torch.randint(cont_lens[0], cont_lens[1] + 1, (1,), generator=g))
            reqs.append((ctx, torch.randint(1, V, (n,), generator=g).tolist()))
    return reqs


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=64, help="generation: new tokens per prompt")
    ap.add_argument("--gen-ctx", type=int, default=192)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from ftbench.data import synthetic
    from ftbench.data.tokenizer import char_tokenizer
    from ftbench.evaluation.scoring import score_requests
    from ftbench.inference.generation import SamplingConfig, generate
    from ftbench.interop.hf_llama import export_hf
    from ftbench.model import build_model, get_preset
    from ftbench.training.export import save_pretrained

    print(f"torch {torch.__version__}, {args.threads} thread(s); load average {load()}")
    tmp = Path(tempfile.mkdtemp(prefix="ftbench-bench-eval-"))
    cfg = get_preset("small").replace(max_seq_len=1024)
    base = build_model(cfg, "baseline", seed=0).eval()
    free = build_model(cfg, "free", seed=0).eval()
    # Any tokenizer will do for timing: requests are token ids.
    save_pretrained(base.state_dict(), cfg, "baseline", char_tokenizer(synthetic.ALPHABET),
                    tmp / "small")
    hf_dir = export_hf(tmp / "small", tmp / "hf")
    hflm = HFLM(pretrained=str(hf_dir), batch_size=args.batch, device="cpu", dtype="float32")
    V = cfg.vocab_size

    shapes = {"MMLU-shaped (4 choices, ~500-token context, 1-3-token continuations)":
              make_items(args.items, 4, 500, (1, 3), V, 0),
              "CSQA-shaped (5 choices, ~60-token context, 1-4-token continuations)":
              make_items(args.items, 5, 60, (1, 4), V, 1)}
    for title, reqs in shapes.items():
        contenders = {
            "ftbench baseline": lambda r=reqs: score_requests(base, r, batch_size=args.batch),
            "lm-eval HFLM": lambda r=reqs: hflm._loglikelihood_tokens(
                [((None, None), c, t) for c, t in r], disable_tqdm=True),
            "Free K=1 posterior": lambda r=reqs: score_requests(
                free, r, protocols=("posterior",), draws=1, batch_size=args.batch),
            f"Free K={args.draws} posterior": lambda r=reqs: score_requests(
                free, r, protocols=("posterior",), draws=args.draws, batch_size=args.batch),
            f"Free K={args.draws} prior": lambda r=reqs: score_requests(
                free, r, protocols=("prior",), draws=args.draws, batch_size=args.batch),
            f"Free K={args.draws} both protocols": lambda r=reqs: score_requests(
                free, r, protocols=("posterior", "prior"), draws=args.draws,
                batch_size=args.batch),
        }
        for fn in contenders.values():  # warm-up: first kernels, allocator
            fn(reqs[:8])
        times = {name: [] for name in contenders}
        outs = {}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(t) for name, t in times.items()}
        n = len(reqs)
        ours = [s.logp for s in outs["ftbench baseline"]["baseline"]]
        theirs = [lp for lp, _ in outs["lm-eval HFLM"]]
        diff = max(abs(a - b) for a, b in zip(ours, theirs))
        print(f"\n{title}: {args.items} items, {n} requests; median of {args.rounds} "
              f"interleaved rounds; load average {load()}")
        for name in contenders:
            print(f"  {name:28s} {n / med[name]:8.2f} requests/s  "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])} s)")
        def ratio(name: str, ref: str = "ftbench baseline") -> str:
            # Per-round ratios (both timed in the same round), then their median.
            rs = [a / b for a, b in zip(times[name], times[ref])]
            return f"{statistics.median(rs):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in rs)})"
        print(f"  ftbench baseline / lm-eval HFLM, requests/s: "
              f"{ratio('lm-eval HFLM')} (target >= 1.5x); max |dlogp| {diff:.2e}")
        for name in (f"Free K={args.draws} posterior", f"Free K={args.draws} prior",
                     f"Free K={args.draws} both protocols", "Free K=1 posterior"):
            target = (f" (target <= 5x at K={args.draws})" if "both" not in name
                      and "K=1" not in name else "")
            print(f"  {name} / baseline K=1, time: {ratio(name)}{target}")

    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, V, (args.gen_ctx,), generator=g).tolist()
               for _ in range(args.batch)]
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    sampling = SamplingConfig(max_new_tokens=args.new)
    ids = torch.tensor(prompts)

    def hf_generate():
        with torch.no_grad():
            return hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.new, min_new_tokens=args.new,
                                     pad_token_id=0)
    gen = {"ftbench": lambda: generate(base, prompts, sampling),
           "transformers": hf_generate}
    for fn in gen.values():
        fn()
    times = {k: [] for k in gen}
    outs = {}
    for _ in range(args.rounds):
        for name, fn in gen.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    gen_ratio = statistics.median(b / a for a, b in zip(times["ftbench"], times["transformers"]))
    same = sum(row == hf_row[args.gen_ctx:].tolist()
               for row, hf_row in zip(outs["ftbench"].tokens, outs["transformers"]))
    n_new = args.batch * args.new
    print(f"\ngeneration (greedy, {args.batch} x {args.new} new tokens after {args.gen_ctx}): "
          f"ftbench {n_new / med['ftbench']:7.0f} tok/s | transformers "
          f"{n_new / med['transformers']:7.0f} tok/s | ratio {gen_ratio:.2f}x (median of rounds) | "
          f"identical rows {same}/{args.batch}")
    print(f"load average {load()}")


if __name__ == "__main__":
    main()

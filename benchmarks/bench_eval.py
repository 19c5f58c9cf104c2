"""Evaluation speed: ftbench's adapter against the standard Hugging Face paths, same weights.

One baseline (the "small" shape, random weights, or --model-dir) is exported to a
transformers Llama folder; then, side by side in one run:
- log-likelihood scoring tokens/s: FtbenchLM vs lm-eval's HFLM backend on the same
  requests (and the largest difference between their log-likelihoods);
- generation tokens/s: ftbench's KV-cache `generate` vs transformers' `generate` (greedy,
  same prompts, the same number of new tokens).
Needs `accelerate` (lm-eval's HF backend imports it): pip install accelerate.

Usage: python benchmarks/bench_eval.py [--requests 64] [--ctx 192] [--cont 8] [--new 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="an exported baseline (default: a random 'small' one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=192)
    ap.add_argument("--cont", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from ftbench.data import synthetic
    from ftbench.data.tokenizer import char_tokenizer
    from ftbench.evaluation.lm_eval_adapter import FtbenchLM
    from ftbench.inference.generation import SamplingConfig, generate
    from ftbench.interop.hf_llama import export_hf
    from ftbench.model import build_model, get_preset
    from ftbench.training.export import save_pretrained

    tmp = Path(tempfile.mkdtemp(prefix="ftbench-bench-eval-"))
    model_dir = Path(args.model_dir) if args.model_dir else tmp / "small"
    if not args.model_dir:
        cfg = get_preset("small").replace(max_seq_len=512)
        model = build_model(cfg, "baseline", seed=0)
        # Any tokenizer will do for timing: requests are token ids.
        save_pretrained(model.state_dict(), cfg, "baseline", char_tokenizer(synthetic.ALPHABET),
                        model_dir)
    hf_dir = export_hf(model_dir, tmp / "hf")
    ours = FtbenchLM(path=str(model_dir), batch_size=args.batch)
    theirs = HFLM(pretrained=str(hf_dir), batch_size=args.batch, device="cpu", dtype="float32")
    V = ours.model.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    reqs = [((None, None), torch.randint(0, V, (args.ctx,), generator=g).tolist(),
             torch.randint(0, V, (args.cont,), generator=g).tolist())
            for _ in range(args.requests)]
    tokens = args.requests * (args.ctx + args.cont - 1)

    def timed(fn):
        fn()  # warm-up
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    t_ours, r_ours = timed(lambda: ours._loglikelihood_tokens(reqs, disable_tqdm=True))
    t_hf, r_hf = timed(lambda: theirs._loglikelihood_tokens(reqs, disable_tqdm=True))
    diff = max(abs(a[0] - b[0]) for a, b in zip(r_ours, r_hf))
    agree = sum(a[1] == b[1] for a, b in zip(r_ours, r_hf))
    print(f"torch {torch.__version__}, {args.threads} threads; {args.requests} requests of "
          f"{args.ctx}+{args.cont} tokens, batch {args.batch}")
    print(f"log-likelihood: ftbench {tokens / t_ours:8.0f} tok/s | lm-eval HFLM "
          f"{tokens / t_hf:8.0f} tok/s | ratio {t_hf / t_ours:.2f}x | max |dlogp| {diff:.2e} | "
          f"is_greedy agree {agree}/{args.requests}")

    prompts = [torch.randint(0, V, (args.ctx,), generator=g).tolist() for _ in range(args.batch)]
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    cfg = SamplingConfig(max_new_tokens=args.new)
    t_gen, out = timed(lambda: generate(ours.model, prompts, cfg))
    ids = torch.tensor(prompts)

    def hf_generate():
        with torch.no_grad():
            return hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.new, min_new_tokens=args.new,
                                     pad_token_id=0)
    t_hfgen, hf_out = timed(hf_generate)
    same = sum(row == hf_row[args.ctx:].tolist() for row, hf_row in zip(out.tokens, hf_out))
    n_new = args.batch * args.new
    print(f"generation (greedy, {args.batch} x {args.new} new tokens after {args.ctx}): ftbench "
          f"{n_new / t_gen:7.0f} tok/s | transformers {n_new / t_hfgen:7.0f} tok/s | ratio "
          f"{t_hfgen / t_gen:.2f}x | identical rows {same}/{args.batch}")


if __name__ == "__main__":
    main()

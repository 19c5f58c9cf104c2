"""A fixed decode workload, timed the same way for every arm.

A task's own generation time is not comparable across arms: a Free arm generates n rows
per prompt and a baseline one, so their batches hold different numbers of rows, and rows
stop at different steps. This workload has one shape for every arm: `rows` prompts of
`prompt_tokens` tokens, decoded `batch_size` at a time for exactly `new_tokens` steps
(no stop token), greedy. Its time per token is what the report compares.
"""

from __future__ import annotations

import statistics
import time

import torch

from ftbench.inference.generation import SamplingConfig, generate


def workload_shape(max_seq_len: int, batch_size: int) -> dict:
    """The workload for a model of this context: 64-token prompts (fewer in a short
    context), 64 new tokens (at most half the context), two batches."""
    new = max(1, min(64, max_seq_len // 2))
    prompt = max(1, min(64, max_seq_len - new))
    return {"rows": 2 * batch_size, "batch_size": batch_size, "prompt_tokens": prompt,
            "new_tokens": new}


def time_decode_workload(model, shape: dict, *, repeats: int = 3, amp: str | None = "auto",
                         z_protocol: str = "posterior") -> dict:
    """Seconds for the workload (median of `repeats`, after one untimed warm-up batch) and
    generated tokens per second, with the shape; every row runs all its steps."""
    V = model.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, V, (shape["rows"], shape["prompt_tokens"]), generator=g).tolist()
    cfg = SamplingConfig(max_new_tokens=shape["new_tokens"])  # no stop token: full length
    b = shape["batch_size"]
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def run() -> int:
        made = 0
        for s in range(0, len(prompts), b):
            out = generate(model, prompts[s:s + b], cfg, z_protocol=z_protocol, amp=amp,
                           z_generator=torch.Generator().manual_seed(s),
                           token_generator=torch.Generator().manual_seed(s))
            made += sum(len(t) for t in out.tokens)
        sync()
        return made

    generate(model, prompts[:b], SamplingConfig(max_new_tokens=2), z_protocol=z_protocol,
             amp=amp, z_generator=torch.Generator().manual_seed(0))
    times, made = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        made = run()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {**shape, "generated": made, "repeats": repeats, "seconds": seconds,
            "seconds_all": times, "tokens_per_s": made / seconds if seconds > 0 else None}

"""HumanEval+ and MBPP+ through EvalPlus: generate in-process, score out-of-process.

Samples (every completion, raw and sanitised) are kept in
results/<run>/<arm>/<task>.samples.jsonl and each sample's base/plus status in the
results file, so a score can always be traced to the code that earned it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ftbench.data.errors import DataError

DATASETS = {"humanevalplus": ("humaneval", "humanevalplus/HumanEvalPlus.jsonl.gz",
                              "HumanEvalPlus-v0.1.10.jsonl"),
            "mbppplus": ("mbpp", "mbppplus/MbppPlus.jsonl.gz", "MbppPlus-v0.2.0.jsonl")}
# EvalPlus 0.3.1's stop strings for direct completion (evalplus.provider.utility): its
# base list EOS, then the dataset's extra ones.
EOS = ["<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint("]
EXTRA_EOS = {"humaneval": ["\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "],
             "mbpp": ['\n"""', "\nassert"]}
EVALPLUS_MAX_NEW_TOKENS = 768
"""EvalPlus's new-token budget (evalplus.provider.base.DecoderBase)."""


def stop_strings(dataset: str) -> list[str]:
    """The stop strings EvalPlus gives a direct-completion model on this dataset."""
    return EOS + EXTRA_EOS[dataset]


def evalplus_prompt(problem: dict) -> str:
    """The prompt EvalPlus's codegen sends: the task's prompt stripped, one newline after."""
    return problem["prompt"].strip() + "\n"
SCORE_TIMEOUT_S = 3600


def problems_file(task: str, data_dir: Path | None, cache: Path) -> Path:
    """The decompressed problem file (EvalPlus hashes the plain .jsonl). Offline it comes
    from the mirror; online from EvalPlus's own release on GitHub, the same file, so the
    scores and the recorded hash do not depend on the mode."""
    _, rel, name = DATASETS[task]
    out = cache / "evalplus-data" / name
    if out.is_file():
        return out
    if data_dir is None:
        return download_release(release_url(task), out)
    src = data_dir / rel
    if not src.is_file():
        raise DataError(f"the data mirror {data_dir} lacks {rel}")
    _decompress(src, out)
    return out


def release_url(task: str) -> str:
    from evalplus.data.utils import get_dataset_metadata

    name, version = Path(DATASETS[task][2]).stem.split("-")
    url, _ = get_dataset_metadata(name, version, False, False)
    return url


def download_release(url: str, out: Path, timeout: float = 30.0) -> Path:
    import tempfile
    import urllib.request

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        gz = Path(tmp) / "release.jsonl.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(gz, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataError(f"online mode: could not download {url} ({e}). Use a local mirror "
                            "holding humanevalplus/ and mbppplus/ with --data-dir or "
                            "$FTBENCH_DATA_DIR, or check the network.") from None
        _decompress(gz, out)
    return out


def _decompress(src: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    try:
        with gzip.open(src, "rb") as f, open(tmp, "wb") as g:
            shutil.copyfileobj(f, g)
    except (OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{src} is not a readable gzip file ({e})") from None
    tmp.replace(out)


def load_problems(path: Path, limit: int | None) -> list[dict]:
    problems = [json.loads(line) for line in open(path, encoding="utf-8")]
    return problems[:limit] if limit else problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_samples(task: str, problems: Path, samples: Path, out: Path, cache: Path,
                  parallel: int | None = None, timeout_retries: int = 1) -> dict:
    """Scores in a child process (ftbench.evaluation.evalplus_score), relaying its progress
    to stderr. The sandbox folder is made and removed here, so that even a scorer killed at
    the time limit leaves nothing in the temp folder."""
    import tempfile

    from ftbench.evaluation.evalplus_groundtruth import cache_root
    from ftbench.evaluation.evalplus_sandbox import remove_tree

    dataset = DATASETS[task][0]
    workdir = tempfile.mkdtemp(prefix="ftbench-sandbox-")
    cmd = [sys.executable, "-m", "ftbench.evaluation.evalplus_score", "--dataset", dataset,
           "--problems", str(problems.resolve()), "--samples", str(samples.resolve()),
           "--out", str(out.resolve()), "--cache", str(cache.resolve()),
           "--gt-cache", str(cache_root()), "--workdir", workdir,
           "--timeout-retries", str(timeout_retries),
           "--progress", "bar" if sys.stderr.isatty() else "lines"]
    if parallel:
        cmd += ["--parallel", str(parallel)]
    try:
        code, tail = _run_relaying(cmd, SCORE_TIMEOUT_S)
    finally:
        remove_tree(workdir)
    if code is None:
        raise RuntimeError(f"EvalPlus scoring of {samples} took over {SCORE_TIMEOUT_S} s and "
                           f"was stopped; score fewer samples (--limit) or raise --parallel."
                           f"\n{tail}")
    if code != 0:
        raise RuntimeError(f"EvalPlus scoring of {samples} failed (exit code {code}):\n{tail}")
    return json.loads(out.read_text())


def _run_relaying(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Runs cmd, copying its stdout and stderr to our stderr as they come (progress bars
    included); returns (exit code, or None when stopped at the timeout; the last 2000
    characters of its output, for error messages)."""
    import codecs
    import threading
    from collections import deque

    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    tail: deque[bytes] = deque()
    size = [0]

    def relay():
        # Incremental: a character split between two reads is written once, whole.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := os.read(proc.stdout.fileno(), 4096):
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
            tail.append(chunk)
            size[0] += len(chunk)
            while size[0] - len(tail[0]) > 2000:
                size[0] -= len(tail.popleft())

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    reader.join(timeout=5)
    proc.stdout.close()
    return code, b"".join(tail).decode("utf-8", "replace")[-2000:]


def summarise(scored: dict, n_samples: int) -> tuple[dict, dict, dict | None]:
    """Metrics (base and plus pass@k, with stderr over problems), per-problem outcomes and,
    with several samples, the spread of the per-sample pass@1 (one score per sample index:
    for a Free arm at greedy decoding, one Z stream per problem)."""
    from ftbench.evaluation.replicas import spread_stats

    by_task: dict[str, list[tuple[bool, bool]]] = {}
    by_index: dict[int, list[tuple[bool, bool]]] = {}
    for r in scored["results"]:
        base = r["base_status"] == "pass"
        outcome = (base, base and r["plus_status"] == "pass")
        by_task.setdefault(r["task_id"], []).append(outcome)
        by_index.setdefault(int(r.get("index", 0)), []).append(outcome)
    spread = None
    if n_samples > 1:
        spread = {"kind": "z_samples", "n": n_samples, "metrics": {
            f"pass@1,{which}": spread_stats([sum(x[col] for x in v) / len(v)
                                             for _, v in sorted(by_index.items())])
            for which, col in (("base", 0), ("plus", 1))}}
    metrics, per_item = {}, {}
    ks = [k for k in (1, 5, 10, 100) if k <= n_samples]
    for which, col in (("base", 0), ("plus", 1)):
        for k in ks:
            vals = [pass_at_k(len(v), sum(x[col] for x in v), k) for v in by_task.values()]
            mean = sum(vals) / len(vals)
            var = sum((x - mean) ** 2 for x in vals) / max(1, len(vals) - 1)
            metrics[f"pass@{k},{which}"] = {"value": mean, "stderr": math.sqrt(var / len(vals))}
        per_item[f"pass@1,{which}"] = {t: sum(x[col] for x in v) / len(v)
                                       for t, v in by_task.items()}
    return metrics, per_item, spread


def deviations(task: str, *, n_samples: int, arch: str, temperature: float,
               limits: dict | None, sandbox: dict | None) -> list[str]:
    """What this result does differently from a plain EvalPlus 0.3.1 run (codegen with a
    direct-completion model, then evaluate), recorded in the result and the report."""
    out = []
    if task == "humanevalplus":
        out.append("HumanEval/32: EvalPlus's special oracle fails every solution (the "
                   "canonical one too); ftbench checks the same property (|poly(x)| <= atol) "
                   "in the same sandbox")
    out.append("memory: each sample may map up to 12 GB of new memory (EvalPlus: 4 GiB, "
               "which fails the canonical Mbpp/255), fewer samples at once to fit the machine")
    scale = ((sandbox or {}).get("time_limits") or {}).get("rescore_scale")
    if scale:
        out.append(f"time limits: a sample that timed out or failed only by a per-input "
                   f"time limit is rescored alone at {scale:g}x the limits, so a correct "
                   f"but slow solution can pass where EvalPlus fails it")
    if limits and (limits.get("capped") or limits.get("context_truncated")):
        out.append(f"context: the model's {limits['max_seq_len']} tokens allow "
                   f"{limits['cap']} new tokens (EvalPlus: {EVALPLUS_MAX_NEW_TOKENS}); "
                   f"{limits['context_truncated']} prompts lost their first tokens")
    if arch == "free":
        out.append(f"samples: n={n_samples} per prompt, each with its own Z"
                   + (", greedy tokens (pass@k here is over Z, not EvalPlus's "
                      "temperature-sampled pass@k)" if temperature == 0 else
                      f", temperature {temperature:g}"))
    elif n_samples > 1:
        out.append(f"samples: n={n_samples} per prompt at temperature {temperature:g}")
    return out


def write_samples(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def oracle_samples(problems: list[dict]) -> list[dict]:
    return [{"task_id": p["task_id"], "index": 0, "solution": p["prompt"] + p["canonical_solution"]}
            for p in problems]


def generate_samples(lm, task: str, problems: list[dict], n_samples: int, temperature: float,
                     max_new_tokens: int, batch_size: int, seed: int) -> list[dict] | None:
    """Direct completion of each prompt as EvalPlus's codegen makes it: its prompt
    (`evalplus_prompt`), its stop strings (`stop_strings`), its sanitiser, whose result is
    kept even when empty. What still differs from EvalPlus is listed by `deviations`.

    Sample i of a prompt draws its Z (and, at a temperature, its tokens) from streams
    seeded by (seed, i, prompt): nothing depends on the batching, so under torchrun (rank r
    generates batches r, r + W, ...) the samples are the same for any number of ranks.
    Rank 0 returns every row in order, the other ranks None."""
    import torch
    from evalplus.sanitize import sanitize
    from tqdm import tqdm

    from ftbench.evaluation.scoring import context_key, stream_generator
    from ftbench.inference.generation import SamplingConfig, generate

    dataset = DATASETS[task][0]
    stops = stop_strings(dataset)
    tok, model = lm.tokenizer, lm.model
    rank, world = getattr(lm, "rank", 0), getattr(lm, "world_size", 1)
    jobs = [(p, i) for p in problems for i in range(n_samples)]
    rows = []
    budget = max(1, min(max_new_tokens, model.cfg.max_seq_len // 2))
    cfg = SamplingConfig(max_new_tokens=budget, temperature=temperature,
                         top_p=0.95 if temperature > 0 else 1.0, stop_token_ids=(tok.eot_id,))
    starts = list(range(0, len(jobs), batch_size))[rank::world]
    # One untimed call first: one-time costs (first kernels, allocator) are not the model's
    # speed, and would land on whichever arm is evaluated first.
    generate(model, [[tok.eot_id]], dataclasses.replace(cfg, max_new_tokens=2),
             pad_id=tok.pad_id, z_protocol=lm.z.protocol,
             z_generator=torch.Generator().manual_seed(0),
             token_generator=torch.Generator().manual_seed(0), amp=lm.amp)
    for s in tqdm(starts, desc=f"{task} generation", disable=rank != 0):
        chunk = jobs[s:s + batch_size]
        prompts = [tok.encode(evalplus_prompt(p))[-(model.cfg.max_seq_len - budget):]
                   or [tok.eot_id] for p, _ in chunk]
        keys = [context_key(ids) for ids in prompts]
        t0 = time.perf_counter()
        out = generate(model, prompts, cfg, pad_id=tok.pad_id, z_protocol=lm.z.protocol,
                       z_streams=[stream_generator(seed, k, i, "gen-z")
                                  for k, (_, i) in zip(keys, chunk)],
                       token_streams=[stream_generator(seed, k, i, "gen-tokens")
                                      for k, (_, i) in zip(keys, chunk)],
                       stop_strings=stops, decode=tok.decode, amp=lm.amp)
        # Only generate() is timed (not tokenising, sanitising or imports); each row
        # carries its share of its batch's time.
        share = (time.perf_counter() - t0) / len(chunk)
        for j, ((p, i), ids) in enumerate(zip(chunk, out.tokens)):
            # Every token the row generated, up to its stop (token or string) included.
            n_new = len(ids)
            if ids and ids[-1] == tok.eot_id:
                ids = ids[:-1]
            raw = tok.decode(ids)
            completion = raw
            for stop in stops:
                completion = completion.split(stop)[0]
            code = evalplus_prompt(p) + completion
            # As EvalPlus's codegen: the sanitised program, even when sanitising leaves
            # nothing (the sample then fails).
            rows.append({"task_id": p["task_id"], "index": i, "raw": raw,
                         "completion": completion, "n_new_tokens": n_new,
                         "gen_seconds": share,
                         "solution": sanitize(code, p["entry_point"]), "_job": s + j})
    if world > 1:
        gathered = lm.gather_object(rows, dst=0)
        if rank != 0:
            return None
        rows = [r for part in gathered for r in part]
    rows.sort(key=lambda r: r.pop("_job"))
    return rows

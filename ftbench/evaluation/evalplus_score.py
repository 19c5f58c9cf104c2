"""Score code samples with EvalPlus, in its sandbox, in a process of its own.

Run by `ftbench.evaluation.evalplus_runner` as
    python -m ftbench.evaluation.evalplus_score --dataset humaneval --problems P.jsonl
        --samples S.jsonl --out O.json --cache DIR [--parallel N] [--base-only]
Generated code never runs in the process that holds the model. Each sample runs in its
own process under EvalPlus's reliability guard (memory, stack and time limits; fork,
kill, subprocess, file removal and chdir disabled) in a temporary working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=("humaneval", "mbpp"), required=True)
    ap.add_argument("--problems", required=True, help="decompressed EvalPlus .jsonl")
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True, help="where EvalPlus caches ground truth")
    ap.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--memory-bytes", type=int, default=12 * 10**9)
    ap.add_argument("--timeout-retries", type=int, default=1)
    args = ap.parse_args()
    # The sandbox changes directory below: every path must survive that.
    for name in ("problems", "samples", "out", "cache"):
        setattr(args, name, os.path.abspath(getattr(args, name)))

    # Both must be set before evalplus is imported: it reads them at import time.
    os.environ["HUMANEVAL_OVERRIDE_PATH" if args.dataset == "humaneval"
               else "MBPP_OVERRIDE_PATH"] = os.path.abspath(args.problems)
    os.environ["XDG_CACHE_HOME"] = os.path.abspath(args.cache)
    os.environ.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # set, it breaks every check
    # EvalPlus's 4 GiB address-space cap is below what one canonical MBPP+ solution needs
    # (Mbpp/255's largest plus input); 12 GB passes it and still stops memory bombs.
    os.environ.setdefault("EVALPLUS_MAX_MEMORY_BYTES", str(args.memory_bytes))
    from evalplus.data import (get_human_eval_plus, get_human_eval_plus_hash, get_mbpp_plus,
                               get_mbpp_plus_hash)
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.eval import TIMEOUT
    from evalplus.evaluate import check_correctness, get_groundtruth

    if args.dataset == "humaneval":
        problems, dataset_hash, not_none = get_human_eval_plus(), get_human_eval_plus_hash(), []
    else:
        problems, dataset_hash = get_mbpp_plus(), get_mbpp_plus_hash()
        not_none = MBPP_OUTPUT_NOT_NONE_TASKS
    samples = [json.loads(line) for line in open(args.samples, encoding="utf-8")]
    wanted = {s["task_id"] for s in samples}
    unknown = wanted - set(problems)
    if unknown:
        sys.exit(f"samples for unknown tasks: {sorted(unknown)[:5]}")
    subset = {k: v for k, v in problems.items() if k in wanted}
    # Ground truth is computed once per dataset file and cached (keyed by its md5).
    expected = {k: v for k, v in get_groundtruth(problems, dataset_hash, not_none).items()
                if k in wanted}
    workdir = tempfile.mkdtemp(prefix="ftbench-sandbox-")
    os.chdir(workdir)  # whatever a sample writes lands here
    results = [None] * len(samples)
    # Workers are forked: they inherit this state (problems, expected outputs, samples).
    _STATE.update(dataset=args.dataset, samples=samples, problems=subset, expected=expected,
                  check_correctness=check_correctness)
    check = _check
    with ProcessPoolExecutor(max_workers=args.parallel, mp_context=_FORK) as pool:
        futures = {pool.submit(check, i): i for i in range(len(samples))}
        for fut in as_completed(futures):
            results[futures[fut]] = _record(samples[futures[fut]], fut)
    # A timeout on a loaded machine is not a verdict: time-outs get one more, serial try.
    retried = [i for i, r in enumerate(results)
               if TIMEOUT in (r["base_status"], r["plus_status"])] if args.timeout_retries else []
    for i in retried:
        with ProcessPoolExecutor(max_workers=1, mp_context=_FORK) as pool:
            results[i] = _record(samples[i], pool.submit(check, i))
        results[i]["retried"] = True
    out = {"dataset": args.dataset, "evalplus_hash": dataset_hash, "results": results,
           "sandbox": {"memory_bytes": int(os.environ["EVALPLUS_MAX_MEMORY_BYTES"]),
                       "timeout_retries": len(retried)}}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, args.out)


_STATE: dict = {}
_FORK = multiprocessing.get_context("fork")


def _check(i: int) -> dict:
    st = _STATE
    sample = st["samples"][i]
    problem, expected = st["problems"][sample["task_id"]], st["expected"][sample["task_id"]]
    if st["dataset"] == "humaneval" and problem["entry_point"] == "find_zero":
        return check_find_zero(problem, sample["solution"], expected)
    r = st["check_correctness"](st["dataset"], i, problem, sample["solution"], expected)
    return {"base": r["base"][0], "plus": r["plus"][0]}


def _record(sample: dict, fut) -> dict:
    try:
        r = fut.result()
        base, plus = r["base"], r["plus"]
    except Exception as e:  # a sample that breaks the checker fails; the run goes on
        base = plus = f"error: {type(e).__name__}"
    return {"task_id": sample["task_id"], "index": sample.get("index", 0),
            "base_status": base, "plus_status": plus}


# EvalPlus 0.3.1's special oracle for HumanEval/32 (find_zero) `continue`s past the line
# that records a passed input, so every solution, the canonical one included, is scored as
# failing. We check the same property (|poly(xs, find_zero(xs))| <= atol) through the same
# sandbox by appending a checker function that returns True when it holds.
_FIND_ZERO_CHECK = """

def _ftbench_find_zero_ok(xs):
    x = find_zero(xs)
    return abs(sum(c * x ** i for i, c in enumerate(xs))) <= {atol!r}
"""


def check_find_zero(problem: dict, solution: str, expected: dict) -> dict:
    from evalplus.eval import untrusted_check

    code = solution + _FIND_ZERO_CHECK.format(atol=problem["atol"])
    out = {}
    for which in ("base", "plus"):
        inputs = problem[f"{which}_input"]
        out[which] = untrusted_check("humaneval", code, inputs, "_ftbench_find_zero_ok",
                                     [True] * len(inputs), 0, expected[f"{which}_time"])[0]
    return out


if __name__ == "__main__":
    main()

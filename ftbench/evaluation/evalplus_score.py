"""Score code samples with EvalPlus, in its sandbox, in a process of its own.

Run by `ftbench.evaluation.evalplus_runner` as
    python -m ftbench.evaluation.evalplus_score --dataset humaneval --problems P.jsonl
        --samples S.jsonl --out O.json --cache DIR [--gt-cache DIR] [--workdir DIR]
        [--parallel N] [--timeout-retries 0|1] [--progress bar|lines|none]
Generated code never runs in the process that holds the model. Each sample runs in its
own process under EvalPlus's reliability guard (memory, stack and time limits; fork,
kill, subprocess, file removal and chdir disabled) in a temporary working directory.

A verdict must not depend on how busy the machine is. EvalPlus gives each input
max(1 s, 4 x ground-truth time) of wall-clock time and scores an input that runs over it
"fail", like a wrong answer. So:
- samples run in processes forked from pool workers that hold one task's data at a time,
  frozen (gc.freeze): a sample never walks the ground truth in a garbage-collector pass
  (about 1 s for MBPP+'s 1.8 GB of objects, enough to fail Mbpp/630 under load), and the
  fork is cheap; the scorer, which holds every task, freezes its own objects too before it
  forks samples to rescore;
- a sample that timed out, or failed while one of its per-input time limits fired, is
  rescored once, serially, with the garbage collector off and the limits scaled up; the
  second verdict is final and the output records what was rescored and why.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ftbench.evaluation import evalplus_groundtruth as groundtruth
from ftbench.evaluation.evalplus_sandbox import (Progress, TimeLimitProbe, machine_memory,
                                                 memory_plan, sandbox_folder, say)

# EvalPlus's defaults (evalplus.config): max(1 s, 4 x ground-truth time) per input.
MIN_TIME_LIMIT_S = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
# The rescoring pass runs alone, with GC off; twice the limits absorb the slowdown of a
# core shared with two busy processes (1.5x) and stay far below a slow algorithm's cost.
RESCORE_LIMIT_SCALE = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=("humaneval", "mbpp"), required=True)
    ap.add_argument("--problems", required=True, help="decompressed EvalPlus .jsonl")
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True, help="EvalPlus's own cache (XDG_CACHE_HOME)")
    ap.add_argument("--gt-cache", default=None,
                    help=f"ground-truth cache; default ${groundtruth.CACHE_ENV}, else "
                         "$XDG_CACHE_HOME/ftbench/evalplus or ~/.cache/ftbench/evalplus")
    ap.add_argument("--workdir", default=None,
                    help="sandbox folder owned by the caller (default: a fresh one, removed)")
    ap.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--memory-bytes", type=int, default=None,
                    help="most new memory one sample may map (default 12 GB, less when "
                         "the machine's available memory split between samples is less)")
    ap.add_argument("--timeout-retries", type=int, default=1,
                    help="0: keep first verdicts; 1: rescore samples that timed out or "
                         "failed by a per-input time limit")
    ap.add_argument("--rescore-limit-scale", type=float, default=RESCORE_LIMIT_SCALE)
    ap.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto")
    ap.add_argument("--groundtruth-only", action="store_true",
                    help="compute and cache the samples' tasks' ground truth, score nothing "
                         "(--out is not written): e.g. on an idle machine before scoring")
    args = ap.parse_args(argv)
    # The sandbox changes directory below: every path must survive that.
    for name in ("problems", "samples", "out", "cache", "workdir"):
        if getattr(args, name) is not None:
            setattr(args, name, os.path.abspath(getattr(args, name)))
    # Resolved before XDG_CACHE_HOME is repointed below.
    args.gt_cache = os.path.abspath(args.gt_cache) if args.gt_cache else str(
        groundtruth.cache_root())
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # Both must be set before evalplus is imported: it reads them at import time.
    os.environ["HUMANEVAL_OVERRIDE_PATH" if args.dataset == "humaneval"
               else "MBPP_OVERRIDE_PATH"] = args.problems
    os.environ["XDG_CACHE_HOME"] = args.cache
    os.environ.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # set, it breaks every check
    with sandbox_folder(args.workdir):
        out = score(args)
    if out is None:
        return
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, args.out)


def score(args: argparse.Namespace) -> dict | None:
    problems, dataset_hash, not_none = load_dataset(args.dataset)
    samples = [json.loads(line) for line in open(args.samples, encoding="utf-8")]
    wanted = sorted({s["task_id"] for s in samples})
    unknown = set(wanted) - set(problems)
    if unknown:
        sys.exit(f"samples for tasks that are not in {args.problems}: {sorted(unknown)[:5]}; "
                 "were they generated from another dataset version?")
    folder = groundtruth.dataset_folder(Path(args.gt_cache), args.dataset, dataset_hash)
    expected = groundtruth.load_groundtruth(problems, wanted, folder, not_none, log=say)
    if args.groundtruth_only:
        return None
    _STATE.update(samples=samples, not_none=not_none,
                  problems={k: problems[k] for k in wanted}, expected=expected)
    del problems
    plan = sample_memory(args)
    prepare_sample_forks(args.dataset)  # this scorer forks the samples it rescores
    # Everything the scorer holds now (ground truth included) leaves the collector's view:
    # forked workers and samples never traverse it, nor copy its pages by doing so.
    gc.freeze()
    checks = first_pass(len(samples), plan, args)
    rescored = rescore(checks, args) if args.timeout_retries else {}
    results = [_record(samples[i], c) for i, c in enumerate(checks)]
    return {"dataset": args.dataset, "evalplus_hash": dataset_hash, "results": results,
            "sandbox": sandbox_record(plan, results, rescored, args)}


def load_dataset(dataset: str) -> tuple[dict, str, list]:
    from evalplus.data import (get_human_eval_plus, get_human_eval_plus_hash, get_mbpp_plus,
                               get_mbpp_plus_hash)
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS

    if dataset == "humaneval":
        return get_human_eval_plus(), get_human_eval_plus_hash(), []
    return get_mbpp_plus(), get_mbpp_plus_hash(), MBPP_OUTPUT_NOT_NONE_TASKS


def sample_memory(args: argparse.Namespace) -> dict:
    """Sets EvalPlus's per-process cap (read in each sample's process) from the plan."""
    available, inherited = machine_memory()
    kwargs = {} if args.memory_bytes is None else {"sample_max": args.memory_bytes}
    plan = memory_plan(args.parallel, available, inherited, **kwargs)
    if "EVALPLUS_MAX_MEMORY_BYTES" in os.environ:  # the user's explicit choice wins
        plan["memory_bytes"] = int(os.environ["EVALPLUS_MAX_MEMORY_BYTES"])
        plan["from_env"] = "EVALPLUS_MAX_MEMORY_BYTES"
    os.environ["EVALPLUS_MAX_MEMORY_BYTES"] = str(plan["memory_bytes"])
    if plan["parallel"] < plan["requested_parallel"]:
        say(f"EvalPlus: {plan['parallel']} samples at a time, not {args.parallel}: "
            f"{plan['available_bytes'] / 2**30:.1f} GiB available would leave each less "
            "than the memory correct MBPP+ solutions need")
    return plan


def first_pass(n: int, plan: dict, args: argparse.Namespace) -> list[dict]:
    """Every sample's first verdict, a task at a time in a pool of `plan["parallel"]` workers.

    The workers are started fresh (spawn), not forked from this scorer, and are sent one
    task's inputs and expected outputs at a time. EvalPlus forks a process per sample and
    split; forked from the scorer, each fork copied the page tables of the whole ground
    truth (1.8 GB of objects for MBPP+), about 0.1 s apiece, more than running a typical
    canonical solution. From a worker holding one task it takes milliseconds, and a
    garbage-collector pass in the sample has little to walk."""
    checks: list[dict | None] = [None] * n
    by_task: dict[str, list[int]] = {}
    for i, sample in enumerate(_STATE["samples"]):
        by_task.setdefault(sample["task_id"], []).append(i)
    share = None if plan.get("from_env") else plan["sample_bytes"]
    progress = Progress(n, f"EvalPlus {args.dataset}", args.progress)
    try:
        with ProcessPoolExecutor(max_workers=plan["parallel"], mp_context=_SPAWN,
                                 initializer=prepare_sample_forks,
                                 initargs=(args.dataset,)) as pool:
            futures = {pool.submit(_check_task, _task_payload(task_id, indices), share): indices
                       for task_id, indices in by_task.items()}
            for fut in as_completed(futures):
                indices = futures[fut]
                try:
                    got = fut.result()
                except Exception as e:  # a worker lost: its task's samples fail, the run goes on
                    got = {i: _error(e) for i in indices}
                for i in indices:
                    checks[i] = got[i]
                progress.update(len(indices))
    finally:
        progress.close()
    return checks


def _task_payload(task_id: str, indices: list[int]) -> dict:
    """What a worker needs to check one task's samples."""
    problem = _STATE["problems"][task_id]
    return {"problem": {k: problem[k] for k in PROBLEM_FIELDS},
            "expected": _STATE["expected"][task_id],
            "samples": [(i, _STATE["samples"][i]["solution"]) for i in indices]}


def prepare_sample_forks(dataset: str) -> None:
    """Set up a process that forks EvalPlus's sample processes: the scorer (rescoring) and
    each pool worker. The samples must be forked, not spawned (a spawned worker's default,
    and Python 3.14's), so that they inherit the time-limit probe and the frozen task."""
    multiprocessing.set_start_method("fork", force=True)
    _STATE["dataset"] = dataset
    probe = TimeLimitProbe()
    probe.install()
    _STATE["probe"] = probe


def _check_task(task: dict, share: int | None) -> dict[int, dict]:
    """In a pool worker: the verdicts of one task's samples, {sample index: check}."""
    if share is not None:
        # RLIMIT_AS counts the address space a sample's process starts with: this worker's.
        os.environ["EVALPLUS_MAX_MEMORY_BYTES"] = str(machine_memory()[1] + share)
    gc.collect()
    gc.freeze()  # the task's inputs and outputs stay out of the samples' collector passes
    try:
        return {i: _outcome_of(lambda: _check_solution(task["problem"], task["expected"],
                                                       solution))
                for i, solution in task["samples"]}
    finally:
        gc.unfreeze()


def rescore(checks: list[dict], args: argparse.Namespace) -> dict[int, str]:
    """Rescores, one at a time in this process, each sample whose failure may be the
    machine's doing; returns {sample: why}.

    The limits are taken from the ground-truth times as recorded or as re-measured now
    (the canonical solution run again, here, GC off), whichever is longer, then scaled:
    a sample is compared with the reference solution on the machine as it is now, not
    as it was when the ground truth was cached."""
    why = {i: r for i, c in enumerate(checks) if (r := rescore_reason(c))}
    if not why:
        return why
    say(f"EvalPlus {args.dataset}: rescoring {len(why)} samples that timed out or failed by "
        f"a time limit, one at a time, GC off, limits x{args.rescore_limit_scale:g}")
    refs: dict[str, dict] = {}
    gc.disable()  # inherited by each sample's process
    try:
        for i in sorted(why):
            task_id = _STATE["samples"][i]["task_id"]
            if task_id not in refs:
                refs[task_id] = reference_times_now(task_id)
            first = {k: checks[i][k] for k in ("base", "plus")}
            checks[i] = _outcome_of(lambda: _check(i, args.rescore_limit_scale, refs[task_id]))
            checks[i]["rescored"] = {"reason": why[i], "first": first}
    finally:
        gc.enable()
    return why


def reference_times_now(task_id: str) -> dict[str, list[float]]:
    expected = _STATE["expected"][task_id]
    now = groundtruth.compute_task(_STATE["problems"][task_id], _STATE["not_none"])
    return {w: [max(a, b) for a, b in zip(expected[f"{w}_time"], now[f"{w}_time"])]
            for w in ("base", "plus")}


def rescore_reason(check: dict) -> str | None:
    from evalplus.eval import FAIL, TIMEOUT

    if TIMEOUT in (check["base"], check["plus"]):
        return "timeout"
    if any(check[w] == FAIL and check.get(f"{w}_time_limit") for w in ("base", "plus")):
        return "time_limit"
    return None


def sandbox_record(plan: dict, results: list[dict], rescored: dict[int, str],
                   args: argparse.Namespace) -> dict:
    reasons = sorted(set(rescored.values()))
    changed = sum(1 for r in results
                  if "rescored" in r and r["rescored"]["first"] != [r["base_status"],
                                                                    r["plus_status"]])
    return {**plan,
            "time_limits": {"min_s": MIN_TIME_LIMIT_S, "ground_truth_factor":
                            GT_TIME_LIMIT_FACTOR, "rescore_scale": args.rescore_limit_scale,
                            "rescore_reference": "max(cached, re-timed now) ground truth"},
            "gc": "frozen before forking samples; off while rescoring",
            # memory_bytes is the rescoring pass's cap (samples forked from this scorer);
            # first-pass samples fork from a worker holding one task, and get its size.
            "first_pass_memory_bytes": "memory_bytes" if plan.get("from_env") else
                                       "pool worker's address space at the task + sample_bytes",
            "rescored": {r: sum(1 for v in rescored.values() if v == r) for r in reasons},
            "rescored_total": len(rescored), "rescored_changed": changed,
            # Kept for results written before time-limit failures were rescored too.
            "timeout_retries": sum(1 for v in rescored.values() if v == "timeout")}


_STATE: dict = {}
_SPAWN = multiprocessing.get_context("spawn")
# The fields of a problem that checking reads (the prompt and canonical solution are not).
PROBLEM_FIELDS = ("entry_point", "atol", "base_input", "plus_input")


def _check(i: int, limit_scale: float = 1.0, ref_times: dict | None = None) -> dict:
    """Base and plus verdicts of sample i (in this scorer, which holds every task)."""
    st = _STATE
    sample = st["samples"][i]
    return _check_solution(st["problems"][sample["task_id"]], st["expected"][sample["task_id"]],
                           sample["solution"], limit_scale, ref_times)


def _check_solution(problem: dict, expected: dict, solution: str, limit_scale: float = 1.0,
                    ref_times: dict | None = None) -> dict:
    """Base and plus verdicts of one solution, each with whether a per-input time limit
    fired. ref_times: the reference times limits derive from, if not the cached ground
    truth's.

    fast_check stops a split at its first failing input, as `evalplus.evaluate` does by
    default: the verdict is the same (one failure fails the split), and a wrong or
    looping sample no longer spends a second on each of up to 1,000 plus inputs."""
    from evalplus.eval import untrusted_check

    st = _STATE
    code, entry, outputs = solution, problem["entry_point"], None
    atol = problem["atol"]
    if st["dataset"] == "humaneval" and entry == "find_zero":
        code, entry, outputs = find_zero_check(problem, code)
        atol = 0  # the checker returns a bool; its own tolerance is atol
    out = {}
    for which in ("base", "plus"):
        inputs = problem[f"{which}_input"]
        ref = ref_times[which] if ref_times else expected[f"{which}_time"]
        flag = st["probe"].arm()
        out[which] = untrusted_check(
            st["dataset"], code, inputs, entry,
            outputs(inputs) if outputs else expected[which], atol,
            ref, fast_check=True, min_time_limit=MIN_TIME_LIMIT_S * limit_scale,
            gt_time_limit_factor=GT_TIME_LIMIT_FACTOR * limit_scale)[0]
        out[f"{which}_time_limit"] = bool(flag.value)
    return out


def _outcome(fut) -> dict:
    return _outcome_of(fut.result)


def _outcome_of(get) -> dict:
    try:
        return get()
    except Exception as e:  # a sample that breaks the checker fails; the run goes on
        return _error(e)


def _error(e: BaseException) -> dict:
    return {"base": f"error: {type(e).__name__}", "plus": f"error: {type(e).__name__}"}


def _record(sample: dict, check: dict) -> dict:
    row = {"task_id": sample["task_id"], "index": sample.get("index", 0),
           "base_status": check["base"], "plus_status": check["plus"]}
    if "rescored" in check:
        first = check["rescored"]["first"]
        row["rescored"] = {"reason": check["rescored"]["reason"],
                           "first": [first["base"], first["plus"]]}
    return row


# EvalPlus 0.3.1's special oracle for HumanEval/32 (find_zero) `continue`s past the line
# that records a passed input, so every solution, the canonical one included, is scored as
# failing. We check the same property (|poly(xs, find_zero(xs))| <= atol) through the same
# sandbox by appending a checker function that returns True when it holds.
_FIND_ZERO_CHECK = """

def _ftbench_find_zero_ok(xs):
    x = find_zero(xs)
    return abs(sum(c * x ** i for i, c in enumerate(xs))) <= {atol!r}
"""


def find_zero_check(problem: dict, solution: str):
    code = solution + _FIND_ZERO_CHECK.format(atol=problem["atol"])
    return code, "_ftbench_find_zero_ok", lambda inputs: [True] * len(inputs)


if __name__ == "__main__":
    main()

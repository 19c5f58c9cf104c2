"""`ftbench eval`: every requested task for every model folder, resumable, with results
files in the documented schema."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ftbench.data.mirror import go_offline, resolve_data_dir
from ftbench.evaluation.lm_eval_tasks import (LM_EVAL_TASKS, BuiltTasks, build_task_dir,
                                             data_fingerprint)
from ftbench.evaluation.results import (SCHEMA_VERSION, ResultsError, file_sha256, git_state,
                                        library_versions, now_iso, read_result, training_point,
                                        write_result)
from ftbench.evaluation.scoring import FREE_Z_DRAWS
from ftbench.training.distributed import DistContext, barrier
from ftbench.training.hardware import load_average

T = TypeVar("T")

SUITES = {"code": ("humanevalplus", "mbppplus"), "math": ("gsm8k",),
          "qa": ("mmlu", "commonsense_qa")}
ALL_TASKS = ("humanevalplus", "mbppplus", *LM_EVAL_TASKS)


class EvalError(RuntimeError):
    pass


# The protocol defaults for Free arms (docs/evaluation.md, "How Free models are scored").
FREE_Z_SAMPLES = 5
LL_ESTIMATOR = ("log-mean-exp over K Z draws of p(continuation | context, Z): estimates "
                "log E_Z p, biased low (Jensen), less so as K grows; draws shared by an "
                "item's choices")
GEN_ESTIMATOR = ("mean over n samples per prompt, each with its own Z stream; stderr across "
                 "samples in 'spread'; unbiased pass@k")


@dataclass(frozen=True)
class EvalSettings:
    limit: int | None = None
    z_protocol: str = "posterior"
    """Free arms: the headline protocol (the main table)."""
    compare_protocols: bool = True
    """Free arms, log-likelihood tasks: also score the other protocol, from the same pass."""
    z_draws: int | None = None
    """Free arms: Z draws per log-likelihood item (None: FREE_Z_DRAWS)."""
    seed: int = 0
    """Z draws and token sampling only; few-shot examples follow `fewshot_seed`."""
    fewshot_seed: int = 0
    batch_size: int = 8
    max_gen_toks: int = 256
    n_samples: int | None = None
    """Generative tasks: samples per prompt (None: FREE_Z_SAMPLES for Free arms, 1 for
    baselines, whose greedy samples would all be the same)."""
    temperature: float = 0.0
    """0: greedy tokens (Free samples then differ only by Z)."""
    sandbox_parallel: int | None = None
    verify_weights: bool = True
    """Check model.safetensors against the sha256 recorded at export when loading."""

    def draws(self, arch: str) -> int:
        return (self.z_draws or FREE_Z_DRAWS) if arch == "free" else 1

    def samples(self, arch: str) -> int:
        if arch == "free":
            return self.n_samples or FREE_Z_SAMPLES
        return (self.n_samples or 1) if self.temperature > 0 else 1

    def protocols(self) -> tuple[str, ...]:
        other = [p for p in ("posterior", "prior") if p != self.z_protocol]
        return (self.z_protocol, *other) if self.compare_protocols else (self.z_protocol,)

    def token_sampling(self) -> str:
        return "greedy" if self.temperature == 0 else f"temperature {self.temperature}"


# The metric a task's summary line shows (the report's headline), first one present.
HEADLINE_METRICS = ("pass@1,plus", "exact_match,strict-match", "acc,none")


@contextmanager
def third_party_output(verbose: bool) -> Iterator[None]:
    """Unless verbose: no `datasets` split bars, no lm-eval per-subtask bars ("building
    contexts", "Tokenizing inputs": one per MMLU subject and pass) and no lm-eval warnings
    below ERROR (57 "Overwriting default num_fewshot" lines per MMLU pass). The adapter's
    own bar (one per task) and errors stay. Everything is restored on exit."""
    if verbose:
        yield
        return
    import logging

    import datasets.utils.logging as ds_logging
    import lm_eval.api.model
    import lm_eval.api.task
    from tqdm import tqdm

    def silent_tqdm(*args, **kwargs):
        kwargs["disable"] = True  # callers pass disable=False explicitly
        return tqdm(*args, **kwargs)

    patched = [(m, m.tqdm) for m in (lm_eval.api.task, lm_eval.api.model)
               if getattr(m, "tqdm", None) is tqdm]
    loggers = [logging.getLogger(name) for name in ("lm_eval", "datasets")]
    levels = [lg.level for lg in loggers]
    bars = ds_logging.is_progress_bar_enabled()
    try:
        for module, _ in patched:
            module.tqdm = silent_tqdm
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        ds_logging.disable_progress_bar()
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def summary_line(label: str, body: dict, wall_s: float, out: Path) -> str:
    """`<run>/<arm>/<task>: <metric> <value> ± <se> (n=<items>, <time>) -> <file>`, with
    the headline metric (the first of HEADLINE_METRICS present, else the first top-level
    metric)."""
    top = [k for k in body["metrics"] if "/" not in k] or list(body["metrics"])
    name = next((m for m in HEADLINE_METRICS if m in top), top[0] if top else None)
    if name is None:
        return f"{label}: no metrics ({_duration(wall_s)}) -> {out}"
    m = body["metrics"][name]
    se = f" ± {m['stderr']:.4f}" if m.get("stderr") is not None else ""
    return (f"{label}: {name} {m['value']:.4f}{se} (n={body.get('n_items', '?')}, "
            f"{_duration(wall_s)}) -> {out}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def expand_suites(spec: str) -> list[str]:
    """'code,math,qa' or task names, in a stable order without repeats."""
    tasks: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in SUITES:
            tasks += SUITES[part]
        elif part in ALL_TASKS:
            tasks.append(part)
        else:
            raise EvalError(f"--suite: {part!r} is neither a suite ({', '.join(SUITES)}) nor a "
                            f"task ({', '.join(ALL_TASKS)})")
    return list(dict.fromkeys(tasks))


def suite_of(task: str) -> str:
    return next(s for s, ts in SUITES.items() if task in ts) if any(
        task in ts for ts in SUITES.values()) else LM_EVAL_TASKS[task].suite


def model_record(model_dir: Path | None) -> dict:
    if model_dir is None:
        return {"path": None, "run": "oracle", "arm": "oracle", "arch": "oracle",
                "config_sha256": None, "weights_sha256": None}
    import json

    meta = json.loads((model_dir / "config.json").read_text())
    record = {"path": str(model_dir), "run": model_dir.parent.name, "arm": model_dir.name,
              "arch": meta["arch"], "config_sha256": file_sha256(model_dir / "config.json"),
              "weights_sha256": file_sha256(model_dir / "model.safetensors")}
    return {**record, **training_point(model_dir, meta)}


def _same_settings(old: dict, new: dict) -> bool:
    keys = ("limit", "protocol", "seed", "fewshot_seed", "data")
    return all(old.get(k) == new.get(k) for k in keys) and \
        old["model"].get("weights_sha256") == new["model"].get("weights_sha256")


@contextmanager
def without_lm_eval_environment_dump() -> Iterator[None]:
    """lm-eval's simple_evaluate records `git describe` of the working directory (not
    ftbench's commit; outside a checkout git prints "fatal: not a git repository") and
    torch's collect_env report (seconds per call: it runs pip, nvidia-smi and more) into
    result keys ftbench does not keep. The results file records ftbench's own commit and
    library versions (git_state, library_versions); the scoring is untouched."""
    import lm_eval.evaluator as evaluator

    saved = {name: getattr(evaluator, name, None)
             for name in ("get_git_commit_hash", "add_env_info")}
    if None in saved.values():  # another lm-eval layout: leave it alone
        yield
        return
    evaluator.get_git_commit_hash = lambda: git_state()["commit"]
    evaluator.add_env_info = lambda storage: None
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(evaluator, name, fn)


@contextmanager
def rank_independent_prompts() -> Iterator[None]:
    """Few-shot prompts that do not depend on the number of ranks.

    lm-eval draws every document's few-shot examples from one random stream per task, in
    document order, and under several ranks each rank walks only its own share (its
    task.py says "TODO: need to offset doc_id by rank"): document i then gets other
    examples than in one process. Here every rank builds the prompts of all documents, as
    one process does, and keeps its share (documents rank, rank + W, ..., lm-eval's split).
    """
    from lm_eval.api.task import Task

    original = Task.build_all_requests

    def build_all_requests(self, *args, rank: int = 0, world_size: int = 1, **kwargs):
        original(self, *args, rank=0, world_size=1, **kwargs)
        if world_size > 1:
            self._instances = [i for i in self._instances if i.doc_id % world_size == rank]

    Task.build_all_requests = build_all_requests
    try:
        yield
    finally:
        Task.build_all_requests = original


def lm_eval_result(lm, task: str, tasks: BuiltTasks, s: EvalSettings,
                   keep_samples: bool = False) -> dict:
    """Run one lm-eval task; metrics (value, stderr) per result row, per-item outcomes
    (and, with keep_samples, lm-eval's logged samples under "_samples")."""
    import lm_eval

    # Every lm-eval seed follows the few-shot seed: `--seed` redraws Z only, so replicas
    # see the very same prompts (under any number of ranks: rank_independent_prompts).
    sharded = getattr(lm, "world_size", 1) > 1
    with rank_independent_prompts() if sharded else nullcontext(), \
            without_lm_eval_environment_dump():
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=tasks.manager(),
            num_fewshot=LM_EVAL_TASKS[task].num_fewshot, limit=s.limit, log_samples=True,
            bootstrap_iters=1000, random_seed=s.fewshot_seed,
            numpy_random_seed=s.fewshot_seed, torch_random_seed=s.fewshot_seed,
            fewshot_random_seed=s.fewshot_seed)
    if res is None:  # not rank 0: lm-eval gathered this rank's outcomes on rank 0
        return None
    metrics, per_item = {}, {}
    for row, values in res["results"].items():
        for key, value in values.items():
            # Metric keys are "<metric>,<filter>"; "alias", "sample_len" and stderrs are not.
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            stderr = values.get(key.replace(",", "_stderr,", 1))
            name = key if row == task else f"{row}/{key}"
            metrics[name] = {"value": float(value),
                             "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    for leaf, samples in res.get("samples", {}).items():
        for sample in samples:
            for metric in sample.get("metrics", []):
                key = f"{metric},{sample.get('filter', 'none')}"
                name = key if leaf == task else f"{leaf}/{key}"
                per_item.setdefault(name, {})[str(sample["doc_id"])] = float(sample[metric])
    versions = res.get("versions", {})
    n = sum(v.get("effective", 0) for v in res.get("n-samples", {}).values())
    body = {"metrics": metrics, "per_item": per_item, "n_items": int(n),
            "prompts_sha256": prompts_hash(res.get("samples", {})),
            "task_version": str(versions.get(task, "")),
            "harness": f"lm-eval {lm_eval.__version__}"}
    if keep_samples:
        body["_samples"] = res.get("samples", {})
    return body


def prompts_hash(samples: dict[str, list[dict]]) -> str:
    """sha256 of every request lm-eval sent (each logged sample's arguments: few-shot
    context, continuation or generation settings), by subtask and document: two results
    with the same hash saw the same prompts."""
    import hashlib
    import json

    rows = sorted((leaf, int(x["doc_id"]), json.dumps(x.get("arguments"), default=str))
                  for leaf, xs in samples.items() for x in xs)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def code_prompts_hash(problems: list[dict]) -> str:
    """sha256 of the prompts a code task sends (EvalPlus's format), by task id."""
    import hashlib
    import json

    from ftbench.evaluation.evalplus_runner import evalplus_prompt

    rows = [(p["task_id"], evalplus_prompt(p)) for p in problems]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def lm_eval_replicated(lm, task: str, tasks: BuiltTasks, s: EvalSettings,
                       arch: str) -> dict | None:
    """One lm-eval task with a Free arm's replicas: n sample passes for a generative task;
    for a log-likelihood task the headline protocol, then every other protocol replayed
    from the same scores, and the per-draw spread. A baseline gets one pass."""
    from ftbench.evaluation.replicas import draw_spread, merge_sample_passes

    if arch == "oracle":
        return lm_eval_result(lm, task, tasks, s)
    lm.forget()  # stored scores and samples serve this task's replays only
    lm.score_seconds = 0.0
    if LM_EVAL_TASKS[task].generative:
        from ftbench.evaluation.lm_eval_adapter import GenerationLimits

        lm.gen_stats = {"new_tokens": 0, "seconds": 0.0}
        lm.gen_limits = GenerationLimits(lm.max_length)
        passes = []
        for i in range(lm.z_samples):
            lm.sample_index = i
            passes.append(lm_eval_result(lm, task, tasks, s))
        lm.sample_index = 0
        # Collective: every rank takes part, each having counted its share of the prompts.
        limits = GenerationLimits.merge(lm.gather_object(lm.gen_limits.record()))
        if passes[0] is None:  # not rank 0
            return None
        body = passes[0] if len(passes) == 1 else merge_sample_passes(passes)
        seconds = lm.gen_stats["seconds"]
        body["generation"] = {"new_tokens": lm.gen_stats["new_tokens"], "seconds": seconds,
                              "tokens_per_s": (lm.gen_stats["new_tokens"] / seconds
                                               if seconds > 0 else None),
                              "batch_size": s.batch_size, "world_size": lm.world_size,
                              "device": str(lm.device), "limits": limits,
                              "load_avg": load_average(),
                              "workload": decode_workload(lm, s)}
        body["model_s"] = seconds
        return body
    from ftbench.evaluation.lm_eval_adapter import LoglikelihoodLimits

    lm.ll_limits = LoglikelihoodLimits(lm.max_length)
    body = lm_eval_result(lm, task, tasks, s, keep_samples=arch == "free")
    # Collective: every rank counts the contexts of its own documents.
    ll_limits = LoglikelihoodLimits.merge(lm.gather_object(lm.ll_limits.record()))
    if body is not None:
        body["loglikelihood"] = {"limits": ll_limits}
    if arch != "free":
        if body is not None:
            body["model_s"] = lm.score_seconds
        return body
    others = {}
    for protocol in lm.protocols[1:]:
        lm.replay = protocol
        alt = lm_eval_result(lm, task, tasks, s)
        lm.replay = None
        if alt is not None:
            others[protocol] = {"metrics": alt["metrics"], "per_item": alt["per_item"],
                                "n_items": alt["n_items"]}
    # Under torchrun each rank holds the per-draw scores of its own share of the items.
    scores = {}
    for part in lm.gather_object(lm.scores_by_text) or []:  # None on ranks other than 0
        scores.update(part or {})
    if body is None:
        return None
    samples = body.pop("_samples")
    body["model_s"] = lm.score_seconds
    per_draw, why = draw_spread(samples, scores, lm.headline, list(lm.protocols), lm.z.draws)
    body["protocols"] = others
    body["spread"] = ({"kind": "z_draws", "n": lm.z.draws, "metric": "acc,none",
                       "protocols": per_draw} if per_draw is not None else
                      {"kind": "z_draws", "n": lm.z.draws, "unavailable": why})
    return body


def decode_workload(lm, s: EvalSettings) -> dict:
    """The fixed decode workload timed on this arm (ftbench.inference.workload): the same
    rows and batch shape for every arm, so that generation speed compares like for like.
    The task's own generation time above holds n rows per prompt for a Free arm and one for
    a baseline."""
    from ftbench.inference.workload import time_decode_workload, workload_shape

    out = time_decode_workload(lm.model, workload_shape(lm.max_length, s.batch_size),
                               amp=lm.amp, z_protocol=lm.z.protocol)
    out["load_avg"] = load_average()
    return out


def code_data_fingerprint(mirror: Path | None, task: str, cache: Path) -> dict:
    from ftbench.evaluation.evalplus_runner import problems_file

    path = problems_file(task, mirror, cache)
    return {"mode": "offline" if mirror else "online", "files": {path.name: file_sha256(path)}}


def code_prompt_limits(lm, problems: list[dict], max_new_tokens: int) -> dict:
    """The "generation.limits" block of a code task: EvalPlus prompts shortened to fit the
    context, by the same rule as lm-eval prompts (`generation_budget`, which
    evalplus_runner.generate_samples applies too: one budget for every prompt)."""
    from ftbench.evaluation.evalplus_runner import evalplus_prompt
    from ftbench.evaluation.lm_eval_adapter import GenerationLimits, generation_budget

    limits = GenerationLimits(lm.max_length)
    for p in problems:
        _, allowed, dropped = generation_budget(lm.tok_encode(evalplus_prompt(p)),
                                                max_new_tokens, lm.max_length)
        limits.add(max_new_tokens, allowed, dropped)
    return limits.record()


def evalplus_result(lm, task: str, mirror: Path | None, cache: Path, out: Path,
                    s: EvalSettings) -> dict:
    """Generate (in this process), score in EvalPlus's sandbox (another process)."""
    from ftbench.evaluation import evalplus_runner as ep
    from ftbench.evaluation.oracle import OracleLM

    problems_path = ep.problems_file(task, mirror, cache)
    problems = ep.load_problems(problems_path, s.limit)
    generation = None
    if isinstance(lm, OracleLM):
        rows = ep.oracle_samples(problems)
        n = 1
    else:
        n = lm.z_samples
        # EvalPlus's own budget, whatever --max-gen-toks says (that is lm-eval's).
        limits = code_prompt_limits(lm, problems, ep.EVALPLUS_MAX_NEW_TOKENS)
        rows = ep.generate_samples(lm, task, problems, n, s.temperature,
                                   ep.EVALPLUS_MAX_NEW_TOKENS, s.batch_size, s.seed)
        if rows is None:  # not rank 0: its samples went to rank 0, which scores them
            return None
        new_tokens = sum(r["n_new_tokens"] for r in rows)
        # Time inside generate() summed over batches (over ranks too: tokens per second of
        # one process), so that imports and sanitising do not count as the model's speed.
        # Popped: the samples file holds only what is the same on every run.
        seconds = sum(r.pop("gen_seconds", 0.0) for r in rows)
        generation = {"new_tokens": new_tokens, "seconds": seconds,
                      "tokens_per_s": new_tokens / seconds if seconds > 0 else None,
                      "batch_size": s.batch_size, "world_size": getattr(lm, "world_size", 1),
                      "device": str(getattr(lm, "device", "cpu")), "limits": limits,
                      "load_avg": load_average(), "workload": decode_workload(lm, s)}
    samples_path = out.with_suffix(".samples.jsonl")
    ep.write_samples(samples_path, rows)
    scored = ep.score_samples(task, problems_path, samples_path,
                              out.with_suffix(".sandbox.json"), cache, s.sandbox_parallel)
    metrics, per_item, spread = ep.summarise(scored, n)
    import evalplus

    return {"metrics": metrics, "per_item": per_item, "n_items": len(problems),
            "prompts_sha256": code_prompts_hash(problems),
            **({"spread": spread} if spread else {}),
            **({"model_s": generation["seconds"]} if generation else {}),
            "task_version": scored["evalplus_hash"], "harness": f"evalplus {evalplus.__version__}",
            "samples_file": samples_path.name, "n_samples": n, "sandbox": scored["sandbox"],
            "generation": generation,
            "deviations": ep.deviations(
                task, n_samples=n, arch=getattr(getattr(lm, "model", None), "arch", "oracle"),
                temperature=s.temperature, limits=(generation or {}).get("limits"),
                sandbox=scored["sandbox"])}


def evaluate_models(model_dirs: list[Path | None], tasks: list[str], s: EvalSettings,
                    results_root: Path, data_dir: str | None, cache: Path,
                    log: Callable[[str], None] = print,
                    ctx: DistContext | None = None, verbose: bool = False) -> list[Path]:
    """Evaluate each model on each task; finished tasks with the same settings are kept.

    Output: one progress bar and one summary line per task (`summary_line`); verbose=True
    brings back the third-party output (`third_party_output`) and a line as each task
    starts. Under torchrun (ctx with several ranks) every rank loads each model and scores
    its share of the items; rank 0 gathers the outcomes and alone writes results files."""
    mirror = resolve_data_dir(data_dir)
    if mirror is not None:
        go_offline()  # before anything imports datasets or lm-eval (they read it at import)
    with third_party_output(verbose):
        return _evaluate_models(model_dirs, tasks, s, results_root, mirror, cache, log,
                                ctx or DistContext(), verbose)


def _evaluate_models(model_dirs, tasks, s, results_root, mirror, cache, log, ctx,
                     verbose) -> list[Path]:
    say = log if ctx.is_main else (lambda m: None)
    if s.limit is not None:
        say(f"WARNING: --limit {s.limit}: only the first {s.limit} items of each task are "
            "scored; the results are marked and are not comparable to full runs")
    if ctx.distributed:
        say(f"evaluating on {ctx.world} ranks ({ctx.device.type})")
    written = []
    lm_eval_tasks = None  # built at the first lm-eval task, then shared by every arm
    for model_dir in model_dirs:
        mctx = ctx
        if model_dir is None and ctx.distributed:
            # The oracle has no model to share out and is cheap: rank 0 alone runs it.
            if not ctx.is_main:
                continue
            mctx = DistContext()
        record = model_record(model_dir)
        lm = None
        for task in tasks:
            out = result_path(results_root, record, task, s.seed, s.fewshot_seed)
            protocol = _protocol(model_dir, s, task)
            data = main_first(mctx, lambda: data_fingerprint(mirror, task)
                              if task in LM_EVAL_TASKS else
                              code_data_fingerprint(mirror, task, cache))
            # Rank 0 decides, so every rank skips the same tasks even without shared storage.
            done = main_first(mctx, lambda: _finished(out, {
                "limit": s.limit, "protocol": protocol, "seed": s.seed,
                "fewshot_seed": s.fewshot_seed, "data": data, "model": record}),
                others_run=False)
            label = f"{record['run']}/{record['arm']}" + (
                f"@step-{record['step']}" if record.get("snapshot") else "") + f"/{task}"
            if done:
                say(f"{label}: done already ({out})")
                written.append(out)
                continue
            if lm is None:
                lm = _make_lm(model_dir, s, mctx)
            t0 = time.perf_counter()
            if verbose:
                say(f"{label}: evaluating")
            # The task's one progress bar says which task it is.
            if hasattr(lm, "progress_label"):
                lm.progress_label = label
            if task in LM_EVAL_TASKS:
                if lm_eval_tasks is None:
                    lm_eval_tasks = BuiltTasks(main_first(mctx, lambda: build_task_dir(cache,
                                                                                  mirror)))
                body = lm_eval_replicated(lm, task, lm_eval_tasks, s, record["arch"])
            else:
                body = evalplus_result(lm, task, mirror, cache, out, s)
            if mctx.is_main:
                result = {"schema_version": SCHEMA_VERSION, "task": task,
                          "suite": suite_of(task), **body, "limit": s.limit, "data": data,
                          "model": record, "protocol": protocol, "seed": s.seed,
                          "fewshot_seed": s.fewshot_seed,
                          "versions": library_versions(), "git": git_state(),
                          "wall_s": time.perf_counter() - t0, "created": now_iso(),
                          "world_size": mctx.world}
                write_result(out, result)
                say(summary_line(label, body, result["wall_s"], out))
            barrier(mctx)
            written.append(out)
    return written


def result_path(results_root: Path, record: dict, task: str, seed: int,
                fewshot_seed: int = 0) -> Path:
    """Seed 0 is the arm's main result; other seeds are replicas kept beside it (the
    report shows their spread: Z draws for Free arms, sampling for code); another
    few-shot seed is a replica of its own. An evaluation snapshot's results go to
    <arm>/snapshots/step-NNNNNN/, laid out the same way."""
    arm_dir = results_root / record["run"] / record["arm"]
    if record.get("snapshot"):
        arm_dir = arm_dir / "snapshots" / f"step-{record['step']:06d}"
    if seed == 0 and fewshot_seed == 0:
        return arm_dir / f"{task}.json"
    name = f"seed{seed}" + (f"-fewshot{fewshot_seed}" if fewshot_seed else "")
    return arm_dir / name / f"{task}.json"


def _finished(out: Path, settings: dict) -> bool:
    if not out.is_file():
        return False
    try:
        old = read_result(out)
    except ResultsError as e:
        raise EvalError(f"{e}") from None
    return _same_settings(old, settings)


def main_first(ctx: DistContext, fn: Callable[[], T], others_run: bool = True) -> T:
    """Run `fn` on rank 0 first (it may fill caches), then on the other ranks, or with
    others_run=False hand them rank 0's value. An error on rank 0 is raised on every rank
    instead of leaving the others waiting."""
    if not ctx.distributed:
        return fn()
    import torch.distributed as dist

    box: list = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", e)
    # On the host group: rank 0 may spend long (downloads, EvalPlus's ground truth) while
    # the others wait, beyond the device group's timeout.
    dist.broadcast_object_list(box, src=0, group=ctx.host_group)
    status, value = box[0]
    if status == "error":
        raise value
    return fn() if others_run and not ctx.is_main else value


def _protocol(model_dir: Path | None, s: EvalSettings, task: str) -> dict:
    """What the result's numbers mean: recorded with it, compared when resuming."""
    if model_dir is None:
        return {"arch": "oracle"}
    import json

    arch = json.loads((model_dir / "config.json").read_text())["arch"]
    generative = task not in LM_EVAL_TASKS or LM_EVAL_TASKS[task].generative
    if arch != "free":
        if not generative:
            return {"arch": arch}
        return {"arch": arch, "n_samples": s.samples(arch), "token_sampling": s.token_sampling()}
    if generative:
        # "posterior": Z prefilled from the encoder over the prompt, prior Z for new tokens
        # (the paper's generation semantics).
        return {"arch": "free", "z_protocol": s.z_protocol, "z_samples": s.samples(arch),
                "z_seed": s.seed, "token_sampling": s.token_sampling(),
                "estimator": GEN_ESTIMATOR}
    return {"arch": "free", "z_protocol": s.z_protocol, "z_draws": s.draws(arch),
            "z_seed": s.seed, "protocols": list(s.protocols()), "estimator": LL_ESTIMATOR}


def _make_lm(model_dir: Path | None, s: EvalSettings, ctx: DistContext):
    if model_dir is None:
        from ftbench.evaluation.oracle import OracleLM

        return OracleLM()
    import json

    from ftbench.evaluation.lm_eval_adapter import FtbenchLM

    arch = json.loads((model_dir / "config.json").read_text())["arch"]
    return FtbenchLM(path=str(model_dir), batch_size=s.batch_size, z_protocol=s.z_protocol,
                     z_draws=s.draws(arch), z_seed=s.seed, protocols=s.protocols(),
                     z_samples=s.samples(arch), temperature=s.temperature,
                     max_gen_toks=s.max_gen_toks, verify_weights=s.verify_weights, ctx=ctx)

"""Results files of one or more runs, gathered for a report (nothing is recomputed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftbench.evaluation.results import ResultsError, read_result
from ftbench.repro.synthetic import MEASURES

# The headline metric of each task, and how it pools per-item outcomes.
HEADLINE = {
    "humanevalplus": "pass@1,plus", "mbppplus": "pass@1,plus",
    "gsm8k": "exact_match,strict-match", "gsm8k_cot": "exact_match,strict-match",
    "mmlu": "acc,none", "commonsense_qa": "acc,none",
}
SUITE_ORDER = {"code": 0, "math": 1, "qa": 2}


class ReportError(ValueError):
    pass


@dataclass
class ArmResults:
    run: str
    arm: str
    results: dict[str, dict] = field(default_factory=dict)  # task -> results file content
    replicas: dict[str, list[dict]] = field(default_factory=dict)
    """task -> results of the same arm under other seeds (`ftbench eval --seed N`, kept in
    <arm>/seed<N>/): the spread over Z draws and sampling."""


def item_outcomes(result: dict) -> dict[str, float]:
    """Per-item outcomes of the headline metric (MMLU: all subjects pooled)."""
    metric = HEADLINE[result["task"]]
    items = result["per_item"]
    if metric in items:
        return items[metric]
    pooled = {}
    for key, values in items.items():
        if "/" in key and key.split("/", 1)[1] == metric:
            subject = key.split("/", 1)[0]
            pooled.update({f"{subject}:{doc}": v for doc, v in values.items()})
    if not pooled:
        raise ReportError(f"{result['task']}: no per-item outcomes for {metric}")
    return pooled


def collect(results_root: Path, runs: list[str], allow_empty: bool = False) -> list[ArmResults]:
    """Every arm's results under results_root/<run>/<arm>/ (a synthetic study's folder,
    holding MEASURES, is not an arm). `allow_empty`: a run may hold no arm results
    (its report is its synthetic study)."""
    arms = []
    for run in runs:
        run_dir = results_root / run
        if not run_dir.is_dir():
            raise ReportError(f"no results for run {run!r} in {results_root} (expected "
                              f"{run_dir}/<arm>/<task>.json); run `ftbench eval` first")
        for arm_dir in sorted(p for p in run_dir.iterdir()
                              if p.is_dir() and not (p / MEASURES).is_file()):
            found = ArmResults(run, arm_dir.name)
            for path in sorted(arm_dir.glob("*.json")):
                if path.name.endswith(".sandbox.json"):
                    continue
                try:
                    r = read_result(path)
                except ResultsError as e:
                    raise ReportError(str(e)) from None
                found.results[r["task"]] = r
            for path in sorted(arm_dir.glob("seed*/*.json")):
                if path.name.endswith(".sandbox.json"):
                    continue
                try:
                    r = read_result(path)
                except ResultsError as e:
                    raise ReportError(str(e)) from None
                found.replicas.setdefault(r["task"], []).append(r)
            if found.results:
                arms.append(found)
    if not arms and not allow_empty:
        raise ReportError(f"the results folder {results_root} holds no results for "
                          f"{', '.join(runs)}")
    return arms


def banners(arms: list[ArmResults]) -> list[str]:
    """Warnings a reader must see before trusting the tables."""
    out = []
    limits = {r["limit"] for a in arms for r in a.results.values()}
    if limits != {None}:
        lim = sorted(str(x) for x in limits)
        out.append(f"SMOKE TEST: some results used --limit ({', '.join(lim)}): scores cover "
                   "only the first items of each task and are not comparable to full runs.")
    # Log-likelihood results (K draws) and generative ones (n samples) are compared apart.
    for count in ("z_draws", "z_samples"):
        protocols = {(r["protocol"].get("z_protocol"), r["protocol"].get(count),
                      tuple(r["protocol"].get("protocols") or ()))
                     for a in arms for r in a.results.values()
                     if r["protocol"].get("arch") == "free" and count in r["protocol"]}
        if len(protocols) > 1:
            out.append(f"MIXED Z PROTOCOLS across Free results ({count}): "
                       f"{sorted(map(str, protocols))}.")
    for task in sorted({t for a in arms for t in a.results}):
        versions = {str(a.results[task]["data"]) for a in arms if task in a.results}
        if len(versions) > 1:
            out.append(f"MIXED DATA VERSIONS for {task}: the arms were scored on different "
                       "data files; its comparison is not paired.")
    out += generation_limit_banners(arms)
    out += loglikelihood_limit_banners(arms)
    return out


def contexts_cut(result: dict) -> dict | None:
    """The results' log-likelihood truncation counts when any context was cut, else None
    (also None for files written before they were recorded)."""
    lim = (result.get("loglikelihood") or {}).get("limits") or {}
    return lim if lim.get("contexts_truncated") else None


def contexts_cut_text(lim: dict) -> str:
    return (f"{lim['contexts_truncated']} of {lim['contexts']} contexts cut to "
            f"{lim['max_seq_len']} tokens ({lim['requests_truncated']} of {lim['requests']} "
            f"requests; up to {lim['context_tokens_dropped_max']} tokens, "
            f"{lim['context_tokens_dropped']} in all)")


def loglikelihood_limit_banners(arms: list[ArmResults]) -> list[str]:
    """Log-likelihood tasks whose prompts were left-truncated to fit the model's context:
    the model then answered a shortened prompt (fewer few-shot examples, or part of the
    question), which the task's name does not say."""
    hits = [f"{a.arm}/{task}: {contexts_cut_text(lim)}"
            for a in arms for task, r in sorted(a.results.items())
            if (lim := contexts_cut(r)) is not None]
    if not hits:
        return []
    return ["LOG-LIKELIHOOD CONTEXTS CUT TO FIT THE MODEL: prompts longer than the model's "
            "context (max_seq_len) lost their first tokens, as lm-eval does (it warns per "
            "request), so the model answered a shortened prompt (for a few-shot task, fewer "
            "or partial examples). " + "; ".join(hits) + "."]


def generation_limit_banners(arms: list[ArmResults]) -> list[str]:
    """Generative results whose new tokens were capped or whose prompts were cut to fit the
    model's context (results' generation.limits): lm-eval's HF backend would refuse such
    requests, ftbench scores them shortened, so the reader must know how many were."""
    hits = []
    for a in arms:
        for task, r in sorted(a.results.items()):
            lim = (r.get("generation") or {}).get("limits") or {}
            if lim.get("capped") or lim.get("context_truncated"):
                hits.append(f"{a.arm}/{task}: {lim.get('capped', 0)} of {lim.get('requests')} "
                            f"capped at {lim.get('cap')} new tokens, "
                            f"{lim.get('context_truncated', 0)} prompts cut (up to "
                            f"{lim.get('context_tokens_dropped_max', 0)} tokens)")
    if not hits:
        return []
    return ["GENERATION LIMITED BY THE CONTEXT: the model's context (max_seq_len) is shorter "
            "than prompt + requested new tokens, so answers were cut short or prompts "
            "shortened; scores understate what a longer context would allow. "
            + "; ".join(hits) + "."]

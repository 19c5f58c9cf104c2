"""Free arms' Z replicas, turned into what the results record.

- Generative tasks: n samples per prompt (one lm-eval pass each, every metric computed by
  lm-eval). The score is their mean; per item, the fraction of samples that succeed; the
  spread is the per-sample scores with their standard error; pass@k where the outcome is
  pass/fail.
- Log-likelihood (multiple-choice) tasks: K draws per item combined by log-mean-exp. The
  spread is the accuracy each single draw would give, recomputed from lm-eval's logged
  samples and the adapter's per-draw scores (checked against lm-eval's own outcome with
  the combined scores first).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from ftbench.evaluation.evalplus_runner import pass_at_k


def spread_stats(values: list[float]) -> dict:
    """Mean, sample sd and standard error of the mean of per-replica scores."""
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    return {"values": values, "mean": statistics.fmean(values), "sd": sd,
            "se": sd / math.sqrt(n) if n > 1 else 0.0, "n": n}


def merge_sample_passes(passes: list[dict]) -> dict:
    """One result body from n passes over the same items (pass i: sample i of each)."""
    first = passes[0]
    n = len(passes)
    per_item, metrics, spread = {}, {}, {}
    for name in first["per_item"]:
        docs = first["per_item"][name]
        outcomes = {d: [p["per_item"][name][d] for p in passes] for d in docs}
        per_item[name] = {d: statistics.fmean(v) for d, v in outcomes.items()}
        means = list(per_item[name].values())
        sd = statistics.stdev(means) if len(means) > 1 else 0.0
        # The item-level standard error of the n-sample score; the Z spread is apart.
        metrics[name] = {"value": statistics.fmean(means), "stderr": sd / math.sqrt(len(means))}
        spread[name] = spread_stats([statistics.fmean(p["per_item"][name].values())
                                     for p in passes])
        binary = all(x in (0.0, 1.0) for v in outcomes.values() for x in v)
        if binary and "," in name:
            base, filt = name.split(",", 1)
            for k in (1, 5, 10):
                if k <= n:
                    vals = [pass_at_k(n, int(sum(v)), k) for v in outcomes.values()]
                    metrics[f"{base}_pass@{k},{filt}"] = {
                        "value": statistics.fmean(vals),
                        "stderr": (statistics.stdev(vals) / math.sqrt(len(vals))
                                   if len(vals) > 1 else 0.0)}
    # Rows without per-item outcomes (group aggregates) are averaged over the passes.
    for name, m in first["metrics"].items():
        if name not in metrics:
            values = [p["metrics"][name]["value"] for p in passes]
            metrics[name] = {"value": statistics.fmean(values), "stderr": m.get("stderr")}
    body = {k: v for k, v in first.items() if k not in ("metrics", "per_item", "_samples")}
    body.update(metrics=metrics, per_item=per_item,
                spread={"kind": "z_samples", "n": n, "metrics": spread})
    return body


def _gold_index(sample: dict) -> int | None:
    target = sample.get("target")
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, str):
        choices = [cont.strip() for _, cont in sample["arguments"]]
        return choices.index(target.strip()) if target.strip() in choices else None
    return None


def draw_spread(samples: dict[str, list[dict]], scores_by_text: dict, headline: str,
                protocols: list[str], draws: int) -> tuple[dict | None, str | None]:
    """Accuracy under each single draw, per protocol: ({protocol: spread}, None), or
    (None, why) when it cannot be recomputed faithfully."""
    correct = {p: [0] * draws for p in protocols}
    n = 0
    for leaf_samples in samples.values():
        for sample in leaf_samples:
            if "acc" not in sample:
                return None, "not a multiple-choice accuracy task"
            try:
                scored = [scores_by_text[tuple(arg)] for arg in sample["arguments"]]
            except KeyError:
                return None, "a logged request has no stored per-draw scores"
            gold = _gold_index(sample)
            combined = np.array([s[headline].logp for s in scored])
            if gold is None or float(int(np.argmax(combined)) == gold) != float(sample["acc"]):
                return None, "the recomputed outcome differs from lm-eval's"
            for p in protocols:
                per_draw_KC = np.array([s[p].draws for s in scored]).T
                for k in range(draws):
                    correct[p][k] += int(np.argmax(per_draw_KC[k]) == gold)
            n += 1
    if n == 0:
        return None, "no logged samples"
    return {p: spread_stats([c / n for c in counts]) for p, counts in correct.items()}, None

"""The results file: one per (run, arm, task), one versioned schema, written atomically.

    results/<run>/<arm>/<task>.json
    {
      "schema_version": 3,
      "task": "gsm8k", "suite": "math", "harness": "lm-eval 0.4.13",
      "metrics": {"exact_match,strict-match": {"value": 0.1, "stderr": 0.01}, ...},
      "per_item": {"exact_match,strict-match": {"<doc_id>": 0.0, ...}, ...},
      "n_items": 1319, "limit": null,
      "task_version": "3.0", "data": {"mode": "offline", "files": {"gsm8k/test.jsonl": "<sha256>"}},
      "model": {"path": ..., "run": ..., "arm": ..., "arch": ..., "config_sha256": ...,
                "weights_sha256": ..., "snapshot": false, "step": 150, "tokens": 307200},
      "protocol": {"arch": "free", "z_protocol": "posterior", "z_draws": 8, "z_seed": 0,
                   "protocols": ["posterior", "prior"], "estimator": "log-mean-exp ..."},
      "seed": 0, "fewshot_seed": 0, "versions": {...}, "git": {"commit": ..., "dirty": ...},
      "wall_s": 12.3, "model_s": 4.1, "created": "2026-11-25T02:00:00Z",
      # Free arms (schema 2, optional):
      "protocols": {"prior": {"metrics": {...}, "per_item": {...}, "n_items": 1319}},
      "spread": {"kind": "z_draws", "n": 8, "metric": "acc,none",
                 "protocols": {"posterior": {"values": [...], "mean", "sd", "se", "n"}, ...}}
                or {"kind": "z_samples", "n": 5, "metrics": {"<metric>": {"values": ...}}}
    }
Top-level metrics and per-item outcomes are the headline protocol's (`protocol`); the
other Z protocol of a log-likelihood task is in "protocols", scored from the same pass.
"spread" holds the per-draw (log-likelihood) or per-sample (generation) scores.
"generation" (generative tasks, optional): {"new_tokens", "seconds", "tokens_per_s",
"batch_size", "world_size", "device", "limits"}. "limits" (lm-eval tasks; absent in older
files) counts the prompts shortened to fit the model's context:
    {"max_seq_len": 256, "cap": 128, "requests": 1319, "max_gen_toks_requested": [256],
     "capped": 1319, "context_truncated": 12, "context_tokens_dropped": 3400,
     "context_tokens_dropped_max": 610}
"capped": prompts whose max_gen_toks exceeded "cap" (max_seq_len // 2) and got "cap" new
tokens; "context_truncated": prompts that lost their first tokens (in all / at most) to
leave room for the new ones. lm-eval's HF backend refuses such requests instead.
"model_s" (optional) is the part of wall_s spent in the model (scoring, generation) on
rank 0: wall_s also holds the harness and one-time costs (EvalPlus's ground truth).
Per-item outcomes keep the document ids, so two arms can be compared item by item.
"loglikelihood" (log-likelihood tasks, schema 3): {"limits": {"max_seq_len", "requests",
"requests_truncated", "contexts", "contexts_truncated", "context_tokens_dropped",
"context_tokens_dropped_max"}}: prompts left-truncated to fit the model (lm-eval's rule,
one cut per context, so an item's choices keep one context); "contexts" are the distinct
contexts scored, one per multiple-choice item.
"generation.workload" (schema 3): the fixed decode workload timed on the arm after the
task (ftbench.inference.workload; the same shape for every arm, so generation speed
compares like for like): {"rows", "batch_size", "prompt_tokens", "new_tokens",
"generated", "repeats", "seconds" (median), "seconds_all", "tokens_per_s", "load_avg"}.
"generation.new_tokens" counts the tokens rows really generated, cut at their stop.
"deviations" (code tasks, schema 3): what differs from a plain EvalPlus 0.3.1 run.
"model.step" and "model.tokens" (optional; files written before they were recorded lack
them): the training step and tokens seen of the weights scored; "model.snapshot" is true
for an evaluation snapshot (results/<run>/<arm>/snapshots/step-NNNNNN/<task>.json, written
by `ftbench eval --snapshots`), false for the final export.
Schema 1 and 2 files (without the schema 3 blocks) are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
REQUIRED = {"schema_version": int, "task": str, "suite": str, "harness": str, "metrics": dict,
            "per_item": dict, "n_items": int, "data": dict, "model": dict, "protocol": dict,
            "seed": int, "versions": dict, "git": dict, "wall_s": float, "created": str}


class ResultsError(ValueError):
    pass


def validate_result(data: dict, where: str = "result") -> dict:
    for key, typ in REQUIRED.items():
        if key not in data:
            raise ResultsError(f"{where}: missing field {key!r}")
        if typ is float and isinstance(data[key], int):
            continue
        if not isinstance(data[key], typ):
            raise ResultsError(f"{where}: field {key!r} should be {typ.__name__}")
    if data["schema_version"] not in READABLE_VERSIONS:
        raise ResultsError(f"{where}: schema_version {data['schema_version']} is not one of "
                           f"{READABLE_VERSIONS}; re-run the evaluation with this ftbench")
    if "limit" not in data:
        raise ResultsError(f"{where}: missing field 'limit'")
    _check_metrics(data["metrics"], where)
    for protocol, block in (data.get("protocols") or {}).items():
        if not isinstance(block, dict) or not {"metrics", "per_item"} <= set(block):
            raise ResultsError(f"{where}: protocols.{protocol} needs metrics and per_item")
        _check_metrics(block["metrics"], f"{where}: protocols.{protocol}")
    spread = data.get("spread")
    if spread is not None and (not isinstance(spread, dict) or
                               spread.get("kind") not in ("z_draws", "z_samples")):
        raise ResultsError(f"{where}: spread needs kind 'z_draws' or 'z_samples'")
    return data


def _check_metrics(metrics: dict, where: str) -> None:
    for name, m in metrics.items():
        if not isinstance(m, dict) or "value" not in m or "stderr" not in m:
            raise ResultsError(f"{where}: metric {name!r} needs value and stderr")


def write_result(path: Path, data: dict) -> None:
    validate_result(data, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def read_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path} is not a readable results file ({e}); delete it to "
                           "re-run that task") from None
    return validate_result(data, str(path))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_state() -> dict:
    root = Path(__file__).resolve().parents[2]
    # An installed ftbench has no checkout around it; git would report whatever
    # repository the user happens to be in.
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ftbench", "torch", "lm-eval", "evalplus", "datasets", "transformers",
                "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def training_point(model_dir: Path, meta: dict) -> dict:
    """Where in training the weights come from: the step and the tokens seen, and whether
    they are an evaluation snapshot (models/<run>/<arm>/snapshots/step-NNNNNN/) or the
    final export (its last step)."""
    snap = meta.get("snapshot")
    if snap:
        return {"run": model_dir.parents[2].name,
                "arm": meta.get("arm") or model_dir.parents[1].name, "snapshot": True, "step": snap["step"], "tokens": snap["tokens"]}
    steps = meta.get("steps")
    run = (meta.get("pair_config") or {}).get("run") or {}
    data = (meta.get("pair_config") or {}).get("data") or {}
    tokens = (steps * run["batch_size"] * data["seq_len"]
              if steps is not None and "batch_size" in run and "seq_len" in data else None)
    return {"snapshot": False, "step": steps, "tokens": tokens}

"""The matched pair, checked from what each arm recorded when it trained: the batch digest of
every step (metrics.jsonl), the initial value of every weight the arms share, the tokenizer
and the validation windows (config.json's "matched" block). A gain is only the Free
Transformer's if these agree; the report says so when they do not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.report.overhead import read_model_meta

OK, DIFFERS, MISSING = "identical", "DIFFERS", "not recorded"


@dataclass
class PairCheck:
    run: str
    arm: str
    batches: str
    initial_weights: str
    tokenizer: str
    validation: str

    @property
    def failures(self) -> list[str]:
        return [what for what, v in (("batches", self.batches),
                                     ("initial weights", self.initial_weights),
                                     ("tokenizer", self.tokenizer),
                                     ("validation windows", self.validation))
                if v.startswith(DIFFERS)]


def batch_digests(metrics_path: Path) -> dict[int, str]:
    """step -> batch_sha1 for every step record that has one (a torn last line is skipped)."""
    out = {}
    if not metrics_path.is_file():
        return out
    for line in metrics_path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "batch_sha1" in r and "step" in r:
            out[int(r["step"])] = r["batch_sha1"]
    return out


def _batches(base: dict[int, str], other: dict[int, str]) -> str:
    if not base or not other:
        return MISSING
    steps = sorted(set(base) & set(other))
    differ = [s for s in steps if base[s] != other[s]]
    if differ:
        return f"{DIFFERS} at {len(differ)} of {len(steps)} steps (first: step {differ[0]})"
    extra = "" if set(base) == set(other) else \
        f" (steps only one arm ran: {len(set(base) ^ set(other))})"
    return f"{OK} at {len(steps)} of {len(steps)} steps{extra}"


def _weights(base: dict, other: dict, other_arch: str, base_layers, other_layers) -> str:
    b, o = base.get("init_sha1"), other.get("init_sha1")
    if b is None or o is None:
        return MISSING
    if base.get("init_world_size") != other.get("init_world_size"):
        # The digests are of rank 0's shards, which depend on how many ranks share a weight.
        return (f"not comparable (digests from {base.get('init_world_size')} and "
                f"{other.get('init_world_size')} ranks)")
    if other_arch != "free" and base_layers != other_layers:
        # A deeper control draws the same values but rescales its residual projections.
        return "not compared (a control of another depth)"
    shared = sorted(set(b) & set(o))
    differ = [n for n in shared if b[n] != o[n]]
    if not shared:
        return f"{DIFFERS}: no weight name in common"
    if differ:
        return f"{DIFFERS}: {len(differ)} of {len(shared)} shared tensors (first: {differ[0]})"
    return f"{OK} ({len(shared)} shared tensors)"


def _same(base: dict, other: dict, key: str) -> str:
    b, o = base.get(key), other.get(key)
    if b is None or o is None:
        return MISSING
    return OK if b == o else f"{DIFFERS} ({b[:12]} vs {o[:12]})"


def pair_checks(models_root: Path, run: str, arms: list[str]) -> list[PairCheck]:
    """One check per arm of `run` other than its baseline; [] without a baseline export."""
    base_meta = read_model_meta(models_root, run, "baseline")
    if base_meta is None:
        return []
    base_matched = base_meta.get("matched") or {}
    base_batches = batch_digests(models_root / run / "baseline" / "metrics.jsonl")
    out = []
    for arm in arms:
        if arm == "baseline":
            continue
        meta = read_model_meta(models_root, run, arm)
        if meta is None:
            continue
        matched = meta.get("matched") or {}
        out.append(PairCheck(
            run, arm,
            _batches(base_batches, batch_digests(models_root / run / arm / "metrics.jsonl")),
            _weights(base_matched, matched, meta.get("arch", ""),
                     base_meta.get("model", {}).get("n_layers"),
                     meta.get("model", {}).get("n_layers")),
            _same(base_matched, matched, "tokenizer_sha256"),
            _same(base_matched, matched, "val_windows_sha1")))
    return out


def unmatched_banner(checks: list[PairCheck]) -> str | None:
    bad = [f"{c.run}/{c.arm} ({', '.join(c.failures)})" for c in checks if c.failures]
    if not bad:
        return None
    return ("PAIR NOT MATCHED: " + "; ".join(bad) + " differ from the baseline's, so a gain "
            "mixes the Free Transformer with that difference. See 'Matched pair'.")

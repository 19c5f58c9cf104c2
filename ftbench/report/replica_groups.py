"""Which runs may be pooled "across seeds": runs whose training configurations are equal
once their seeds (and what only names or logs a run) are set aside.

A run's configuration is the "pair_config" each exported arm records (models/<run>/<arm>/
config.json). Two runs of different sizes, steps or data would otherwise be shown as seed
noise; they are kept apart and the keys that differ are named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.report.collect import ArmResults
from ftbench.report.overhead import read_model_meta

# run.* keys that do not change what is trained: the seed (what replicas vary), and the
# run's name, output folder, trackers, timeout and checkpoint cadence.
IGNORED = {"run.seed", "run.name", "run.out_dir", "run.trackers", "run.timeout_minutes",
           "run.checkpoint_every"}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def seedless_config(models_root: Path, run: str, arm: str) -> dict | None:
    """The arm's recorded pair configuration, flattened, minus IGNORED (None when the arm
    folder or its record is missing)."""
    meta = read_model_meta(models_root, run, arm)
    if meta is None or not isinstance(meta.get("pair_config"), dict):
        return None
    return {k: v for k, v in _flatten(meta["pair_config"]).items() if k not in IGNORED}


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ReplicaGroup:
    arm: str
    members: list[ArmResults]
    key: str | None
    """Hash of the shared seedless configuration; None for a run whose configuration is
    unknown (never pooled)."""


def replica_groups(arms: list[ArmResults], models_root: Path) -> tuple[list[ReplicaGroup],
                                                                         list[str]]:
    """Arms grouped by (name, seedless configuration), and one note per arm name whose runs
    were kept apart, naming what differs."""
    configs = {(a.run, a.arm): seedless_config(models_root, a.run, a.arm) for a in arms}
    groups: dict[tuple[str, str | None], ReplicaGroup] = {}
    for a in arms:
        cfg = configs[(a.run, a.arm)]
        key = config_key(cfg) if cfg is not None else None
        slot = (a.arm, key if key is not None else f"unknown:{a.run}")
        groups.setdefault(slot, ReplicaGroup(a.arm, [], key)).members.append(a)
    notes = []
    for name in dict.fromkeys(a.arm for a in arms):
        mine = [g for g in groups.values() if g.arm == name]
        if len(mine) < 2:
            continue
        unknown = [g.members[0].run for g in mine if g.key is None]
        known = [g for g in mine if g.key is not None]
        parts = []
        if len(known) > 1:
            first = configs[(known[0].members[0].run, name)]
            diffs = set()
            for g in known[1:]:
                other = configs[(g.members[0].run, name)]
                diffs |= {k for k in set(first) | set(other) if first.get(k) != other.get(k)}
            runs = " | ".join(", ".join(m.run for m in g.members) for g in known)
            parts.append(f"configurations differ beyond the seed ({runs}; "
                         f"differing keys: {', '.join(sorted(diffs)[:6])}"
                         f"{', ...' if len(diffs) > 6 else ''})")
        if unknown:
            parts.append(f"no recorded configuration for {', '.join(unknown)} "
                         "(models/<run>/<arm>/config.json not found; pass --models)")
        notes.append(f"{name}: not pooled: " + "; ".join(parts))
    return list(groups.values()), notes

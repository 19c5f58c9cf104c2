"""`ftbench eval --snapshots`: which model folders an arm's evaluation snapshots name.

Snapshots are written during training (ftbench.training.snapshots) to
models/<run>/<arm>/snapshots/step-NNNNNN/, each a complete exported model; the final
export (models/<run>/<arm>/) is the run's last step. A selection is

    all          every snapshot, and the final export once the arm has finished
    last-third   the snapshots past 2/3 of the run's steps, and the final export
    STEP[,STEP]  those steps (the run's last step names the final export)

An arm still training is evaluated on the snapshots written so far, so the same command,
run again, evaluates the new ones (finished steps are kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.training.snapshots import SNAPSHOTS, list_snapshots

LAST_THIRD = 2 / 3
"""The paper's "last third of the iterations": steps above this share of the run."""


class SnapshotError(ValueError):
    pass


@dataclass(frozen=True)
class Point:
    """One model folder to evaluate: a snapshot, or the final export (final=True)."""
    arm_dir: Path
    step: int
    path: Path
    final: bool


def parse_selection(spec: str) -> str | list[int]:
    """'all', 'last-third' or a sorted list of steps."""
    spec = spec.strip()
    if spec in ("all", "last-third"):
        return spec
    steps = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if not part.isdigit() or int(part) < 1:
            raise SnapshotError(f"--snapshots: {part!r} is not a step; give all, last-third or "
                                "steps such as 25,50")
        steps.append(int(part))
    if not steps:
        raise SnapshotError("--snapshots: give all, last-third or steps such as 25,50")
    return sorted(set(steps))


def _meta(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_steps(arm_dir: Path, snapshots: dict[int, Path]) -> int | None:
    """The run's total steps: the export's, else a snapshot's record, else pair.yaml's."""
    meta = _meta(arm_dir)
    if "steps" in meta:
        return int(meta["steps"])
    for path in snapshots.values():
        steps = (_meta(path).get("snapshot") or {}).get("run_steps")
        if steps:
            return int(steps)
    pair = arm_dir.parent / "pair.yaml"
    if pair.is_file():
        import yaml

        return int(((yaml.safe_load(pair.read_text()) or {}).get("run") or {}).get("steps", 0)
                   ) or None
    return None


def _is_arm(path: Path) -> bool:
    return path.is_dir() and ((path / SNAPSHOTS).is_dir() or (path / "config.json").is_file()
                              or (path / "metrics.jsonl").is_file())


def arm_dirs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Arm folders from arms and run folders, finished or still training."""
    found, notes = [], []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise SnapshotError(f"{path} does not exist; give run folders (models/<run>) or "
                                "arms (models/<run>/<arm>)")
        if _is_arm(path):
            arms = [path]
        elif path.name in ("data", "pair.yaml") and (path.parent / "pair.yaml").is_file():
            notes.append(f"skipping {path} (the run's "
                         f"{'training data' if path.name == 'data' else 'resolved config'})")
            continue
        elif not path.is_dir():
            raise SnapshotError(f"{path} is neither an arm (models/<run>/<arm>) nor a run "
                                "folder (models/<run>)")
        else:
            arms = sorted((p for p in path.iterdir() if _is_arm(p)),
                          key=lambda p: (not p.name.startswith("baseline"), p.name))
            if not arms:
                raise SnapshotError(f"{path} holds no arms (models/<run>/<arm>/); train a pair "
                                    "with `ftbench train-pair` first")
        for arm in arms:
            if arm.resolve() not in {a.resolve() for a in found}:
                found.append(arm)
    return found, notes


def select(paths: list[Path], spec: str) -> tuple[list[Point], list[str]]:
    """The points to evaluate, ordered by step then arm (the curves of every arm grow
    together), and notes for the user. A step that an arm lacks is an error naming the
    available steps."""
    wanted = parse_selection(spec)
    arms, notes = arm_dirs(paths)
    points: list[Point] = []
    for order, arm in enumerate(arms):
        snaps = list_snapshots(arm)
        exported = (arm / "config.json").is_file() and (arm / "model.safetensors").is_file()
        total = run_steps(arm, snaps)
        available = dict(snaps)
        if exported and total:
            available[total] = arm
        if not available:
            raise SnapshotError(f"{arm} has no snapshots yet and no final export; train with "
                                "run.snapshot_every > 0, or wait for the first snapshot")
        if wanted == "all":
            steps = sorted(available)
        elif wanted == "last-third":
            if not total:
                raise SnapshotError(f"{arm}: the run's number of steps is unknown (no export, "
                                    "snapshot record or pair.yaml); name the steps instead")
            steps = [s for s in sorted(available) if s > LAST_THIRD * total]
        else:
            missing = [s for s in wanted if s not in available]
            if missing:
                listed = ", ".join(f"{s} (final export)" if available[s] == arm else str(s)
                                   for s in sorted(available))
                raise SnapshotError(
                    f"--snapshots: step{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))} not found for {arm}; "
                    f"available steps: {listed}")
            steps = wanted
        if not exported:
            notes.append(f"{arm}: still training (final export not written yet); evaluating "
                         f"its {len(snaps)} snapshot(s) so far")
        points += [Point(arm, s, available[s], available[s] == arm) for s in steps]
    order = {arm: i for i, arm in enumerate(arms)}
    points.sort(key=lambda p: (p.step, order[p.arm_dir]))
    return points, notes

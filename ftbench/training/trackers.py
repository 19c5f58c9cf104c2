"""Live training dashboards: TensorBoard and W&B, beside metrics.jsonl (always written).

A tracker gets the records metrics.jsonl gets, at the same steps, and only on the main
process (the loop opens none elsewhere). Each keeps to the arm's folder: <arm>/tb/ and
<arm>/wandb/. A resumed run continues the same curves: events past the resumed
checkpoint, left by an interrupted attempt, are dropped rather than shown twice.
"""

from __future__ import annotations

import importlib
import math
import os
import uuid
from pathlib import Path
from typing import Protocol

from ftbench.config.schema import TRACKERS  # noqa: F401  (the valid names)

# The module each tracker imports, and so the one a missing extra leaves out.
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class TrackerUnavailable(RuntimeError):
    """A tracker named in run.trackers whose package is not installed."""


class Tracker(Protocol):
    def log(self, step: int, record: dict) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def require_trackers(names: list[str]) -> None:
    """Fail before any work when a named tracker's package is missing."""
    for name in names:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError:
            raise TrackerUnavailable(
                f"run.trackers: {name} is not installed; pip install 'ftbench[{name}]' "
                f"(or remove {name} from run.trackers)") from None


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers, keyed as in metrics.jsonl; None and strings have no curve."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class TensorBoardTracker:
    def __init__(self, log_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops earlier events at or past it, i.e. the steps an
        # interrupted attempt logged after its last checkpoint, which this run logs again.
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1, flush_secs=30)

    def log(self, step: int, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """An offline W&B run (WANDB_MODE overrides: online streams it live); `wandb sync
    <arm>/wandb/offline-run-*` uploads it later. A resume reuses the run id, so W&B
    appends to the same run."""

    def __init__(self, arm_dir: Path, resume_step: int, name: str, group: str,
                 config: dict):
        import wandb

        run_dir = arm_dir / "wandb"
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "run-id"
        if resume_step > 0 and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:  # a run from step 0 is a new run, even over an old folder
            run_id = uuid.uuid4().hex[:12]
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(run_id + "\n")
            tmp.replace(id_file)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ftbench"), name=name, group=group,
            id=run_id, resume="allow", dir=str(arm_dir), config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            # The loop prints its own progress; W&B's console capture would duplicate it.
            settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, record: dict) -> None:
        self.run.log(scalars(record), step=step)

    def flush(self) -> None:
        pass  # the W&B service writes as it receives

    def close(self) -> None:
        self.run.finish()


class TrackerSet:
    """The trackers of one arm, logged to together; empty where none are configured."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step: int, record: dict) -> None:
        for t in self.trackers:
            t.log(step, record)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def open_trackers(names: list[str], arm_dir: Path, resume_step: int, *, name: str,
                  group: str, config: dict) -> TrackerSet:
    """The trackers in `names` for one arm, resuming after `resume_step`."""
    require_trackers(names)
    trackers: list[Tracker] = []
    for tracker in names:
        if tracker == "tensorboard":
            trackers.append(TensorBoardTracker(arm_dir / "tb", resume_step))
        elif tracker == "wandb":
            trackers.append(WandbTracker(arm_dir, resume_step, name, group, config))
    return TrackerSet(trackers)

"""Live training dashboards: TensorBoard and W&B, beside metrics.jsonl (always written).

A tracker gets the records metrics.jsonl gets, at the same steps, and only on the main
process (the loop opens none elsewhere). Each keeps to the arm's folder: <arm>/tb/ and
<arm>/wandb/. A resumed run continues the same curves with each step once, although an
interrupted attempt may have logged steps past the checkpoint it resumes from.
"""

from __future__ import annotations

import importlib
import json
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
    """The record's numbers, keyed as in metrics.jsonl; None, strings and NaN have no curve."""
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
    """An offline W&B run (WANDB_MODE=online streams it live instead); `wandb sync
    <arm>/wandb/offline-run-*` uploads it later.

    A resume keeps the run id, so W&B shows one run. Offline, nothing can rewind what an
    interrupted attempt logged past its checkpoint, so the resumed attempt skips the steps
    already sent (ftbench-run.json keeps the last one): each step is logged once. Training
    resumes bit-identically, so only timing figures (tokens/s, MFU) of those steps come
    from the earlier attempt.
    """

    def __init__(self, arm_dir: Path, resume_step: int, name: str, group: str,
                 config: dict):
        import wandb

        run_dir = arm_dir / "wandb"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = run_dir / "ftbench-run.json"
        state = None
        if resume_step > 0 and self.state_file.is_file():
            state = json.loads(self.state_file.read_text())
        # A run from step 0 is a new W&B run, even over an old folder.
        self.run_id = state["run_id"] if state else uuid.uuid4().hex[:12]
        self.last_step = state["last_step"] if state else 0
        self._save_state()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ftbench"), name=name, group=group,
            id=self.run_id, resume="allow", dir=str(arm_dir), config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            # The loop prints its own progress; W&B's console capture would duplicate it.
            settings=wandb.Settings(console="off", silent=True))

    def _save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "last_step": self.last_step}))
        tmp.replace(self.state_file)

    def log(self, step: int, record: dict) -> None:
        if step <= self.last_step:
            return  # sent by the interrupted attempt; W&B keeps one point per step
        self.run.log(scalars(record), step=step)
        self.last_step = step
        self._save_state()

    def flush(self) -> None:
        pass  # the W&B service writes what it receives as it comes

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

"""Resumable training state with torch.distributed.checkpoint (sharded under FSDP2).

A checkpoint is a folder `step_XXXXXXXX/` holding the model and optimiser state and a
meta.json with the step and the run's fingerprint. It is written as `….tmp` and renamed
when complete, so a crash mid-write leaves the earlier checkpoints as they were and the
newest *complete* one is what a rerun resumes from. The batch order, the schedule and
every random draw (Z included) are functions of the step, so step + weights + optimiser
state is the whole state of a run.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ftbench.training.distributed import DistContext, barrier

KEEP = 2

# DCP warns when it runs without a process group; a single process is a supported case here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or "
                        "uninitialized", category=UserWarning)


class CheckpointError(RuntimeError):
    pass


ACCEPTED_RUN = "run_also_accepted"
"""Fingerprint key: earlier hashes of the same run settings, accepted in place of "run"."""


def fingerprint_differs(recorded: dict, fingerprint: dict) -> list[str]:
    """The keys in which a recorded fingerprint differs from this run's."""
    differ = []
    for k, v in fingerprint.items():
        if k == ACCEPTED_RUN:
            continue
        got = recorded.get(k)
        if got != v and not (k == "run" and got in fingerprint.get(ACCEPTED_RUN, ())):
            differ.append(k)
    return sorted(differ)


class Checkpointer:
    def __init__(self, root: Path, ctx: DistContext, fingerprint: dict):
        self.root, self.ctx, self.fingerprint = root, ctx, fingerprint

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step_*")
                      if p.is_dir() and not p.name.endswith(".tmp") and (p / "meta.json").is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, model: torch.nn.Module, optim: torch.optim.Optimizer,
             record: dict | None = None) -> Path:
        """`record`: the step's metrics, kept in meta.json so that a run stopped before
        writing them (in validation, which follows the save) can finish that step."""
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f"step_{step:08d}.tmp"
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier(self.ctx)
        model_sd, optim_sd = get_state_dict(model, optim)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        barrier(self.ctx)
        if self.ctx.is_main:
            meta = {"step": step, **self.fingerprint}
            if record is not None:
                meta["record"] = record
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.complete()[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.ctx)
        return final

    def check(self, path: Path) -> dict:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {path} has an unreadable meta.json ({e}); "
                                  "delete that folder to resume from the one before") from None
        differ = fingerprint_differs(meta, self.fingerprint)
        if differ:
            raise CheckpointError(
                f"checkpoint {path} was written by another config (differs in: "
                f"{', '.join(differ)}). Use a new run.name, or delete {self.root} to start over.")
        return meta

    def record(self, path: Path) -> dict | None:
        """The metrics of the checkpoint's step, as saved with it (None if not saved)."""
        return self.check(path).get("record")

    def load(self, path: Path, model: torch.nn.Module, optim: torch.optim.Optimizer) -> int:
        meta = self.check(path)
        model_sd, optim_sd = get_state_dict(model, optim)
        state = {"model": model_sd, "optim": optim_sd}
        try:
            dcp.load(state, checkpoint_id=str(path))
        except (Exception, CheckpointException) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({e}); delete "
                                  "that folder to resume from the one before") from None
        set_state_dict(model, optim, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        return int(meta["step"])

"""Evaluation snapshots: an arm's consolidated weights at regular steps, for curves over
training and the average over its last third (`ftbench eval --snapshots`).

A snapshot is an exported arm in miniature, in the same format as the final export
(ftbench.training.export: model.safetensors, config.json with the weights' sha256,
tokenizer.json), so the evaluator loads it as it loads a finished arm:

    models/<run>/<arm>/snapshots/step-000025/{model.safetensors,config.json,tokenizer.json}

Weights only (no optimiser state), in the run's dtype: bfloat16 where training runs
under bfloat16 autocast, else float32. Under FSDP2 every rank takes part in gathering
the full state dict and rank 0 writes it, so the file holds the weights one process
would have. Each snapshot is written to a temporary folder and renamed into place: a
folder named step-NNNNNN is complete, which lets another job evaluate snapshots while
training goes on. The DCP checkpoints' retention (the last two) does not touch them.
The final export is the run's last point, so no snapshot is written at the last step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ftbench.config.schema import PairConfig

SNAPSHOTS = "snapshots"
POINTS = 30
"""Snapshots over a run when run.snapshot_every is unset."""
_NAME = re.compile(r"^step-(\d{6,})$")


def snapshot_interval(cfg: PairConfig) -> int:
    """Steps between snapshots: run.snapshot_every, else about POINTS over the run; 0: none."""
    every = cfg.run.snapshot_every
    if every is None:
        return max(1, round(cfg.run.steps / POINTS))
    return every


def snapshot_steps(cfg: PairConfig) -> list[int]:
    """The steps that get a snapshot (the last step is the final export's)."""
    every = snapshot_interval(cfg)
    return list(range(every, cfg.run.steps, every)) if every else []


def snapshot_name(step: int) -> str:
    return f"step-{step:06d}"


def snapshot_dir(arm_dir: Path, step: int) -> Path:
    return Path(arm_dir) / SNAPSHOTS / snapshot_name(step)


def snapshot_dtype(cfg: PairConfig, device: torch.device) -> torch.dtype:
    """The run's dtype: what training computes in (bfloat16 under autocast), else float32."""
    from ftbench.training.loop import autocast_dtype

    return autocast_dtype(cfg, device) or torch.float32


def list_snapshots(arm_dir: Path) -> dict[int, Path]:
    """step -> folder of every complete snapshot of an arm (temporary folders are not)."""
    root = Path(arm_dir) / SNAPSHOTS
    if not root.is_dir():
        return {}
    found = {}
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "config.json").is_file():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def run_tokenizer(cfg: PairConfig):
    """The run's prepared tokenizer (models/<run>/data/<key>/), or None where training was
    given tokens directly (then the snapshot holds weights and config only)."""
    from ftbench.data.errors import DataError
    from ftbench.data.pipeline import prepared_directory
    from ftbench.data.tokenizer import Tokenizer

    try:
        return Tokenizer.load(prepared_directory(cfg))
    except (DataError, OSError):
        return None


def write_snapshot(model: torch.nn.Module, arm, cfg: PairConfig, arm_dir: Path, step: int,
                   ctx, tokenizer=None) -> Path | None:
    """Write the arm's weights at `step` to <arm>/snapshots/step-NNNNNN/ (rank 0), atomically.

    Collective under FSDP2: every rank must call it. Returns the folder (None on other
    ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ftbench.training.distributed import wait_for_main

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    final = None
    if ctx.is_main:
        dtype = snapshot_dtype(cfg, ctx.device)
        state = {k: v.detach().to("cpu", dtype) for k, v in state.items()}
        tokens = step * cfg.run.batch_size * cfg.data.seq_len
        extra = {"arm": arm.name, "kappa_bits": arm.kappa_bits, "seed": cfg.run.seed,
                 "snapshot": {"step": step, "tokens": tokens, "run_steps": cfg.run.steps,
                              "dtype": str(dtype).removeprefix("torch."),
                              "tokens_per_step": cfg.run.batch_size * cfg.data.seq_len}}
        final = _publish(state, arm, tokenizer, snapshot_dir(arm_dir, step), extra)
    del state
    wait_for_main(ctx)  # rank 0 writes (3 GB at 1.5B) while the others wait on the host group
    return final


def _publish(state: dict, arm, tokenizer, final: Path, extra: dict) -> Path:
    """Write into step-NNNNNN.tmp, then rename: readers see a complete folder or none."""
    from ftbench.training.export import save_pretrained

    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if tokenizer is not None:
        save_pretrained(state, arm.model, arm.arch, tokenizer, tmp, extra=extra)
    else:
        _save_weights_only(state, arm, tmp, extra)
    if final.exists():
        # A resumed run reaches this step again: its snapshot replaces the earlier one.
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _save_weights_only(state: dict, arm, directory: Path, extra: dict) -> None:
    """save_pretrained's weights and config without a tokenizer."""
    from safetensors.torch import save_file

    from ftbench.model.factory import canonical_name
    from ftbench.training.export import CONFIG, WEIGHTS, file_sha256, publish_mode

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {canonical_name(k): v.contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / WEIGHTS), metadata={"arch": arm.arch})
    publish_mode(directory / WEIGHTS)
    meta = {"arch": arm.arch, "model": asdict(arm.model),
            "weights_sha256": file_sha256(directory / WEIGHTS), **extra}
    (directory / CONFIG).write_text(json.dumps(meta, indent=2))


class Snapshotter:
    """The loop's side: which steps get a snapshot, and the tokenizer, found once."""

    def __init__(self, arm, cfg: PairConfig, arm_dir: Path, ctx, tokenizer=None):
        self.arm, self.cfg, self.arm_dir, self.ctx = arm, cfg, Path(arm_dir), ctx
        self.steps = set(snapshot_steps(cfg))
        self._tokenizer = tokenizer
        self._looked = tokenizer is not None

    def due(self, step: int) -> bool:
        return step in self.steps

    def __call__(self, model: torch.nn.Module, step: int) -> Path | None:
        if not self.due(step):
            return None
        if not self._looked and self.ctx.is_main:
            self._tokenizer = run_tokenizer(self.cfg)
            self._looked = True
        return write_snapshot(model, self.arm, self.cfg, self.arm_dir, step, self.ctx,
                              self._tokenizer)

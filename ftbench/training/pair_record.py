"""What each arm of a pair was given, as digests the report compares across arms.

A matched pair means the same batch at every step (the step records' batch_sha1), the same
initial values for every weight the arms share, the same tokenizer and the same validation
windows. Each arm records its own side when it trains; nothing here compares, so an arm
trained alone, resumed, or on another machine records the same figures.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

INIT_FILE = "init_digests.json"


def validation_window(val: np.ndarray, row: int, seq_len: int) -> np.ndarray:
    """The seq_len + 1 tokens that validation row `row` reads (rows wrap around the split)."""
    n_windows = (len(val) - 1) // seq_len
    start = (row % n_windows) * seq_len
    return np.asarray(val[start:start + seq_len + 1], dtype=np.int64)


def validation_digest(val: np.ndarray, seq_len: int, rows: int) -> str:
    """sha1 of every window validation reads, in row order."""
    h = hashlib.sha1()
    for row in range(rows):
        h.update(validation_window(val, row, seq_len).tobytes())
    return h.hexdigest()[:16]


def _local(t: torch.Tensor) -> torch.Tensor:
    # A DTensor's own shard: two arms sharded over the same ranks hold the same slice of a
    # weight of the same shape, so rank 0's shards match exactly when the weights do.
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


@torch.no_grad()
def weight_digests(model: torch.nn.Module) -> dict[str, str]:
    """sha1 per parameter of its bytes on this rank, one tensor at a time (no full copy)."""
    out = {}
    for name, p in model.named_parameters():
        local = _local(p.detach()).contiguous().cpu().reshape(-1)
        out[name] = hashlib.sha1(local.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return out


def write_init_digests(arm_dir: Path, digests: dict[str, str], world: int) -> None:
    arm_dir.mkdir(parents=True, exist_ok=True)
    path = arm_dir / INIT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"world_size": world, "sha1": digests}, sort_keys=True))
    tmp.replace(path)


def read_init_digests(arm_dir: Path) -> dict | None:
    path = arm_dir / INIT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())

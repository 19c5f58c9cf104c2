"""From a data config and a token budget to a tokenizer and token shards (built once)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ftbench.config.schema import DataConfig
from ftbench.data.builder import build
from ftbench.data.errors import DataError
from ftbench.data.shards import TokenStream, load_index, open_stream
from ftbench.data.tokenizer import Tokenizer


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: TokenStream
    val: TokenStream
    meta: dict
    """The index: shards, tokens and documents per source, the config it was built from."""
    directory: Path


def default_workers() -> int:
    """Builder processes when train-pair prepares the data itself (`ftbench data prepare
    --workers N` sets it explicitly, and is the way for corpora of many GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def data_key(cfg: DataConfig, seed: int, planned: int) -> str:
    # The mirror's location does not change the data; its content is checked by hashes.
    content = dataclasses.asdict(cfg) | {"data_dir": None, "seed": seed, "planned": planned}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def data_directory(cfg: DataConfig, seed: int, planned: int, cache_root: Path) -> Path:
    return cache_root / data_key(cfg, seed, planned)


def open_prepared(directory: Path) -> PreparedData | None:
    """The prepared data in `directory`, or None if its build is not complete."""
    index = load_index(directory)
    if index is None:
        return None
    tok = Tokenizer.load(directory)
    dtype = np.dtype(index["dtype"])
    return PreparedData(tok, open_stream(directory, index["train"]["shards"], dtype),
                        open_stream(directory, index["val"]["shards"], dtype), index, directory)


def prepare_data(cfg: DataConfig, seed: int, cache_root: Path, planned: int | None = None,
                 workers: int = 1, log: Callable[[str], None] = print,
                 progress: bool = True) -> PreparedData:
    """Tokenizer and shards for this data config and `planned` training tokens (default
    data.train_tokens), reusing `cache_root/<key>/` when complete, finishing it if not."""
    planned = planned or cfg.train_tokens
    if not planned:
        raise DataError("data.train_tokens is 0 and no run gives the budget: set "
                        "data.train_tokens, or prepare through a pair config")
    directory = data_directory(cfg, seed, planned, cache_root)
    done = open_prepared(directory)
    if done is not None:
        return done
    build(cfg, seed, planned, directory, workers=workers, log=log, progress=progress,
          key=directory.name)
    return open_prepared(directory)


def prepare_for_run(cfg, workers: int | None = None, log: Callable[[str], None] = print,
                    progress: bool = True) -> PreparedData:
    """The data of a pair config, in models/<run>/data/<key>/: what `ftbench data prepare`
    builds ahead of training and `train-pair` finds (or builds) at its start."""
    from ftbench.data.budget import check_repetition, planned_tokens

    planned = planned_tokens(cfg)
    check_repetition(cfg, planned, "plans")
    root = Path(cfg.run.out_dir) / cfg.run.name / "data"
    return prepare_data(cfg.data, cfg.run.seed, root, planned,
                        workers=workers or default_workers(), log=log, progress=progress)


def prepared_index(cfg) -> dict | None:
    """The index of the run's prepared data, if it was built; None otherwise."""
    return load_index(prepared_directory(cfg))


def prepared_directory(cfg) -> Path:
    from ftbench.data.budget import planned_tokens

    return data_directory(cfg.data, cfg.run.seed, planned_tokens(cfg),
                          Path(cfg.run.out_dir) / cfg.run.name / "data")

"""From a data config to a tokenizer and cached token shards (built once per run)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftbench.config.schema import DataConfig
from ftbench.data import synthetic
from ftbench.data.errors import DataError
from ftbench.data.mirror import go_offline, resolve_data_dir
from ftbench.data.mix import build_mix
from ftbench.data.shards import open_shard, write_meta, write_shard
from ftbench.data.sources import stdlib_version
from ftbench.data.tokenizer import Tokenizer, char_tokenizer, train_bpe


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    meta: dict
    directory: Path


def data_key(cfg: DataConfig, seed: int) -> str:
    # The mirror's location does not change the data; its content is checked by hashes.
    content = dataclasses.asdict(cfg) | {"data_dir": None, "seed": seed}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _train_tokenizer(cfg: DataConfig, texts: list[str]) -> Tokenizer:
    if cfg.tokenizer.kind == "char":
        return char_tokenizer(synthetic.ALPHABET)
    budget, sample = cfg.tokenizer.train_chars, []
    for t in texts:
        if budget <= 0:
            break
        sample.append(t[:budget])
        budget -= len(sample[-1])
    return train_bpe(sample, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)


def prepare_data(cfg: DataConfig, seed: int, cache_root: Path, log=print) -> PreparedData:
    """Tokenizer and shards for this data config, reusing `cache_root/<key>/` if complete."""
    key = data_key(cfg, seed)
    directory = cache_root / key
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        tok = Tokenizer.load(directory)
        return PreparedData(tok, open_shard(directory / "train.bin", tok.vocab_size),
                            open_shard(directory / "val.bin", tok.vocab_size), meta, directory)

    data_dir = resolve_data_dir(cfg.data_dir)
    if data_dir is not None:
        go_offline()
    t0 = time.perf_counter()
    mix = build_mix(cfg, data_dir, seed)
    if not mix.train:
        raise DataError("the mix is empty: every source gave no training text")
    log(f"data: {len(mix.train)} train / {len(mix.val)} validation documents "
        f"({sum(mix.chars_by_source.values()) / 1e6:.1f}M chars) in {time.perf_counter() - t0:.1f}s")
    tok = _train_tokenizer(cfg, [d.text for d in mix.train])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(directory)
    n_train = write_shard(directory / "train.bin", mix.train, tok)
    n_val = write_shard(directory / "val.bin", mix.val, tok)
    meta = {
        "key": key, "vocab_size": tok.vocab_size, "tokenizer_sha256": tok.fingerprint(),
        "train_tokens": n_train, "val_tokens": n_val, "train_docs": len(mix.train),
        "val_docs": len(mix.val), "chars_by_source": mix.chars_by_source,
        "data_dir": str(data_dir) if data_dir else None, "python_stdlib": stdlib_version(),
        "config": dataclasses.asdict(cfg),
    }
    write_meta(meta_path, meta)  # written last: its presence marks a complete cache
    log(f"data: tokenizer vocab {tok.vocab_size}, {n_train / 1e6:.2f}M train / "
        f"{n_val / 1e3:.1f}k validation tokens in {time.perf_counter() - t0:.1f}s")
    return PreparedData(tok, open_shard(directory / "train.bin", tok.vocab_size),
                        open_shard(directory / "val.bin", tok.vocab_size), meta, directory)

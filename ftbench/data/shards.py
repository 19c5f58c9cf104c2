"""Token shards: each split tokenised once, stored as a flat memory-mapped array with an
end-of-text token after every document, and reused by every arm and every resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ftbench.data.errors import DataError
from ftbench.data.sources import Document
from ftbench.data.tokenizer import Tokenizer


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_shard(path: Path, docs: list[Document], tok: Tokenizer, batch: int = 256) -> int:
    dtype = token_dtype(tok.vocab_size)
    tmp = path.with_suffix(".tmp")
    n = 0
    with open(tmp, "wb") as f:
        for s in range(0, len(docs), batch):
            ids = tok.encode_batch([d.text for d in docs[s:s + batch]])
            for row in ids:
                arr = np.asarray(row + [tok.eot_id], dtype=dtype)
                f.write(arr.tobytes())
                n += len(arr)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return n


def open_shard(path: Path, vocab_size: int) -> np.memmap:
    if not path.is_file():
        raise DataError(f"token shard {path} is missing; delete its folder to rebuild it")
    return np.memmap(path, dtype=token_dtype(vocab_size), mode="r")


def write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)

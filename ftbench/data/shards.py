"""Token shards on disk and the flat token stream that training reads through them.

Each unit of work (see ftbench.data.units) becomes one part: `<unit>.train.bin` and
`<unit>.val.bin` (tokens, an end-of-text token after every document) and `<unit>.json`
(token counts, the document table, hashes), written last so its presence marks the part
complete. `index.json` lists, in a fixed order, the parts a run uses and how many tokens
of each; it is written last of all. Readers memory-map the shards: no shard is loaded
whole, and the training corpus may be far larger than memory. A shard is mapped when it is
first read, and only a bounded number of maps stay open, since a large run reads thousands
of shards and every map holds a file descriptor.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftbench.data.errors import DataError

INDEX = "index.json"
INDEX_VERSION = 2
# Well under the usual soft limit of 1024 open files, with room for the rest of a run
# (sockets, checkpoints, the train and the validation stream each holding this many).
MAX_OPEN_MAPS = 64


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Appends token arrays to `<path>.tmp`, hashing as it goes; `close()` renames it."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.h = hashlib.sha256()
        self.tokens = 0

    def append(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self.f.write(data)
        self.h.update(data)
        self.tokens += len(ids)

    def close(self) -> dict:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.tmp.replace(self.path)
        return {"tokens": self.tokens, "bytes": self.path.stat().st_size,
                "sha256": self.h.hexdigest()}


class ShardMaps:
    """Memory maps of shard files, at most `limit` open at once.

    The least recently read map is dropped first. A dropped map closes its file descriptor
    when nothing refers to it any more, which is why TokenStream hands out copies, never
    views into a map."""

    def __init__(self, limit: int = MAX_OPEN_MAPS):
        self.limit = limit
        self.maps: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path, dtype) -> np.ndarray:
        arr = self.maps.get(path)
        if arr is not None:
            self.maps.move_to_end(path)
            return arr
        # mmap over np.memmap: a random batch maps a new shard for most rows, and this is
        # several times cheaper to set up. The mmap keeps its own duplicate of the fd.
        with open(path, "rb") as f:
            arr = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype)
        self.maps[path] = arr
        if len(self.maps) > self.limit:
            self.maps.popitem(last=False)
        return arr


@dataclass
class Span:
    """The first `tokens` tokens of one shard file, starting at global offset `start`."""

    path: Path
    tokens: int
    start: int
    dtype: np.dtype
    maps: ShardMaps = field(repr=False, compare=False)

    @property
    def array(self) -> np.ndarray:
        """The whole shard file, mapped on first use. Hold it only while reading: a kept
        reference keeps its file open after the map is dropped."""
        return self.maps.get(self.path, self.dtype)


class TokenStream:
    """The concatenation of several shards, sliced like one flat array.

    `stream[a:b]` copies only the tokens asked for, so a window that crosses a shard
    boundary reads from two memory maps; len() is the total token count.
    """

    def __init__(self, spans: list[Span]):
        self.spans = spans
        self.starts = [s.start for s in spans]
        self.total = spans[-1].start + spans[-1].tokens if spans else 0
        self.dtype = np.dtype(spans[0].dtype if spans else np.uint16)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.total if key < 0 else 0)
            if not 0 <= i < self.total:
                raise IndexError(key)
            s = self.spans[bisect.bisect_right(self.starts, i) - 1]
            return s.array[i - s.start]
        start, stop, step = key.indices(self.total)
        if step != 1:
            raise ValueError("TokenStream slices must be contiguous")
        out, i = [], start
        while i < stop:
            s = self.spans[bisect.bisect_right(self.starts, i) - 1]
            j = min(stop, s.start + s.tokens)
            out.append(s.array[i - s.start:j - s.start])
            i = j
        if not out:
            return np.empty(0, dtype=self.dtype)
        # A copy even from one shard: a view would keep the map's file open after eviction.
        return np.array(out[0]) if len(out) == 1 else np.concatenate(out)

    def locate(self, i: int) -> tuple[Span, int]:
        """The span holding global token i, and i's offset in that shard."""
        s = self.spans[bisect.bisect_right(self.starts, i) - 1]
        return s, i - s.start


def open_stream(directory: Path, entries: list[dict], dtype,
                max_open: int = MAX_OPEN_MAPS) -> TokenStream:
    """The shards an index lists as one stream, checking each file's recorded size now and
    mapping each file when it is first read (at most `max_open` maps at a time)."""
    maps, spans, start = ShardMaps(max_open), [], 0
    for e in entries:
        path = directory / e["path"]
        if not path.is_file():
            raise DataError(f"token shard {path} is missing; rerun `ftbench data prepare` "
                            "(complete parts are kept) to rebuild it")
        size = path.stat().st_size
        if size != e["bytes"]:
            raise DataError(f"token shard {path} is corrupt: {size} bytes, the index records "
                            f"{e['bytes']}. Delete it and rerun `ftbench data prepare`: only "
                            "the missing part is rebuilt")
        if e["tokens"]:
            spans.append(Span(path, e["tokens"], start, np.dtype(dtype), maps))
            start += e["tokens"]
    return TokenStream(spans)


def verify_shards(directory: Path, index: dict) -> list[str]:
    """Every shard's size and sha256 against the index: the list of problems (empty: ok)."""
    problems = []
    for split in ("train", "val"):
        for e in index[split]["shards"]:
            path = directory / e["path"]
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != e["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes, recorded {e['bytes']}")
            elif file_sha256(path) != e["sha256"]:
                problems.append(f"{path}: sha256 differs from the recorded one (corrupt bytes)")
    return problems


def load_index(directory: Path) -> dict | None:
    path = directory / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}); delete it and rerun `ftbench "
                        "data prepare` (complete parts are kept)") from None
    if index.get("version") != INDEX_VERSION:
        raise DataError(f"{path} was written by another ftbench version (index version "
                        f"{index.get('version')}, this one reads {INDEX_VERSION}); delete "
                        f"{directory} to rebuild")
    return index


def trace_token(directory: Path, index: dict, stream: TokenStream, i: int) -> dict:
    """Where global training token i comes from: source, document id, offset in it."""
    span, offset = stream.locate(i)
    part = json.loads(span.path.with_name(span.path.name.replace(".train.bin", ".json"))
                      .read_text())
    starts = part["train_docs"]["starts"]
    d = bisect.bisect_right(starts, offset) - 1
    return {"source": part["source_label"], "doc_id": part["train_docs"]["ids"][d],
            "token_in_doc": offset - starts[d], "shard": span.path.name}

"""Units of work: each source cut into fixed pieces that are read and tokenised independently.

A unit is a bounded slice of one source (a byte range of a JSON Lines file, a Parquet row
group, a group of text files, a file of a hub dataset, a block of synthetic documents).
Units are planned from the source alone, before anything is tokenised, and visited in an
order seeded by (seed, source): taking the first units of that order until a source's token
quota is met is a seeded random sample of the source, not its first N documents. Workers
only change who reads a unit, never what it holds, so the output does not depend on the
number of workers. Inside a unit the documents are shuffled with a seed of their own (a
unit is small enough to hold: `data.unit_mb`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ftbench.config.schema import SourceConfig
from ftbench.data import synthetic
from ftbench.data.errors import DataError
from ftbench.data.mirror import check_hub_reachable, resolve_path

STDLIB_SKIP = ("test", "tests", "idlelib", "site-packages")
SYNTHETIC_DOCS_PER_UNIT = 20_000
# Bounded: planning a JSON Lines file streams it once and keeps one offset per unit.
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str


def _portable(locator: dict) -> dict:
    """The locator with its root dropped and its paths made relative to that root."""
    root = locator.get("root")
    if root is None:
        return locator
    root = Path(root)

    def rel(f: str) -> str:
        f = Path(f)
        if not f.is_absolute():
            return f.as_posix()
        return f.name if f == root else f.relative_to(root).as_posix()

    out = {k: v for k, v in locator.items() if k != "root"}
    if "file" in out:
        out["file"] = rel(out["file"])
    if "files" in out:
        out["files"] = [rel(f) for f in out["files"]]
    return out


@dataclass(frozen=True)
class Unit:
    """One piece of one source. `locator` says where its documents are (kind-specific)."""

    source: int
    kind: str
    locator: dict

    def key(self) -> str:
        """A stable name for the unit, which also seeds its document shuffle. It names files
        relative to the source's root, so a mirror moved or copied elsewhere gives the same
        keys and therefore the same shards."""
        blob = json.dumps([self.source, self.kind, _portable(self.locator)], sort_keys=True)
        return f"s{self.source:02d}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "Unit":
        return Unit(int(d["source"]), d["kind"], d["locator"])


def source_label(src: SourceConfig, index: int) -> str:
    name = src.hf_id or src.path or src.kind
    return f"{index}:{src.kind}:{name}"


def is_validation(doc_id: str, fraction: float) -> bool:
    """Held out by a hash of the document id: stable whatever else is in the mix."""
    if not fraction:
        return False
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


# --- planning ------------------------------------------------------------------------------

def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _plan_lines(path: Path, unit_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges (of the decompressed stream) that each start at a line start."""
    ranges, start, pos = [], 0, 0
    with _open_binary(path) as f:
        for line in f:
            pos += len(line)
            if pos - start >= unit_bytes:
                ranges.append((start, pos))
                start = pos
    if pos > start:
        ranges.append((start, pos))
    return ranges


def _files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
    if not found:
        raise DataError(f"{path}: no files matching {', '.join(patterns)}")
    return found


def _group_files(files: list[Path], unit_bytes: int) -> list[list[str]]:
    groups, current, size = [], [], 0
    for f in files:
        current.append(str(f))
        size += f.stat().st_size
        if size >= unit_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _python_files(root: Path, skip: tuple[str, ...]) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py"))
            if not any(part in skip for part in p.relative_to(root).parts[:-1])]


def plan_source(src: SourceConfig, index: int, data_dir: Path | None, unit_bytes: int,
                seed: int) -> list[Unit] | None:
    """Every unit of a finite source in its seeded visiting order; None for an endless one
    (synthetic, whose units are numbered 0, 1, 2, ...)."""
    k = src.kind
    if k == "synthetic":
        return None
    if k in ("jsonl", "gsm8k"):
        path = resolve_path(src.path or "gsm8k/train.jsonl", data_dir)
        units = [Unit(index, k, {"root": str(path), "file": str(f), "start": a, "end": b})
                 for f in _files(path, ("*.jsonl", "*.jsonl.gz", "*.json.gz"))
                 for a, b in _plan_lines(f, unit_bytes)]
    elif k == "parquet":
        units = _plan_parquet(src, index, resolve_path(src.path, data_dir), unit_bytes)
    elif k == "text":
        path = resolve_path(src.path, data_dir)
        units = [Unit(index, k, {"root": str(path), "files": g})
                 for g in _group_files(_files(path, ("*.txt",)), unit_bytes)]
    elif k in ("python_tree", "stdlib"):
        root = (Path(sysconfig.get_paths()["stdlib"]) if k == "stdlib"
                else resolve_path(src.path, data_dir))
        files = _python_files(root, STDLIB_SKIP if k == "stdlib" else ())
        units = [Unit(index, k, {"root": str(root), "files": [str(Path(f).relative_to(root))
                                                                for f in g]})
                 for g in _group_files(files, unit_bytes)]
    elif k == "hf":
        units = _plan_hf(src, index, data_dir)
    else:  # validated earlier; kept for direct callers
        raise DataError(f"unknown source kind {k!r}")
    if not units:
        raise DataError(f"source {source_label(src, index)} is empty: no documents to read")
    random.Random(f"units:{seed}:{index}").shuffle(units)
    return units


def synthetic_unit(index: int, number: int) -> Unit:
    return Unit(index, "synthetic", {"block": number})


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet sources need pyarrow: pip install pyarrow (it comes with "
                        "`datasets`)") from None
    return pq


def _plan_parquet(src: SourceConfig, index: int, path: Path, unit_bytes: int) -> list[Unit]:
    pq = _pyarrow_parquet()

    units = []
    for f in _files(path, ("*.parquet",)):
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:
            raise DataError(f"{f}: not a readable Parquet file ({e})") from None
        names = meta.schema.names
        if src.text_field not in names:
            raise DataError(f"{f}: no column {src.text_field!r} (columns: {', '.join(names)}); "
                            f"set text_field in the source")
        group, size = [], 0
        for g in range(meta.num_row_groups):
            group.append(g)
            size += meta.row_group(g).total_byte_size
            if size >= unit_bytes:
                units.append(Unit(index, "parquet", {"root": str(path), "file": str(f),
                                                     "row_groups": group}))
                group, size = [], 0
        if group:
            units.append(Unit(index, "parquet", {"root": str(path), "file": str(f),
                                                 "row_groups": group}))
    return units


def _hf_stream(src: SourceConfig):
    check_hub_reachable()
    try:
        import datasets
    except ImportError:
        raise DataError("hf sources need the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(src.hf_id, src.hf_config or None, split=src.hf_split,
                                     streaming=True, revision=src.hf_revision or None)
    except Exception as e:  # network, auth, missing config: all end here
        raise DataError(f"source {src.hf_id}: cannot stream it from the hub ({e}). Check the "
                        "network, or use a local mirror with --data-dir.") from None


def _plan_hf(src: SourceConfig, index: int, data_dir: Path | None) -> list[Unit]:
    if data_dir is not None:
        raise DataError(f"source {source_label(src, index)}: hf sources need the Hugging Face "
                        "hub, but a local data mirror is in use (offline). Download the dataset's "
                        "Parquet files once and use a parquet source instead.")
    # A hub dataset's units are its files: a seeded choice of files, each read through a
    # seeded shuffle buffer (see read_unit), is a reproducible random sample of the stream.
    n = _hf_stream(src).n_shards
    return [Unit(index, "hf", {"shard": i, "of": n}) for i in range(n)]


# --- reading -------------------------------------------------------------------------------

def _lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    with _open_binary(path) as f:
        f.seek(start)  # gzip seeks forward by decompressing: bounded memory
        pos = start
        while pos < end:
            line = f.readline()
            if not line:
                break
            yield pos, line
            pos += len(line)


def _jsonl_docs(unit: Unit, src: SourceConfig, label: str) -> Iterator[Document]:
    path = Path(unit.locator["file"])
    for pos, line in _lines(path, unit.locator["start"], unit.locator["end"]):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} at byte {pos}: not valid JSON ({e.msg})") from None
        if unit.kind == "gsm8k":
            yield Document(f"gsm8k-train:{path.name}:{pos}",
                           f"Question: {obj['question']}\nAnswer: {obj['answer']}", label)
            continue
        if src.text_field not in obj:
            raise DataError(f"{path} at byte {pos}: no field {src.text_field!r} (fields: "
                            f"{', '.join(obj)}); set text_field in the source")
        yield Document(str(obj.get("id", f"{path.name}:{pos}")), obj[src.text_field], label)


def _parquet_docs(unit: Unit, src: SourceConfig, label: str) -> Iterator[Document]:
    pq = _pyarrow_parquet()

    path = Path(unit.locator["file"])
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if src.text_field not in names:
        raise DataError(f"{path}: no column {src.text_field!r} (columns: {', '.join(names)}); "
                        "set text_field in the source")
    id_col = "id" if "id" in names else None
    cols = [src.text_field] + ([id_col] if id_col else [])
    row = sum(pf.metadata.row_group(g).num_rows for g in range(min(unit.locator["row_groups"])))
    for g in unit.locator["row_groups"]:
        table = pf.read_row_group(g, columns=cols)
        texts = table.column(src.text_field).to_pylist()
        ids = table.column(id_col).to_pylist() if id_col else [None] * len(texts)
        for i, (text, doc_id) in enumerate(zip(texts, ids)):
            if text:
                yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{row + i}",
                               text, label)
        row += len(texts)


def _text_docs(unit: Unit, label: str) -> Iterator[Document]:
    for f in unit.locator["files"]:
        yield Document(f"{label}:{Path(f).name}", Path(f).read_text(encoding="utf-8"), label)


def _python_docs(unit: Unit, label: str) -> Iterator[Document]:
    root = Path(unit.locator["root"])
    for rel in unit.locator["files"]:
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are deliberately not UTF-8
        yield Document(f"{label}:{rel}", text, label)


def _synthetic_docs(unit: Unit, seed: int, label: str) -> Iterator[Document]:
    block = unit.locator["block"]
    rng = random.Random(f"synthetic:{seed}:{unit.source}:{block}")
    for i in range(SYNTHETIC_DOCS_PER_UNIT):
        yield Document(f"synthetic:{seed}:{unit.source}:{block}:{i}", synthetic.sample(rng), label)


def _hf_docs(unit: Unit, src: SourceConfig, seed: int, label: str) -> Iterator[Document]:
    stream = _hf_stream(src).shard(num_shards=unit.locator["of"], index=unit.locator["shard"])
    stream = stream.shuffle(seed=seed + 1000 * unit.source + unit.locator["shard"],
                            buffer_size=src.shuffle_buffer)
    for i, row in enumerate(stream):
        if src.text_field not in row:
            raise DataError(f"source {src.hf_id}: no field {src.text_field!r} (fields: "
                            f"{', '.join(row)}); set text_field in the source")
        yield Document(str(row.get("id") or f"{src.hf_id}:{unit.locator['shard']}:{i}"),
                       row[src.text_field], label)


def read_unit(unit: Unit, src: SourceConfig, seed: int) -> Iterable[Document]:
    """The unit's documents, shuffled with a seed of their own. A local unit is bounded by
    data.unit_mb and held whole; a hub file streams through its shuffle buffer."""
    label = source_label(src, unit.source)
    k = unit.kind
    if k in ("jsonl", "gsm8k"):
        docs = _jsonl_docs(unit, src, label)
    elif k == "parquet":
        docs = _parquet_docs(unit, src, label)
    elif k == "text":
        docs = _text_docs(unit, label)
    elif k in ("python_tree", "stdlib"):
        docs = _python_docs(unit, label)
    elif k == "synthetic":
        # Already i.i.d.; keep generation order (no shuffle needed).
        return _synthetic_docs(unit, seed, label)
    elif k == "hf":
        return _hf_docs(unit, src, seed, label)  # shuffled by the buffer
    else:
        raise DataError(f"unknown unit kind {k!r}")
    out = [d for d in docs if d.text]
    random.Random(f"docs:{seed}:{unit.key()}").shuffle(out)
    return out


def stdlib_version() -> str:
    return sys.version.split()[0]

"""Documents from each kind of source, in a fixed order."""

from __future__ import annotations

import gzip
import io
import json
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftbench.config.schema import SourceConfig
from ftbench.data import synthetic
from ftbench.data.errors import DataError
from ftbench.data.mirror import check_hub_reachable, resolve_path

STDLIB_SKIP = ("test", "tests", "idlelib", "site-packages")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: Path, text_field: str, label: str) -> Iterator[Document]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if text_field not in obj:
                raise DataError(f"{path}:{lineno}: no field {text_field!r} (fields: "
                                f"{', '.join(obj)}); set text_field in the source")
            yield Document(str(obj.get("id", f"{path.name}:{lineno}")), obj[text_field], label)


def iter_python_tree(root: Path, label: str, skip=STDLIB_SKIP) -> Iterator[Document]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are deliberately not UTF-8
        yield Document(f"{label}:{rel.as_posix()}", text, label)


def iter_text(path: Path, label: str) -> Iterator[Document]:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    for f in files:
        yield Document(f"{label}:{f.name}", f.read_text(encoding="utf-8"), label)


def iter_gsm8k(path: Path, label: str) -> Iterator[Document]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            obj = json.loads(line)
            yield Document(f"gsm8k-train:{lineno}",
                           f"Question: {obj['question']}\nAnswer: {obj['answer']}", label)


def iter_synthetic(seed: int, label: str) -> Iterator[Document]:
    rng = random.Random(seed)
    i = 0
    while True:
        yield Document(f"synthetic:{seed}:{i}", synthetic.sample(rng), label)
        i += 1


def iter_hf(src: SourceConfig, label: str, offline: bool) -> Iterator[Document]:
    if offline:
        raise DataError(f"source {label}: hf sources need the Hugging Face hub, but a local data "
                        "mirror is in use (offline). Download the stream to JSON Lines once and "
                        "use a jsonl source instead.")
    check_hub_reachable()
    try:
        import datasets
    except ImportError:
        raise DataError("hf sources need the `datasets` package: pip install datasets") from None
    try:
        stream = datasets.load_dataset(src.hf_id, src.hf_config or None, split=src.hf_split,
                                       streaming=True)
        for i, row in enumerate(stream):
            yield Document(f"{src.hf_id}:{i}", row[src.text_field], label)
    except Exception as e:  # network, auth, missing config: all end here
        raise DataError(f"source {label}: cannot stream {src.hf_id!r} from the hub ({e}). "
                        "Check the network, or use a local mirror with --data-dir.") from None


def source_label(src: SourceConfig, index: int) -> str:
    name = src.hf_id or src.path or src.kind
    return f"{index}:{src.kind}:{name}"


def iter_source(src: SourceConfig, index: int, data_dir: Path | None,
                seed: int) -> Iterator[Document]:
    label = source_label(src, index)
    if src.kind == "jsonl":
        docs = iter_jsonl(resolve_path(src.path, data_dir), src.text_field, label)
    elif src.kind == "text":
        docs = iter_text(resolve_path(src.path, data_dir), label)
    elif src.kind == "python_tree":
        docs = iter_python_tree(resolve_path(src.path, data_dir), label, skip=())
    elif src.kind == "stdlib":
        docs = iter_python_tree(Path(sysconfig.get_paths()["stdlib"]), label)
    elif src.kind == "gsm8k":
        docs = iter_gsm8k(resolve_path(src.path or "gsm8k/train.jsonl", data_dir), label)
    elif src.kind == "synthetic":
        docs = iter_synthetic(seed + 1000 * index, label)
    elif src.kind == "hf":
        docs = iter_hf(src, label, offline=data_dir is not None)
    else:  # validated earlier; kept for direct callers
        raise DataError(f"unknown source kind {src.kind!r}")
    for i, doc in enumerate(docs):
        if src.max_docs and i >= src.max_docs:
            return
        yield doc


def stdlib_version() -> str:
    return sys.version.split()[0]

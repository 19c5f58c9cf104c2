"""13-gram overlap between the prepared training text and every benchmark's items.

The GPT-3 recipe: text is lower-cased and every run of characters other than letters and
digits becomes one space; an item is contaminated when any of its 13-word n-grams occurs
in the training text. An item shorter than 13 words counts when the whole item occurs.
Both arms of a pair read the same data, so contamination does not bias the paired gain;
it changes what an absolute score means (code corpora are known to hold HumanEval-like
functions).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ftbench.data.errors import DataError
from ftbench.data.shards import write_json

N = 13
REPORT = "contamination.json"
_NON_WORD = re.compile(r"[^0-9a-z]+")

# (benchmark, mirror path, online dataset ID for `datasets`)
BENCHMARKS = {
    "humanevalplus": ("humanevalplus/HumanEvalPlus.jsonl.gz", "evalplus/humanevalplus"),
    "mbppplus": ("mbppplus/MbppPlus.jsonl.gz", "evalplus/mbppplus"),
    "gsm8k": ("gsm8k/test.jsonl", "openai/gsm8k"),
    "mmlu": ("mmlu/data/test", "cais/mmlu"),
    "commonsense_qa": ("commonsenseqa/dev_rand_split.jsonl", "tau/commonsense_qa"),
}


def words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", text.lower()).split()


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _items_offline(name: str, root: Path) -> Iterator[tuple[str, str]]:
    path = root / BENCHMARKS[name][0]
    if not path.exists():
        raise DataError(f"contamination: {path} is missing from the data mirror")
    if name in ("humanevalplus", "mbppplus"):
        for r in _jsonl(path):
            yield r["task_id"], r["prompt"] + "\n" + r["canonical_solution"]
    elif name == "gsm8k":
        for i, r in enumerate(_jsonl(path)):
            yield f"gsm8k/test/{i}", r["question"] + "\n" + r["answer"]
    elif name == "mmlu":
        for f in sorted(path.glob("*_test.csv")):
            with open(f, newline="", encoding="utf-8") as fh:
                for i, row in enumerate(csv.reader(fh)):
                    yield f"{f.stem}/{i}", " ".join(row[:5])
    else:
        for r in _jsonl(path):
            q = r["question"]
            yield r["id"], q["stem"] + " " + " ".join(c["text"] for c in q["choices"])


def _items_online(name: str) -> Iterator[tuple[str, str]]:
    import datasets

    hub_id = BENCHMARKS[name][1]
    if name in ("humanevalplus", "mbppplus"):
        for r in datasets.load_dataset(hub_id, split="test"):
            yield r["task_id"], r["prompt"] + "\n" + r["canonical_solution"]
    elif name == "gsm8k":
        for i, r in enumerate(datasets.load_dataset(hub_id, "main", split="test")):
            yield f"gsm8k/test/{i}", r["question"] + "\n" + r["answer"]
    elif name == "mmlu":
        for i, r in enumerate(datasets.load_dataset(hub_id, "all", split="test")):
            yield f"{r['subject']}/{i}", " ".join([r["question"], *r["choices"]])
    else:
        for r in datasets.load_dataset(hub_id, split="validation"):
            yield r["id"], r["question"] + " " + " ".join(r["choices"]["text"])


class NgramIndex:
    """Every item's n-grams (hashed), mapped back to the items that hold them."""

    def __init__(self, n: int = N):
        self.n = n
        # n-gram length -> hash -> owner number (a tuple of them for shared n-grams): one
        # int per n-gram keeps the 2M n-grams of the five benchmarks in ~200 MB.
        self.owners: dict[int, dict[int, int | tuple]] = defaultdict(dict)
        self.owner_names: list[tuple[str, str]] = []
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, benchmark: str, item_id: str, text: str) -> None:
        w = words(text)
        if not w:
            return
        self.items[benchmark].append(item_id)
        me = len(self.owner_names)
        self.owner_names.append((benchmark, item_id))
        k = min(self.n, len(w))  # short items count when they occur whole
        table = self.owners[k]
        for i in range(len(w) - k + 1):
            h = hash(tuple(w[i:i + k]))
            had = table.get(h)
            if had is None:
                table[h] = me
            elif had != me and not (isinstance(had, tuple) and me in had):
                table[h] = (*had, me) if isinstance(had, tuple) else (had, me)

    def hits(self, text: str) -> set[tuple[str, str]]:
        w = words(text)
        found: set[int] = set()
        for k, table in self.owners.items():
            for i in range(len(w) - k + 1):
                o = table.get(hash(tuple(w[i:i + k])))
                if o is not None:
                    found.update(o) if isinstance(o, tuple) else found.add(o)
        return {self.owner_names[o] for o in found}


def benchmark_index(mirror: Path | None, names=tuple(BENCHMARKS)) -> NgramIndex:
    index = NgramIndex()
    for name in names:
        items = _items_offline(name, mirror) if mirror is not None else _items_online(name)
        for item_id, text in items:
            index.add(name, item_id, text)
    return index


def training_documents(prepared, fraction: float) -> Iterator[str]:
    """The training text document by document, from the first `fraction` of every shard
    (so a partial scan still covers every source)."""
    tok = prepared.tokenizer
    for span in prepared.train.spans:
        stop = int(np.ceil(span.tokens * fraction))
        arr = np.asarray(span.array[:stop])
        ends = np.flatnonzero(arr == tok.eot_id)
        start = 0
        for end in [*ends.tolist(), len(arr)]:
            if end > start:
                yield tok.decode(arr[start:end].tolist())
            start = end + 1


def measure(prepared, mirror: Path | None, max_tokens: int = 0,
            log: Callable[[str], None] = print, index: NgramIndex | None = None) -> dict:
    """Per benchmark, the share of items with a 13-gram in the training text; written to
    <data dir>/contamination.json (atomically) and returned."""
    t0 = time.perf_counter()
    index = index or benchmark_index(mirror)
    total = len(prepared.train)
    fraction = 1.0 if not max_tokens or max_tokens >= total else max_tokens / total
    hit: dict[str, set[str]] = defaultdict(set)
    scanned_docs = 0
    for text in training_documents(prepared, fraction):
        scanned_docs += 1
        for bench, item in index.hits(text):
            hit[bench].add(item)
    out = {"ngram": N, "normalisation": "lower case; runs of characters other than a-z and 0-9 "
                                        "become one space; items under 13 words match whole",
           "data_key": prepared.meta.get("key"), "training_tokens": total,
           "fraction_scanned": fraction, "documents_scanned": scanned_docs,
           "benchmarks": {}}
    for bench, items in index.items.items():
        found = sorted(hit[bench])
        out["benchmarks"][bench] = {"items": len(items), "contaminated": len(found),
                                    "share": len(found) / len(items), "examples": found[:20]}
    write_json(prepared.directory / REPORT, out)
    log(f"contamination: scanned {fraction:.0%} of {total:,} training tokens in "
        f"{time.perf_counter() - t0:.1f}s -> {prepared.directory / REPORT}")
    return out


def load_report(directory: Path) -> dict | None:
    path = directory / REPORT
    return json.loads(path.read_text()) if path.is_file() else None


"""`kind: hf` sources, streamed from a local server that answers as the Hugging Face hub.

The dataset is a handful of Parquet files written here from the corpus's TinyStories text;
the same files are read once through the hub (HF_ENDPOINT pointed at the server) and once
as a local `kind: parquet` source. Each build runs in its own process, because
`huggingface_hub` and `datasets` read HF_ENDPOINT and the offline switches when imported.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.hub_server import HubServer

REPO = "ftbench-test/tiny-stories"
ROOT = Path(__file__).resolve().parents[2]

BUILD = r"""
import json, sys
from pathlib import Path
from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
from ftbench.data.errors import DataError
from ftbench.data.pipeline import prepare_data

# `datasets` sleeps 5 s after each streamed file (a guard for Arrow's threads at shutdown):
# irrelevant to what is read, and 5 s per unit here.
import datasets.config
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
spec = json.loads(sys.argv[1])
cfg = DataConfig(sources=[SourceConfig(**spec["source"])], train_tokens=spec["tokens"],
                 val_fraction=0.2, unit_mb=1.0,
                 tokenizer=TokenizerConfig(vocab_size=400, train_chars=10**7))
try:
    prepared = prepare_data(cfg, 7, Path(spec["out"]), workers=spec["workers"],
                            progress=False, log=lambda m: None)
except DataError as e:
    print("DataError:", " ".join(str(e).split()))
    sys.exit(3)
print(prepared.directory)
"""


def _stories(data_dir: Path, n: int) -> list[dict]:
    with gzip.open(data_dir / "corpus/tinystories_subset.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(n))]
    return [{"id": r["id"], "text": r["text"]} for r in rows]


def _write_parquet(folder: Path, docs: list[dict], per_file: int) -> dict[str, Path]:
    """Parquet files named as the hub names a converted split: data/train-NNNNN-of-NNNNN."""
    folder.mkdir(parents=True)
    chunks = [docs[i:i + per_file] for i in range(0, len(docs), per_file)]
    files = {}
    for i, chunk in enumerate(chunks):
        path = folder / f"train-{i:05d}-of-{len(chunks):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk), path)
        files[f"data/{path.name}"] = path
    return files


def _build(tmp: Path, source: dict, tokens: int, name: str, env: dict, workers: int = 1,
           fails: bool = False) -> Path | str:
    spec = {"source": source, "tokens": tokens, "out": str(tmp / name), "workers": workers}
    env = {k: v for k, v in {**os.environ, **env}.items()
           if k not in ("FTBENCH_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    res = subprocess.run([sys.executable, "-c", BUILD, json.dumps(spec)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if fails:
        assert res.returncode == 3, res.stderr[-3000:]
        return res.stdout
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(res.stdout.strip().splitlines()[-1])


def _stream(directory: Path, split: str) -> tuple[bytes, list[str]]:
    """The split's tokens as the index lists them (each shard cut at its recorded count),
    and the tokenizer file."""
    index = json.loads((directory / "index.json").read_text())
    dtype = np.dtype(index["dtype"])
    out = b"".join(np.fromfile(directory / e["path"], dtype=dtype)[:e["tokens"]].tobytes()
                   for e in index[split]["shards"])
    return out, index


@pytest.fixture()
def hub_env(tmp_path):
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": str(ROOT)}


CARD = """---
configs:
- config_name: other
  data_files:
  - split: train
    path: other/*.parquet
- config_name: sample-10
  data_files:
  - split: train
    path: sample/10/*.parquet
---
A dataset card whose configs name folders of Parquet files, as large hub datasets do;
the first is the one read when no config is named.
"""


def test_hf_source_prepares_the_same_shards_as_its_parquet_files(tmp_path, data_dir, hub_env):
    # One story per file: every unit of both kinds is one document, so the order of
    # documents is fixed by the seeded order of files alone, the same for both kinds.
    files = _write_parquet(tmp_path / "parquet", _stories(data_dir, 10), per_file=1)
    decoy = _write_parquet(tmp_path / "other", _stories(data_dir, 20)[10:], per_file=5)
    (tmp_path / "README.md").write_text(CARD)
    repo = {"README.md": tmp_path / "README.md",
            **{p.replace("data/", "sample/10/"): f for p, f in files.items()},
            **{p.replace("data/", "other/"): f for p, f in decoy.items()}}
    with HubServer(REPO, repo) as hub:
        hf = _build(tmp_path, {"kind": "hf", "hf_id": REPO, "hf_config": "sample-10",
                               "shuffle_buffer": 100}, 1200, "hf",
                    {**hub_env, "HF_ENDPOINT": hub.url})
        asked = {r.path for r in hub.requests}
    local = _build(tmp_path, {"kind": "parquet", "path": str(tmp_path / "parquet")}, 1200,
                   "parquet", hub_env)
    # The data went through the hub's file endpoint, not around it.
    assert any(p.startswith(f"/datasets/{REPO}/resolve/") and p.endswith(".parquet")
               for p in asked)
    assert (hf / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()
    for split in ("train", "val"):
        a, ia = _stream(hf, split)
        b, ib = _stream(local, split)
        assert len(a) > 0 and a == b, split
        assert [e["sha256"] for e in ia[split]["shards"]] == \
               [e["sha256"] for e in ib[split]["shards"]]
    assert ia["train"]["tokens"] == 1200
    assert ia["sources"][0]["docs"] == ib["sources"][0]["docs"] > 1


def _documents(directory: Path) -> collections.Counter:
    """Every training document of a build as (id, its tokens), wherever it sits."""
    index = json.loads((directory / "index.json").read_text())
    dtype = np.dtype(index["dtype"])
    docs = collections.Counter()
    for e in index["train"]["shards"]:
        meta = json.loads((directory / e["path"].replace(".train.bin", ".json")).read_text())
        tokens = np.fromfile(directory / e["path"], dtype=dtype)[:e["tokens"]]
        starts = meta["train_docs"]["starts"] + [len(tokens)]
        for doc_id, a, b in zip(meta["train_docs"]["ids"], starts, starts[1:]):
            if a < len(tokens):
                docs[(doc_id, tokens[a:b].tobytes())] += 1
    return docs


def test_hf_source_holds_the_same_documents_as_its_parquet_files(tmp_path, data_dir, hub_env):
    """Several stories per file, two workers: inside a file the hub stream's seeded buffer
    orders documents differently from a local unit's shuffle, but a build that takes every
    document has the same documents, each with the same tokens."""
    files = _write_parquet(tmp_path / "parquet", _stories(data_dir, 60), per_file=12)
    local_src = {"kind": "parquet", "path": str(tmp_path / "parquet")}
    # Every training token of the source: the builder says how many it holds when asked
    # for more.
    msg = _build(tmp_path, local_src, 10**9, "count", hub_env, fails=True)
    total = int(re.search(r"holds ([\d,]+) tokens", msg).group(1).replace(",", ""))
    local = _build(tmp_path, local_src, total, "parquet", hub_env, workers=2)
    with HubServer(REPO, files) as hub:
        hf = _build(tmp_path, {"kind": "hf", "hf_id": REPO, "shuffle_buffer": 5}, total, "hf",
                    {**hub_env, "HF_ENDPOINT": hub.url}, workers=2)
    assert (hf / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()
    a, b = _documents(hf), _documents(local)
    assert sum(a.values()) == json.loads((hf / "index.json").read_text())["sources"][0]["docs"]
    assert len(a) > 40 and a == b

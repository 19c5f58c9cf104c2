"""The streaming, parallel shard builder behind `ftbench data prepare` and `train-pair`.

1. Plan: every source is cut into units (ftbench.data.units) visited in a seeded order;
   each source gets a quota of training tokens (its weight's share of the plan).
2. Tokenizer: trained once on a bounded sample drawn across the sources by weight.
3. Units are tokenised by `workers` processes, each into its own part files, written
   atomically. A source takes its units in order until its quota is met; the last unit
   is cut at the exact token. Which worker tokenised a unit never changes what is in it,
   so the output is byte-identical for any worker count.
4. The index (written last) lists the parts used, in order; parts tokenised speculatively
   by busy workers and not needed are removed.

A killed build keeps every complete part (its .json written last, its files checked
against the recorded sizes and hashes) and continues from there when rerun.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ftbench.config.schema import DataConfig, SourceConfig
from ftbench.data import synthetic
from ftbench.data.budget import quotas
from ftbench.data.encoder import BulkEncoder
from ftbench.data.errors import DataError
from ftbench.data.mirror import go_offline, resolve_data_dir
from ftbench.data.shards import (INDEX, INDEX_VERSION, ShardWriter, file_sha256, token_dtype,
                                 write_atomic, write_json)
from ftbench.data.tokenizer import Tokenizer, char_tokenizer, train_bpe
from ftbench.data.units import (Unit, is_validation, plan_source, read_unit, source_label,
                                stdlib_version, synthetic_unit)

PARTS = "parts"
PLAN = "plan.json"
BATCH_CHARS = 1 << 20  # text encoded per call: bounds the token lists held at once


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to turn one unit into its part (picklable)."""

    unit: dict
    source: SourceConfig
    label: str
    seed: int
    val_fraction: float
    quota: int
    max_docs: int
    parts_dir: str
    tokenizer_file: str


# --------------------------------------------------------------------------- one unit

def val_share(quota: int, fraction: float) -> int:
    """Validation tokens of a source: its share of the training quota."""
    return int(np.ceil(quota * fraction))


_ENCODERS: dict[str, BulkEncoder] = {}


def _encoder(tokenizer_file: str) -> BulkEncoder:
    if tokenizer_file not in _ENCODERS:
        _ENCODERS[tokenizer_file] = BulkEncoder(Tokenizer.load(tokenizer_file))
    return _ENCODERS[tokenizer_file]


def part_paths(parts_dir: Path, unit: Unit) -> dict[str, Path]:
    stem = unit.key()
    return {"train": parts_dir / f"{stem}.train.bin", "val": parts_dir / f"{stem}.val.bin",
            "meta": parts_dir / f"{stem}.json"}


def complete_part(parts_dir: Path, unit: Unit, check_hash: bool = True) -> dict | None:
    """A part's record if it was finished and its files are intact; None otherwise."""
    paths = part_paths(parts_dir, unit)
    if not paths["meta"].is_file():
        return None
    try:
        meta = json.loads(paths["meta"].read_text())
    except json.JSONDecodeError:
        return None
    for split in ("train", "val"):
        rec, path = meta[split], paths[split]
        if not path.is_file() or path.stat().st_size != rec["bytes"]:
            return None
        if check_hash and file_sha256(path) != rec["sha256"]:
            return None
    return meta


def _batches(docs, limit: int) -> Iterator[list]:
    batch, n = [], 0
    for d in docs:
        batch.append(d)
        n += len(d.text)
        if n >= limit:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def build_unit(job: UnitJob) -> dict:
    """Tokenise one unit into its part files; returns the part's record (reused if done).

    Training documents are taken until the source's quota (or max_docs) is reached;
    validation documents until the source's validation share (val_fraction x quota): once
    the training side is full, the rest of the unit is only scanned for validation
    documents, so every source is in the validation split when its unit holds any. A pure
    function of the job: the part never depends on scheduling.
    """
    unit = Unit.from_json(job.unit)
    parts_dir = Path(job.parts_dir)
    done = complete_part(parts_dir, unit)
    if done is not None:
        return done
    enc = _encoder(job.tokenizer_file)
    tok = enc.tok
    dtype = token_dtype(tok.vocab_size)
    paths = part_paths(parts_dir, unit)
    writers = {s: ShardWriter(paths[s], dtype) for s in ("train", "val")}
    docs = {s: {"ids": [], "starts": []} for s in ("train", "val")}
    val_quota = val_share(job.quota, job.val_fraction)
    full = {"train": False, "val": val_quota == 0}
    reference, checked = False, False
    for batch in _batches(read_unit(unit, job.source, job.seed), BATCH_CHARS):
        splits = ["val" if is_validation(d.id, job.val_fraction) else "train" for d in batch]
        wanted = [(d, sp) for d, sp in zip(batch, splits) if not full[sp]]
        if not wanted:
            continue
        texts = [d.text for d, _ in wanted]
        if not checked:  # the fast encoder must agree with the tokenizer on this unit
            reference, checked = not enc.agrees(texts), True
        # One flat list per split and batch, converted once: a numpy array per document
        # costs as much as the encoding of a short one.
        flat = {"train": [], "val": []}
        for (d, split), ids in zip(wanted, enc.encode_batch(texts, reference=reference)):
            if full[split]:
                continue
            docs[split]["ids"].append(d.id)
            docs[split]["starts"].append(writers[split].tokens + len(flat[split]))
            flat[split] += ids
            flat[split].append(tok.eot_id)
            n = writers[split].tokens + len(flat[split])
            if split == "train":
                full["train"] = n >= job.quota or bool(
                    job.max_docs and len(docs["train"]["ids"]) >= job.max_docs)
            else:
                full["val"] = n >= val_quota
        for split, ids in flat.items():
            if ids:
                writers[split].append(np.array(ids, dtype=dtype))
        if full["train"] and full["val"]:
            break
    meta = {"unit": job.unit, "source_label": job.label,
            "encoder": "tokenizers" if reference or enc.fast is None else "tiktoken",
            "train_docs": docs["train"], "val_docs": docs["val"],
            **{s: w.close() for s, w in writers.items()}}
    write_json(paths["meta"], meta)  # last: marks the part complete
    return meta


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


# --------------------------------------------------------------------------- the build

def _train_tokenizer(cfg: DataConfig, plans: list, data_dir, seed: int, log) -> Tokenizer:
    if cfg.tokenizer.kind == "char":
        return char_tokenizer(synthetic.ALPHABET)
    total_w = sum(s.weight for s in cfg.sources)
    sample = []
    for i, src in enumerate(cfg.sources):
        budget = int(cfg.tokenizer.train_chars * src.weight / total_w)
        for unit in _units(plans[i], i):
            if budget <= 0:
                break
            for d in read_unit(unit, src, seed):
                if budget <= 0:
                    break
                if is_validation(d.id, cfg.val_fraction):
                    continue
                sample.append(d.text[:budget])
                budget -= len(sample[-1])
    log(f"data: training the tokenizer (vocab {cfg.tokenizer.vocab_size}) on "
        f"{sum(map(len, sample)) / 1e6:.1f}M characters drawn across {len(cfg.sources)} sources")
    return train_bpe(sample, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)


def _units(plan: list[Unit] | None, index: int) -> Iterator[Unit]:
    if plan is None:  # an endless source: blocks 0, 1, 2, ...
        n = 0
        while True:
            yield synthetic_unit(index, n)
            n += 1
    yield from plan


def _load_or_plan(cfg: DataConfig, directory: Path, data_dir, seed: int) -> list:
    path = directory / PLAN
    if path.is_file():
        raw = json.loads(path.read_text())
        return [None if p is None else [Unit.from_json(u) for u in p] for p in raw]
    unit_bytes = int(cfg.unit_mb * 2**20)
    plans = [plan_source(src, i, data_dir, unit_bytes, seed) for i, src in enumerate(cfg.sources)]
    payload = [None if p is None else [u.to_json() for u in p] for p in plans]
    write_atomic(path, json.dumps(payload).encode())
    return plans


def _pool(workers: int):
    if workers <= 1:
        return None
    # fork is cheap (no re-import of torch) but unsafe once CUDA is initialised.
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    ctx = mp.get_context("spawn" if cuda_live else "fork")
    return ctx.Pool(workers, initializer=_init_worker)


def build(cfg: DataConfig, seed: int, planned: int, directory: Path, workers: int = 1,
          log: Callable[[str], None] = print, progress: bool = True, key: str = "") -> dict:
    """Build (or finish building) the shards of `cfg` in `directory`; returns the index."""
    data_dir = resolve_data_dir(cfg.data_dir)
    if data_dir is not None:
        go_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    directory.mkdir(parents=True, exist_ok=True)
    parts_dir = directory / PARTS
    parts_dir.mkdir(exist_ok=True)
    plans = _load_or_plan(cfg, directory, data_dir, seed)

    tok_file = directory / "tokenizer.json"
    if tok_file.is_file():
        tok = Tokenizer.load(tok_file)
    else:
        t0 = time.perf_counter()
        tok = _train_tokenizer(cfg, plans, data_dir, seed, log)
        tok.save(directory)
        log(f"data: tokenizer of {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f}s")

    q = quotas(cfg, planned)
    t0, tokens_done = time.perf_counter(), 0
    bar = _progress_bar(planned, progress)
    pool = _pool(workers)
    used: list[list[dict]] = []
    try:
        for i, src in enumerate(cfg.sources):
            label = source_label(src, i)
            records, total, ndocs = [], 0, 0
            pending: collections.deque = collections.deque()
            units = _units(plans[i], i)
            ahead = 2 * workers if pool else 1
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead:
                    unit = next(units, None)
                    if unit is None:
                        exhausted = True
                        break
                    job = UnitJob(unit.to_json(), src, label, seed, cfg.val_fraction, q[i],
                                  src.max_docs, str(parts_dir), str(tok_file))
                    pending.append(pool.apply_async(build_unit, (job,)) if pool else job)
                if not pending:
                    break
                head = pending.popleft()
                rec = head.get() if pool else build_unit(head)
                records.append(rec)
                gained = min(rec["train"]["tokens"], q[i] - total)
                total += rec["train"]["tokens"]
                ndocs += len(rec["train_docs"]["ids"])
                tokens_done += max(0, gained)
                if bar is not None:
                    bar.update(max(0, gained))
                if total >= q[i] or (src.max_docs and ndocs >= src.max_docs):
                    break
            if total < q[i]:
                have = f"{total:,} tokens" + (f" in its first {src.max_docs} documents"
                                               if src.max_docs and ndocs >= src.max_docs else "")
                raise DataError(
                    f"source {label} ran out: it holds {have}, but its share of the plan is "
                    f"{q[i]:,} (weight {src.weight} of {planned:,} training tokens). Lower "
                    "data.train_tokens or the run's steps, lower this source's weight, raise "
                    "its max_docs, or add data. Complete parts are kept for the rerun.")
            used.append(records)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    index = _assemble(cfg, seed, planned, q, used, tok, directory, key, data_dir)
    _remove_unused(parts_dir, index)
    write_json(directory / INDEX, index)  # last: its presence marks a complete build
    wall = time.perf_counter() - t0
    log(f"data: {index['train']['tokens']:,} train / {index['val']['tokens']:,} validation "
        f"tokens in {len(index['train']['shards'])} shards, {wall:.1f}s "
        f"({tokens_done / max(wall, 1e-9) / 1e6:.2f}M tokens/s with {workers} worker(s))")
    return index


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc="data: tokenising",
                mininterval=2.0, dynamic_ncols=True)


def _assemble(cfg: DataConfig, seed: int, planned: int, q: list[int], used: list[list[dict]],
              tok: Tokenizer, directory: Path, key: str, data_dir) -> dict:
    train, val, sources = [], [], []
    for i, (src, records) in enumerate(zip(cfg.sources, used)):
        taken = docs = val_tokens = val_docs = 0
        reference = 0
        for rec in records:
            unit = Unit.from_json(rec["unit"])
            paths = part_paths(Path(PARTS), unit)
            starts = rec["train_docs"]["starts"]
            take = min(rec["train"]["tokens"], q[i] - taken)
            n_docs = int(np.searchsorted(np.asarray(starts), take, side="left"))
            if src.max_docs and docs + n_docs > src.max_docs:
                n_docs = src.max_docs - docs
                take = starts[n_docs] if n_docs < len(starts) else take
            train.append({"path": str(paths["train"]), "tokens": take, "source": i,
                          "bytes": rec["train"]["bytes"], "sha256": rec["train"]["sha256"]})
            vtake = min(rec["val"]["tokens"], val_share(q[i], cfg.val_fraction) - val_tokens)
            val.append({"path": str(paths["val"]), "tokens": vtake, "source": i,
                        "bytes": rec["val"]["bytes"], "sha256": rec["val"]["sha256"]})
            taken += take
            docs += n_docs
            val_tokens += vtake
            val_docs += int(np.searchsorted(np.asarray(rec["val_docs"]["starts"]), vtake))
            reference += rec["encoder"] == "tokenizers"
        sources.append({"label": source_label(src, i), "quota": q[i], "tokens": taken,
                        "docs": docs, "units": len(records), "val_tokens": val_tokens,
                        "val_docs": val_docs, "units_reference_encoded": reference})
    return {
        "version": INDEX_VERSION, "key": key, "seed": seed,
        "vocab_size": tok.vocab_size, "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "tokenizer_sha256": tok.fingerprint(), "planned_tokens": planned,
        "train": {"tokens": sum(e["tokens"] for e in train), "shards": train},
        "val": {"tokens": sum(e["tokens"] for e in val), "shards": val},
        "sources": sources, "data_dir": str(data_dir) if data_dir else None,
        "python_stdlib": stdlib_version(), "config": dataclasses.asdict(cfg),
    }


def _remove_unused(parts_dir: Path, index: dict) -> None:
    keep = {Path(e["path"]).name for split in ("train", "val") for e in index[split]["shards"]}
    keep |= {n.replace(".train.bin", ".json") for n in keep if n.endswith(".train.bin")}
    for f in parts_dir.iterdir():
        if f.name not in keep:
            f.unlink()

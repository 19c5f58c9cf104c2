"""The training mix: documents drawn from weighted sources, split train/validation."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ftbench.config.schema import DataConfig
from ftbench.data.sources import Document, iter_source, source_label

STREAMING_KINDS = ("synthetic", "hf")


@dataclass
class Mix:
    train: list[Document] = field(default_factory=list)
    val: list[Document] = field(default_factory=list)
    chars_by_source: dict[str, int] = field(default_factory=dict)


def is_validation(doc_id: str, fraction: float) -> bool:
    """Held out by a hash of the document id: stable whatever else is in the mix."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


def build_mix(cfg: DataConfig, data_dir: Path | None, seed: int) -> Mix:
    total_weight = sum(s.weight for s in cfg.sources)
    mix = Mix()
    for index, src in enumerate(cfg.sources):
        budget = int(cfg.total_chars * src.weight / total_weight)
        docs = iter_source(src, index, data_dir, seed)
        if src.kind not in STREAMING_KINDS:
            # A finite source is shuffled whole (fixed seed) so the budget samples all of it.
            docs = list(docs)
            random.Random(f"{seed}:{index}").shuffle(docs)
        taken = 0
        val_budget = max(1, int(budget * cfg.val_fraction * 2))
        val_taken = 0
        for doc in docs:
            if taken >= budget:
                break
            if cfg.val_fraction and is_validation(doc.id, cfg.val_fraction):
                if val_taken < val_budget:
                    mix.val.append(doc)
                    val_taken += len(doc.text)
                continue
            text = doc.text[:budget - taken]  # the last document may be cut to the budget
            mix.train.append(Document(doc.id, text, doc.source))
            taken += len(text)
        mix.chars_by_source[source_label(src, index)] = taken
    # Interleave sources: one fixed-seed shuffle of the whole training set.
    random.Random(seed).shuffle(mix.train)
    return mix

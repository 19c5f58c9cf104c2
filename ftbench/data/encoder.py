"""Bulk encoding for shard building: the run's BPE through tiktoken, checked against it.

The `tokenizers` BPE encodes about 0.36M tokens per CPU-second here; tiktoken runs the
same byte-level BPE at about 1.8M (measured on the corpus, see benchmarks/bench_data.py).
tiktoken merges the adjacent pair whose merged token has the lowest rank, `tokenizers`
applies its merge list in order; with ranks = token ids of a BPE trained by `tokenizers`
the two agree whenever every token has a single merge path, which holds in practice but
is not guaranteed. So the fast path is a cache of the reference, never a replacement:
every unit's first documents are encoded both ways, and a unit where they differ is
encoded entirely by `tokenizers` (recorded in the index).
"""

from __future__ import annotations

from typing import Sequence

from ftbench.data.tokenizer import SPLIT_PATTERN, Tokenizer

CHECK_CHARS = 16_000  # per unit, encoded by both paths (about 2 % of a unit's time)


def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte <-> printable-character table that ByteLevel uses."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class BulkEncoder:
    """encode_batch(texts) -> token id lists, equal to `Tokenizer.encode_batch`."""

    def __init__(self, tok: Tokenizer, fast: bool = True):
        self.tok = tok
        self.fast = self._tiktoken(tok) if fast else None

    @staticmethod
    def _tiktoken(tok: Tokenizer):
        try:
            import tiktoken
        except ImportError:
            return None
        import json

        spec = json.loads(tok.to_json())
        model, pre = spec.get("model", {}), spec.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or "Sequence" != pre.get("type"):
            return None  # char tokenizers and foreign files take the reference path
        decode = _byte_decoder()
        ranks, specials = {}, {}
        for piece, idx in tok.backend.get_vocab().items():
            if piece in ("<|endoftext|>", "<|pad|>"):
                specials[piece] = idx
                continue
            try:
                ranks[bytes(decode[c] for c in piece)] = idx
            except KeyError:
                return None
        try:
            return tiktoken.Encoding("ftbench", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=specials)
        except Exception:
            return None

    @property
    def name(self) -> str:
        return "tiktoken" if self.fast is not None else "tokenizers"

    def agrees(self, texts: Sequence[str]) -> bool:
        """Both paths on the first CHECK_CHARS characters of these texts."""
        if self.fast is None:
            return True
        sample, n = [], 0
        for t in texts:
            sample.append(t[:CHECK_CHARS - n])
            n += len(sample[-1])
            if n >= CHECK_CHARS:
                break
        return self._fast_batch(sample) == self.tok.encode_batch(sample)

    def _fast_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Special tokens written literally in a text become the special id, as in
        # `tokenizers` (its added tokens match anywhere in the input).
        return self.fast.encode_batch(list(texts), num_threads=1, allowed_special="all")

    def encode_batch(self, texts: Sequence[str], reference: bool = False) -> list[list[int]]:
        if self.fast is None or reference:
            return self.tok.encode_batch(texts)
        return self._fast_batch(texts)

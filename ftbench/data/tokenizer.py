"""Tokenizers saved with a pair and shared by all its arms.

- bpe: byte-level BPE trained with the `tokenizers` library on the run's own mix, with a
  Llama-3-style split (digits in groups of at most 3); decode(encode(s)) == s exactly.
- char: one token per character of a fixed alphabet (the synthetic task).
Both reserve <|endoftext|> (between documents) and <|pad|>.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

from ftbench.data.errors import DataError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
FILENAME = "tokenizer.json"


class Tokenizer:
    def __init__(self, backend):
        self.backend = backend
        self.eot_id = backend.token_to_id(EOT)
        self.pad_id = backend.token_to_id(PAD)
        if self.eot_id is None or self.pad_id is None:
            raise DataError(f"tokenizer lacks the special tokens {EOT} and {PAD}")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.backend.to_str()

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILENAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    @staticmethod
    def load(directory_or_file: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        path = Path(directory_or_file)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise DataError(f"no tokenizer at {path}")
        try:
            return Tokenizer(Backend.from_str(path.read_text(encoding="utf-8")))
        except Exception as e:
            raise DataError(f"{path} is not a valid tokenizer file ({e})") from None


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOT, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


def char_tokenizer(alphabet: str) -> Tokenizer:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    if len(set(alphabet)) != len(alphabet):
        raise DataError("char tokenizer: the alphabet has repeated characters")
    vocab = {EOT: 0, PAD: 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    backend = Backend(models.WordLevel(vocab=vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([EOT, PAD])
    return Tokenizer(backend)

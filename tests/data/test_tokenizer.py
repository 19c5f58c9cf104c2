import gzip
import json

import pytest

from ftbench.data import synthetic
from ftbench.data.errors import DataError
from ftbench.data.tokenizer import Tokenizer, char_tokenizer, train_bpe


@pytest.fixture(scope="module")
def bpe(data_dir):
    texts = []
    for name in ("tinystories_subset", "python_docs_3.11"):
        with gzip.open(data_dir / "corpus" / f"{name}.jsonl.gz", "rt") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(150), f)]
    return train_bpe(texts, vocab_size=1024), texts


def test_bpe_round_trips_real_text_exactly(bpe, data_dir):
    tok, texts = bpe
    samples = texts[-20:] + ["  indented\n\ttabs\r\nCRLF", "Ünïcödé — emoji 🚀 and 12345678",
                             (data_dir / "gsm8k" / "test.jsonl").read_text()[:2000]]
    for text in samples:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 1024
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_save_load_and_determinism(bpe, tmp_path):
    tok, texts = bpe
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode(texts[0]) == tok.encode(texts[0])
    assert train_bpe(texts, vocab_size=1024).fingerprint() == tok.fingerprint()
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(DataError, match="not a valid tokenizer"):
        Tokenizer.load(tmp_path)


def test_char_tokenizer_covers_the_synthetic_alphabet():
    tok = char_tokenizer(synthetic.ALPHABET)
    s = "Q>__QQQQ!QQQ____!"
    ids = tok.encode(s)
    assert len(ids) == len(s) and tok.decode(ids) == s
    assert tok.vocab_size == 31


def test_digits_split_left_to_right_in_groups_of_three_on_a_corpus_full_of_numbers():
    # A corpus where long numbers repeat: BPE would learn 4- to 7-digit tokens if the
    # pre-tokenizer let it, so this data can show a wrong digit rule (a corpus without
    # multi-digit merges passes any rule).
    numbers = ["1234567", "2024", "98765", "31415926", "1000000", "4096", "65536"]
    texts = [" ".join(numbers[(i + j) % len(numbers)] for j in range(12)) + f" item {i}"
             for i in range(300)]
    tok = train_bpe(texts, vocab_size=400)
    vocab = [tok.decode([i]) for i in range(tok.vocab_size)]
    digit_tokens = [v for v in vocab if v.isdigit()]
    assert any(len(v) == 3 for v in digit_tokens)  # the data does teach multi-digit tokens
    assert max(len(v) for v in digit_tokens) == 3
    # Llama-3's rule: groups of three from the left.
    assert [tok.decode([i]) for i in tok.encode("1234567")] == ["123", "456", "7"]
    assert [tok.decode([i]) for i in tok.encode("31415926")] == ["314", "159", "26"]

"""13-gram contamination between prepared training text and the benchmarks."""

import gzip
import json

import pytest

from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
from ftbench.data.contamination import benchmark_index, load_report, measure, words
from ftbench.data.pipeline import prepare_data


@pytest.fixture(scope="module")
def index(data_dir):
    return benchmark_index(data_dir)


@pytest.fixture(scope="module")
def stories(data_dir):
    with gzip.open(data_dir / "corpus" / "tinystories_subset.jsonl.gz", "rt") as f:
        return [json.loads(line)["text"] for _, line in zip(range(40), f)]


def prepared_from(texts, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                           for i, t in enumerate(texts)))
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=str(src))], val_fraction=0,
                     tokenizer=TokenizerConfig(vocab_size=400, train_chars=100_000))
    # Every document whole: the budget is the source's exact token count.
    probe = prepare_data(cfg, 0, tmp_path / "probe", 100, log=lambda m: None, progress=False)
    total = sum(len(ids) + 1 for ids in probe.tokenizer.encode_batch(texts))
    return prepare_data(cfg, 0, tmp_path / "out", total, log=lambda m: None, progress=False)


def test_normalisation_ignores_case_punctuation_and_spacing():
    assert words("Hello,  WORLD!\n\tdef f(x): return x+1") == \
        ["hello", "world", "def", "f", "x", "return", "x", "1"]


def test_planted_items_are_found(index, stories, data_dir, tmp_path):
    with gzip.open(data_dir / "humanevalplus" / "HumanEvalPlus.jsonl.gz", "rt") as f:
        he = [json.loads(line) for _, line in zip(range(3), f)][2]
    gsm = [json.loads(line) for line in
           (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:8]][7]
    # Re-spaced and re-cased inside a story: still the same 13-grams after normalisation.
    planted = (stories[0] + "\n\n" + he["prompt"].upper() + he["canonical_solution"] + "\n"
               + "  ".join(gsm["question"].split()) + " The end.")
    prepared = prepared_from([planted, *stories[1:4]], tmp_path)
    out = measure(prepared, data_dir, index=index, log=lambda m: None)
    b = out["benchmarks"]
    assert he["task_id"] in b["humanevalplus"]["examples"]
    assert "gsm8k/test/7" in b["gsm8k"]["examples"]
    assert b["humanevalplus"]["items"] == 164 and b["mmlu"]["items"] == 14042
    assert load_report(prepared.directory) == out  # written beside the shards


def test_clean_text_reports_zero(index, stories, data_dir, tmp_path):
    prepared = prepared_from(stories, tmp_path)
    out = measure(prepared, data_dir, index=index, log=lambda m: None)
    assert out["fraction_scanned"] == 1.0 and out["documents_scanned"] >= 10
    assert {k: v["contaminated"] for k, v in out["benchmarks"].items()} == \
        {"humanevalplus": 0, "mbppplus": 0, "gsm8k": 0, "mmlu": 0, "commonsense_qa": 0}

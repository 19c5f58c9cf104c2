import numpy as np
import pytest
import torch

from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
from ftbench.data.errors import DataError
from ftbench.data.pipeline import prepare_data
from ftbench.data.sampler import BatchSampler


def quiet(_):
    pass


def test_sampler_is_seekable_and_ranks_partition_the_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    s = BatchSampler(tokens, seq_len=16, batch_size=8, seed=3)
    again = BatchSampler(tokens, seq_len=16, batch_size=8, seed=3)
    assert torch.equal(s.batch(40), again.batch(40))  # no hidden state: any step, any order
    halves = torch.cat([s.batch(7, rank=r, world=2) for r in range(2)])
    assert torch.equal(halves, s.batch(7))
    b = s.batch(0)
    assert torch.equal(b[:, 1:], b[:, :-1] + 1)  # contiguous windows of seq_len + 1
    # One epoch visits every window once.
    seen = np.concatenate([s.window_ids(k) for k in range(s.n_windows // 8)])
    assert len(set(seen.tolist())) == len(seen)
    with pytest.raises(DataError, match="cannot fill one sequence"):
        BatchSampler(tokens[:10], seq_len=16, batch_size=1, seed=0)


def test_evaluation_splits_never_enter_training(data_dir, tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path="gsm8k/test.jsonl",
                                           text_field="question")], data_dir=str(data_dir))
    with pytest.raises(DataError, match="evaluation data"):
        prepare_data(cfg, 0, tmp_path, 1000, log=quiet)


def test_missing_path_and_bad_field_are_clear(data_dir, tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path="corpus/nope.jsonl.gz")],
                     data_dir=str(data_dir))
    with pytest.raises(DataError, match="nope.jsonl.gz does not exist"):
        prepare_data(cfg, 0, tmp_path, 1000, log=quiet)
    cfg.sources[0] = SourceConfig(kind="jsonl", path="corpus/tinyshakespeare.jsonl.gz",
                                  text_field="body")
    with pytest.raises(DataError, match="no field 'body'"):
        prepare_data(cfg, 0, tmp_path, 1000, log=quiet)
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(DataConfig(data_dir=str(tmp_path / "absent")), 0, tmp_path, 1000)


def test_online_hf_source_refused_offline(data_dir, tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="hf", hf_id="roneneldan/TinyStories")],
                     data_dir=str(data_dir))
    with pytest.raises(DataError, match="offline"):
        prepare_data(cfg, 0, tmp_path, 1000, log=quiet)


def test_shards_are_built_once_and_reused(tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="synthetic")], train_tokens=20_100,
                     tokenizer=TokenizerConfig(kind="char"), seq_len=66)
    first = prepare_data(cfg, 0, tmp_path, log=quiet, progress=False)
    logs = []
    second = prepare_data(cfg, 0, tmp_path, log=logs.append)
    assert not logs and np.array_equal(first.train[:], second.train[:])
    assert len(first.train) == 20_100
    text = first.tokenizer.decode(first.train[:67].tolist())
    assert text[1] == ">" and text.endswith("<|endoftext|>")


def test_unreachable_hub_in_online_mode_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("FTBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    cfg = DataConfig(sources=[SourceConfig(kind="hf", hf_id="roneneldan/TinyStories")])
    with pytest.raises(DataError, match="hub .* is unreachable.*--data-dir"):
        prepare_data(cfg, 0, tmp_path, 1000, log=quiet)

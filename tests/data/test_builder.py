"""The streaming shard builder on the real corpus: determinism, resume, mixture, guards."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ftbench.config import load_pair_config
from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
from ftbench.data import builder
from ftbench.data.budget import check_repetition, needed_tokens, quotas
from ftbench.data.errors import DataError
from ftbench.data.pipeline import open_prepared, prepare_data
from ftbench.data.sampler import BatchSampler
from ftbench.data.shards import trace_token, verify_shards


def quiet(_):
    pass


def mix_config(data_dir, **over) -> DataConfig:
    """The toy mix with small units, so every source is cut into several of them."""
    cfg = load_pair_config("configs/toy.yaml").data
    cfg.data_dir = str(data_dir)
    cfg.unit_mb = 0.25
    cfg.tokenizer = TokenizerConfig(kind="bpe", vocab_size=512, train_chars=200_000)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    """One build with 1 worker and one with 2 workers of the same config and budget."""
    cfg = mix_config(data_dir)
    out = {}
    for workers in (1, 2):
        root = tmp_path_factory.mktemp(f"w{workers}")
        out[workers] = prepare_data(cfg, 0, root, 120_000, workers=workers, log=quiet,
                                    progress=False)
    return cfg, out


def test_output_is_byte_identical_for_any_worker_count(built):
    _, out = built
    one, two = tree_bytes(out[1].directory), tree_bytes(out[2].directory)
    assert one.keys() == two.keys() and len(one) > 10
    assert all(one[k] == two[k] for k in one)


def test_mixture_weights_hold_in_tokens(built):
    cfg, out = built
    idx = out[1].meta
    total_w = sum(s.weight for s in cfg.sources)
    assert idx["train"]["tokens"] == 120_000 == len(out[1].train)
    for src, got in zip(cfg.sources, idx["sources"]):
        assert abs(got["tokens"] / 120_000 - src.weight / total_w) < 0.02, got["label"]
        assert got["docs"] >= 1
    # Every token traces back to a document of one of the configured sources, and tracing
    # is consistent along the stream: the next token is the next one of the same document,
    # or the first of another.
    stream = out[1].train
    labels = {s["label"] for s in idx["sources"]}
    assert len(labels) == len(cfg.sources)
    assert trace_token(out[1].directory, idx, stream, 0)["token_in_doc"] == 0
    for i in (0, 50_000, 119_998):
        where = trace_token(out[1].directory, idx, stream, i)
        after = trace_token(out[1].directory, idx, stream, i + 1)
        assert where["source"] in labels and isinstance(where["doc_id"], str)
        assert where["doc_id"] and where["token_in_doc"] >= 0
        same_doc = (after["doc_id"], after["source"]) == (where["doc_id"], where["source"])
        assert (after["token_in_doc"] == where["token_in_doc"] + 1 if same_doc
                else after["token_in_doc"] == 0), (where, after)
    # Validation documents are held out by id: no training document is also a validation one.
    for shard in idx["train"]["shards"]:
        part = json.loads((out[1].directory / shard["path"].replace(".train.bin", ".json"))
                          .read_text())
        assert not set(part["train_docs"]["ids"]) & set(part["val_docs"]["ids"])


def test_sampler_over_shards_equals_sampler_over_their_concatenation(built):
    _, out = built
    stream = out[1].train
    assert len(stream.spans) > 3
    flat = np.concatenate([np.asarray(s.array[:s.tokens]) for s in stream.spans])
    a = BatchSampler(stream, seq_len=64, batch_size=8, seed=5)
    b = BatchSampler(flat, seq_len=64, batch_size=8, seed=5)
    for step in (0, 1, 17, 233):  # windows cross shard boundaries among these
        assert torch.equal(a.batch(step), b.batch(step))
    assert torch.equal(a.batch(3, rank=1, world=2), b.batch(3, rank=1, world=2))


def test_killed_build_resumes_to_the_same_bytes(built, data_dir, tmp_path, monkeypatch):
    cfg, out = built
    real = builder.build_unit
    calls = {"n": 0}

    def dies_after_four(job):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt  # as a kill between two units
        return real(job)

    monkeypatch.setattr(builder, "build_unit", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, 0, tmp_path, 120_000, log=quiet, progress=False)
    directory = next(tmp_path.iterdir())
    parts = sorted((directory / "parts").glob("*.json"))
    assert len(parts) == 4 and not (directory / "index.json").exists()
    # A part torn mid-write (its record present, its tokens cut short) and a stale temp file.
    torn = directory / "parts" / parts[0].name.replace(".json", ".train.bin")
    torn.write_bytes(torn.read_bytes()[:10])
    (directory / "parts" / "junk.train.bin.tmp").write_bytes(b"x")
    monkeypatch.setattr(builder, "build_unit", real)
    resumed = prepare_data(cfg, 0, tmp_path, 120_000, log=quiet, progress=False)
    assert tree_bytes(resumed.directory) == tree_bytes(out[1].directory)


def test_corrupt_shard_is_detected_by_size_and_by_hash(built, tmp_path):
    import shutil

    _, out = built
    copy = tmp_path / "copy"
    shutil.copytree(out[1].directory, copy)
    shard = copy / out[1].meta["train"]["shards"][2]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    problems = verify_shards(copy, out[1].meta)
    assert len(problems) == 1 and "sha256" in problems[0]
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="corrupt.*bytes"):
        open_prepared(copy)


def test_repetition_guard_refuses_and_passes_when_allowed(data_dir):
    cfg = load_pair_config("configs/toy.yaml")
    need = needed_tokens(cfg)
    assert need == 150 * 16 * 128 + 1
    assert check_repetition(cfg, need) == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"2\.00 epochs.*data.max_epochs=2\.00"):
        check_repetition(cfg, need // 2 + 1)
    cfg.data.max_epochs = 2.0
    assert check_repetition(cfg, need // 2 + 1) == pytest.approx(2.0, rel=1e-3)


def test_budget_over_a_finite_source_is_refused_and_keeps_parts(data_dir, tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path="corpus/tinyshakespeare.jsonl.gz")],
                     data_dir=str(data_dir), tokenizer=TokenizerConfig(vocab_size=300,
                                                                      train_chars=50_000))
    with pytest.raises(DataError, match="ran out: it holds .* tokens, but its share of the plan"
                                        " is 5,000,000"):
        prepare_data(cfg, 0, tmp_path, 5_000_000, log=quiet, progress=False)
    assert list(tmp_path.rglob("parts/*.json"))  # what was built stays for the rerun


def test_quotas_split_by_weight_and_sum_exactly():
    cfg = DataConfig(sources=[SourceConfig(weight=w) for w in (0.5, 0.3, 0.2)])
    q = quotas(cfg, 1_000_003)
    assert sum(q) == 1_000_003 and q[0] == 500_001


def test_fast_encoder_equals_the_tokenizer_on_real_text(built, data_dir):
    from ftbench.data.encoder import BulkEncoder

    tok = built[1][1].tokenizer
    enc = BulkEncoder(tok)
    assert enc.name == "tiktoken"
    texts = []
    for name in ("python_docs_3.11", "gutenberg_en"):
        with gzip.open(data_dir / "corpus" / f"{name}.jsonl.gz", "rt") as f:
            texts += [json.loads(line)["text"][:20_000] for _, line in zip(range(20), f)]
    texts.append("literal <|endoftext|> inside a document, digits 1234567 and émoji 🚀")
    assert enc.encode_batch(texts) == tok.encode_batch(texts)


def test_parquet_source_round_trips(data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(data_dir / "corpus" / "tinystories_subset.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(2):  # a folder of files, several row groups each
        part = rows[i * 150:(i + 1) * 150]
        pq.write_table(pa.table({"id": [r["id"] for r in part], "text": [r["text"] for r in part]}),
                       folder / f"part{i}.parquet", row_group_size=40)
    cfg = DataConfig(sources=[SourceConfig(kind="parquet", path=str(folder))], val_fraction=0,
                     unit_mb=0.02, tokenizer=TokenizerConfig(vocab_size=400, train_chars=100_000))
    # Ask for exactly every token the source holds: count them with the built tokenizer.
    probe = prepare_data(cfg, 0, tmp_path / "probe", 1_000, log=quiet, progress=False)
    total = sum(len(ids) + 1 for ids in probe.tokenizer.encode_batch([r["text"] for r in rows]))
    prepared = prepare_data(cfg, 0, tmp_path / "out", total, log=quiet, progress=False)
    assert prepared.meta["sources"][0]["docs"] == 300
    tok = prepared.tokenizer
    arr = np.asarray(prepared.train[0:len(prepared.train)])
    starts = [0, *(np.flatnonzero(arr == tok.eot_id) + 1)]
    docs = [tok.decode(arr[a:b - 1].tolist()) for a, b in zip(starts, starts[1:])]
    assert sorted(docs) == sorted(r["text"] for r in rows)


def test_bad_sources_say_what_is_wrong(data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["some text"]}), tmp_path / "x.parquet")
    cfg = DataConfig(sources=[SourceConfig(kind="parquet", path=str(tmp_path / "x.parquet"))])
    with pytest.raises(DataError, match="no column 'text' .*columns: body.*text_field"):
        prepare_data(cfg, 0, tmp_path / "o1", 100, log=quiet, progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=str(empty))])
    with pytest.raises(DataError, match="empty: no documents"):
        prepare_data(cfg, 0, tmp_path / "o2", 100, log=quiet, progress=False)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    cfg = DataConfig(sources=[SourceConfig(kind="parquet", path=str(tmp_path / "bad.parquet"))])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        prepare_data(cfg, 0, tmp_path / "o3", 100, log=quiet, progress=False)


def test_hub_source_reads_a_seeded_choice_of_files_through_a_shuffle_buffer(
        data_dir, tmp_path, monkeypatch):
    """The hf path with the real `datasets` streaming reader, over local Parquet files
    instead of the hub (no network here): each file is a unit, read through a seeded
    shuffle buffer, so the sample is not the stream's first rows and is reproducible."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftbench.data import units

    with gzip.open(data_dir / "corpus" / "tinystories_subset.jsonl.gz", "rt") as f:
        rows = [json.loads(line)["text"] for _, line in zip(range(400), f)]
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"f{i}.parquet"))
        pq.write_table(pa.table({"id": [f"row{j}" for j in range(i * 100, (i + 1) * 100)],
                                 "text": rows[i * 100:(i + 1) * 100]}), files[-1])
    monkeypatch.setattr(units, "_hf_stream", lambda src: datasets.load_dataset(
        "parquet", data_files=files, split="train", streaming=True))
    monkeypatch.delenv("FTBENCH_DATA_DIR", raising=False)
    # datasets waits 5 s whenever a Parquet stream is closed early (an Arrow workaround):
    # a fixed cost per unit at scale, only dead time in a test.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    cfg = DataConfig(sources=[SourceConfig(kind="hf", hf_id="local/stories", shuffle_buffer=50)],
                     val_fraction=0, tokenizer=TokenizerConfig(vocab_size=400, train_chars=50_000))
    a = prepare_data(cfg, 0, tmp_path / "a", 20_000, log=quiet, progress=False)
    first = json.loads((a.directory / a.meta["train"]["shards"][0]["path"]
                        .replace(".train.bin", ".json")).read_text())
    unit = first["unit"]["locator"]
    assert unit["of"] == 4
    # Not the stream's first rows: the first documents taken are a shuffle of that file.
    ids = first["train_docs"]["ids"][:10]
    order = [int(i[3:]) for i in ids]
    assert len(order) == 10 and order != sorted(order)
    assert a.meta["sources"][0]["tokens"] == 20_000
    unit = units.Unit.from_json(first["unit"])  # reproducible: the same seed, the same order
    again = [d.id for d in units.read_unit(unit, cfg.sources[0], 0)]
    assert again[:len(first["train_docs"]["ids"])] == first["train_docs"]["ids"]

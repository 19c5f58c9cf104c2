"""A token stream over many shard files maps them lazily and keeps few open at a time."""

import gc
import os

import numpy as np
import pytest

from ftbench.data.errors import DataError
from ftbench.data.sampler import BatchSampler
from ftbench.data.shards import open_stream

N_SHARDS = 200
# The default bound on open maps: well under the usual soft limit of 1024 open files,
# and under the 200 shards here. A margin of 2 fds for the rest of the process.
DEFAULT_BOUND = 64

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="counts open files in /proc/self/fd")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def shards(tmp_path):
    """200 shard files of 20..26 tokens (plus an empty one), and the tokens they hold in
    order: token k of the stream is k itself, so every value read says where it came from."""
    entries, start = [], 0
    for i in range(N_SHARDS):
        n = 20 + i % 7
        name = f"s{i:03d}.train.bin"
        (tmp_path / name).write_bytes(np.arange(start, start + n, dtype=np.uint16).tobytes())
        entries.append({"path": name, "bytes": 2 * n, "tokens": n})
        start += n
        if i == 100:
            (tmp_path / "empty.train.bin").write_bytes(b"")
            entries.append({"path": "empty.train.bin", "bytes": 0, "tokens": 0})
    return tmp_path, entries, np.arange(start, dtype=np.uint16)


def test_reading_every_shard_keeps_a_bounded_number_of_files_open(shards):
    directory, entries, want = shards
    before = open_fds()
    stream = open_stream(directory, entries, np.uint16)
    assert open_fds() == before  # nothing is mapped until it is read
    # 28 cycles of 20..26 tokens (161 each) and then 20 + 21 + 22 + 23.
    assert len(stream) == len(want) == 28 * 161 + 86
    # Windows of 33 tokens cross a shard boundary at almost every read.
    for a in range(0, len(want) - 33, 17):
        got = stream[a:a + 33]
        assert got.dtype == np.uint16 and np.array_equal(got, want[a:a + 33]), a
        assert int(stream[a]) == a
    assert open_fds() - before <= DEFAULT_BOUND + 2
    assert np.array_equal(stream[0:len(want)], want)
    assert open_fds() - before <= DEFAULT_BOUND + 2
    del stream, got
    gc.collect()
    assert open_fds() == before


def test_the_bound_holds_under_the_sampler_and_its_batches_are_the_tokens_written(shards):
    directory, entries, want = shards
    before = open_fds()
    stream = open_stream(directory, entries, np.uint16, max_open=3)
    sampler = BatchSampler(stream, seq_len=16, batch_size=8, seed=1)
    for step in range(40):
        batch = sampler.batch(step).numpy()
        for row, k in zip(batch, sampler.window_ids(step)):
            assert row.tolist() == list(range(16 * k, 16 * k + 17))
        assert open_fds() - before <= 3 + 2
    # The spans' whole-file maps, as the contamination scan reads them.
    first = stream.spans[0]
    assert np.array_equal(first.array[:first.tokens], want[:20])


def test_a_shard_of_the_wrong_size_is_refused_when_the_stream_opens(shards):
    directory, entries, _ = shards
    (directory / entries[150]["path"]).write_bytes(b"\0" * 6)
    with pytest.raises(DataError, match="corrupt: 6 bytes"):
        open_stream(directory, entries, np.uint16)

"""BatchSampler's contract: windows of seq_len + 1 tokens sharing one token, each epoch a
permutation of every window, a batch a pure function of (seed, step), ranks slicing it."""

import numpy as np
import pytest
import torch

from ftbench.data.errors import DataError
from ftbench.data.sampler import BatchSampler

TOKENS = np.arange(100, dtype=np.uint16)  # token k at position k: a window shows its start


def test_windows_are_seq_len_plus_one_tokens_sharing_one_token():
    s = BatchSampler(TOKENS, seq_len=16, batch_size=4, seed=3)
    assert s.n_windows == 6  # (100 - 1) // 16: the last window ends at token 96
    b = s.batch(0)
    assert b.dtype == torch.int64 and b.shape == (4, 17)
    for row, k in zip(b.tolist(), s.window_ids(0).tolist()):
        assert row == list(range(16 * k, 16 * k + 17))  # window k: tokens 16k .. 16k + 16
    # Exactly enough tokens for one window; one fewer is an error that says what to do.
    assert BatchSampler(TOKENS[:17], 16, 1, 0).n_windows == 1
    with pytest.raises(DataError, match=r"16 tokens cannot fill one sequence of 17; add data"):
        BatchSampler(TOKENS[:16], 16, 1, 0)


def test_each_epoch_is_a_permutation_and_batches_cross_epochs_in_order():
    s = BatchSampler(TOKENS, seq_len=16, batch_size=4, seed=3)
    # The order this version draws (a recorded contract: a resumed run and every arm of a
    # pair depend on it): seed 3, 6 windows, batches of 4.
    assert s.window_ids(0).tolist() == [2, 5, 4, 1]
    assert s.window_ids(1).tolist() == [3, 0, 1, 2]  # epoch 0 ends after 2, epoch 1 begins
    assert s.window_ids(2).tolist() == [0, 4, 5, 3]
    flat = np.concatenate([s.window_ids(k) for k in range(3)])
    assert sorted(flat[:6]) == sorted(flat[6:]) == list(range(6))
    assert flat[:6].tolist() != flat[6:].tolist()  # a new order each epoch
    assert s.epoch_of(3) == 2.0 and s.epoch_of(1) == 4 / 6


def test_a_batch_is_a_pure_function_of_seed_and_step():
    s = BatchSampler(TOKENS, seq_len=8, batch_size=5, seed=7)
    later_first = [s.batch(40), s.batch(3), s.batch(40)]  # any step, in any order
    fresh = BatchSampler(TOKENS, seq_len=8, batch_size=5, seed=7)
    assert torch.equal(later_first[1], fresh.batch(3))
    assert torch.equal(later_first[0], later_first[2])
    assert torch.equal(later_first[0], BatchSampler(TOKENS, 8, 5, 7).batch(40))
    other_seed = BatchSampler(TOKENS, seq_len=8, batch_size=5, seed=8)
    assert not torch.equal(other_seed.batch(3), fresh.batch(3))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_take_contiguous_slices_of_the_global_batch(world):
    s = BatchSampler(TOKENS, seq_len=8, batch_size=4, seed=1)
    parts = [s.batch(5, rank=r, world=world) for r in range(world)]
    assert all(p.shape == (4 // world, 9) for p in parts)
    assert torch.equal(torch.cat(parts), s.batch(5))


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    s = BatchSampler(TOKENS, seq_len=8, batch_size=6, seed=1)
    with pytest.raises(ValueError, match="batch size 6 is not divisible by 4 ranks"):
        s.batch(0, rank=0, world=4)


def test_an_epoch_permutation_is_drawn_once_not_per_sample(monkeypatch):
    # At the paper's sizes an epoch has millions of windows: drawing its permutation for
    # every sample would cost more than the step. One draw per epoch, reused.
    calls = []
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed: calls.append(seed) or real(seed))
    s = BatchSampler(TOKENS, seq_len=16, batch_size=4, seed=3)
    s.window_ids(0)
    assert len(calls) == 1
    s.window_ids(1)  # crosses into epoch 1: one more draw
    s.window_ids(2)
    assert [list(c) for c in calls] == [[3, 0], [3, 1]]

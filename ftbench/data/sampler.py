"""A deterministic, seekable batch sampler over a flat token array.

The array is cut into windows of seq_len + 1 tokens (consecutive windows share one
token, so every token is a target once per epoch). Global sample i of the run is window
perm_e[i mod W] with e = i div W and perm_e a permutation seeded by (seed, e). The batch
of any step is therefore a pure function of (seed, step): a resumed run continues with
the exact next batch, every arm of a pair sees the same batches, and each rank takes its
own contiguous slice of the global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ftbench.data.errors import DataError


class BatchSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(f"{len(tokens)} tokens cannot fill one sequence of {seq_len + 1}; "
                            "add data or shorten data.seq_len")
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def window_ids(self, step: int) -> np.ndarray:
        first = step * self.batch_size
        ids = np.empty(self.batch_size, dtype=np.int64)
        for j in range(self.batch_size):
            i = first + j
            ids[j] = self._permutation(i // self.n_windows)[i % self.n_windows]
        return ids

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """(B / world, seq_len + 1) int64 tokens of this rank's slice of the global batch."""
        if self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {world} ranks")
        per_rank = self.batch_size // world
        ids = self.window_ids(step)[rank * per_rank:(rank + 1) * per_rank]
        rows = [np.asarray(self.tokens[k * self.seq_len:k * self.seq_len + self.seq_len + 1],
                           dtype=np.int64) for k in ids]
        return torch.from_numpy(np.stack(rows))

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n_windows

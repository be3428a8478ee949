"""BatchNorm statistics for ``update_bn``, on per-channel sums, so any number of ranks agree.

torch's ``update_bn`` (``momentum=None``) stores, for each BN layer, the equal-weight mean over
batches of each batch's mean and unbiased variance. With data parallelism a rank sees only a
shard of each batch: the shard's sums are all-reduced into the global batch's statistics, and the
layer normalises with those, so every later layer sees what a single process would see.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

AllReduce = Callable[[np.ndarray], np.ndarray]


class BatchStats:
    """Accumulates one BN layer's statistics over batches (float64)."""

    def __init__(self, all_reduce: AllReduce | None = None):
        self.all_reduce = all_reduce
        self.mean_sum: np.ndarray | float = 0.0
        self.var_sum: np.ndarray | float = 0.0
        self.batches = 0

    def add(self, total: np.ndarray, total_sq: np.ndarray, count: float
            ) -> tuple[np.ndarray, np.ndarray]:
        """Add one batch from its per-channel sum, sum of squares and element count on this
        rank; return the global batch's mean and biased variance (what BN normalises with)."""
        packed = np.concatenate([total, total_sq, [count]]).astype(np.float64)
        if self.all_reduce is not None:
            packed = self.all_reduce(packed)
        c = len(total)
        total, total_sq, count = packed[:c], packed[c:2 * c], packed[-1]
        mean = total / count
        biased = np.maximum(total_sq / count - mean * mean, 0.0)
        self.mean_sum = self.mean_sum + mean
        self.var_sum = self.var_sum + biased * count / max(count - 1, 1)
        self.batches += 1
        return mean, biased

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(running mean, unbiased running variance), or None if no batch was seen."""
        if not self.batches:
            return None
        return self.mean_sum / self.batches, self.var_sum / self.batches

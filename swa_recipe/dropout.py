"""Dropout masks as pure functions of ``(seed, epoch, sample index, layer)``.

Each training sample gets its masks from its own index in the dataset, not from a framework RNG
stream that each process draws on its own: a data-parallel job therefore draws for every image
the masks that one process would (N processes train as 1 with the recipe's dropout 0.5), a run
resumed mid-epoch draws what the uninterrupted run drew, and the twins draw identical masks.
The uniform numbers come from a counter-based hash (splitmix64's finaliser over the key), so a
batch's masks cost a few vectorised integer operations and need no generator per sample.
"""

from __future__ import annotations

import numpy as np

# splitmix64's constants, as Python ints so that ``swa_torch.device_dropout`` draws the same bits
# with torch's int64 on the training device: the Weyl step between keys, the finaliser's
# (shift, multiplier) rounds and its last shift.
GOLDEN = 0x9E3779B97F4A7C15
MIX_ROUNDS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
LAST_SHIFT = 31
_GOLDEN = np.uint64(GOLDEN)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit."""
    for shift, multiplier in MIX_ROUNDS:
        x = (x ^ (x >> np.uint64(shift))) * np.uint64(multiplier)
    return x ^ (x >> np.uint64(LAST_SHIFT))


def _key(x: np.ndarray, values) -> np.ndarray:
    return _mix(x + _GOLDEN * (np.atleast_1d(np.asarray(values, dtype=np.uint64)) + np.uint64(1)))


def random_bits(seed: int, epoch: int, indices, layer: int, width: int) -> np.ndarray:
    """Uniform uint64 numbers, ``len(indices) x width``: row i depends only on
    ``(seed, epoch, indices[i], layer)``."""
    base = _key(_key(np.zeros(1, np.uint64), seed & 0xFFFFFFFFFFFFFFFF), epoch)
    rows = _key(_key(base, indices), layer)[:, None]
    return _mix(rows + _GOLDEN * np.arange(1, width + 1, dtype=np.uint64)[None, :])


def keep_masks(seed: int, epoch: int, indices, p: float, widths: list[int]
               ) -> list[np.ndarray]:
    """One float32 mask per dropout layer, ``len(indices) x width``: ``1 / (1 - p)`` where a
    unit is kept (probability ``1 - p``), 0 where it is dropped, as inverted dropout scales."""
    threshold, scale = np.uint64(drop_threshold(p)), keep_scale(p)
    return [(random_bits(seed, epoch, indices, layer, width) >= threshold) * scale
            for layer, width in enumerate(widths)]


def drop_threshold(p: float) -> int:
    """The uint64 below which a unit is dropped: a fraction ``p`` of all 2**64 values."""
    return min(int(p * 2.0**64), 2**64 - 1)


def keep_scale(p: float) -> np.float32:
    """Inverted dropout's factor for a kept unit, rounded to float32 once for both paths."""
    return np.float32(1.0 / (1.0 - p))

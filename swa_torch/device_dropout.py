"""``swa_recipe.dropout``'s masks drawn on the training device (``Data.on_device``).

The host path hashes ``(seed, epoch, sample index, layer)`` with numpy's uint64 and copies the
masks to the device every step; here the same splitmix64 hash runs in torch, so a step's masks
cost a few integer kernels where the batch already is. torch's uint64 tensors cannot do it (no
add, shift or compare on the CPU in torch 2.13), so the hash runs in int64, which holds the same
64 bits: addition and multiplication wrap modulo 2**64 exactly as uint64's do, a logical right
shift is the arithmetic one with the sign-extended bits masked off, and an unsigned comparison
is the signed one after flipping both sides' top bit. The masks equal ``keep_masks``' bit for
bit (tests/test_fast_path.py), so a run trains identically with either.
"""

from __future__ import annotations

import torch

from swa_recipe.dropout import GOLDEN, LAST_SHIFT, MIX_ROUNDS, drop_threshold, keep_scale

_BITS = 64
_TOP_BIT = 1 << (_BITS - 1)


def as_int64(value: int) -> int:
    """The int64 that holds ``value``'s low 64 bits (two's complement), for torch scalars."""
    value &= (1 << _BITS) - 1
    return value - (1 << _BITS) if value & _TOP_BIT else value


def _shift_right(x: torch.Tensor, shift: int) -> torch.Tensor:
    """uint64's logical right shift of int64 ``x``: the sign bits shifted in are masked off."""
    return (x >> shift) & ((1 << (_BITS - shift)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """``swa_recipe.dropout._mix`` (splitmix64's finaliser) on int64 tensors."""
    for shift, multiplier in MIX_ROUNDS:
        x = (x ^ _shift_right(x, shift)) * as_int64(multiplier)
    return x ^ _shift_right(x, LAST_SHIFT)


def _key(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``swa_recipe.dropout._key``: ``values`` (int64, wrapped) mixed into ``x``."""
    return _mix(x + (values + 1) * as_int64(GOLDEN))


def random_bits(seed: int, epoch: int, indices: torch.Tensor, layer: int, width: int
                ) -> torch.Tensor:
    """``swa_recipe.dropout.random_bits`` on ``indices``' device: ``len(indices) x width``
    int64 tensors holding the same 64 bits as that function's uint64 numbers."""
    device = indices.device

    def scalar(value: int) -> torch.Tensor:
        """A fill kernel, not a copy from the host (a blocking copy would wait for the GPU)."""
        return torch.full((1,), as_int64(value), dtype=torch.int64, device=device)

    base = _key(_key(torch.zeros(1, dtype=torch.int64, device=device), scalar(seed)),
                scalar(epoch))
    rows = _key(_key(base, indices.to(torch.int64)), scalar(layer))[:, None]
    units = torch.arange(1, width + 1, dtype=torch.int64, device=device)[None, :]
    return _mix(rows + units * as_int64(GOLDEN))


def keep_masks(seed: int, epoch: int, indices: torch.Tensor, p: float, widths: list[int]
               ) -> list[torch.Tensor]:
    """``swa_recipe.dropout.keep_masks`` on ``indices``' device: one float32 mask per dropout
    layer, ``1 / (1 - p)`` where a unit is kept and 0 where it is dropped."""
    threshold = as_int64(drop_threshold(p) ^ _TOP_BIT)  # unsigned order as signed order
    flip = as_int64(_TOP_BIT)
    scale = torch.full((), float(keep_scale(p)), dtype=torch.float32, device=indices.device)
    return [((random_bits(seed, epoch, indices, layer, width) ^ flip) >= threshold) * scale
            for layer, width in enumerate(widths)]

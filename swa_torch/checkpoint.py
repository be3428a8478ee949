"""PyTorch checkpoint files (``.pt``): atomic save, safe load, and checked weight loading."""

from __future__ import annotations

import torch
from torch import nn

from swa_recipe.checkpoint import (
    CheckpointError,
    atomic_save,
    check_shapes,
    map_tensors,
    plain_layout,
)


def save(state: dict, path: str) -> None:
    atomic_save(lambda tmp: torch.save(state, tmp), path)


def load(path: str) -> dict:
    """``weights_only=True``: tensors and plain containers only, never code from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a variety of errors for a bad file
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint "
                              f"({exc.__class__.__name__}); it is truncated, not a .pt file, "
                              f"or holds objects other than tensors") from None


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_weights(model: nn.Module, state: dict, path: str) -> None:
    """Load a plain state dict after checking every key and shape against ``model``."""
    state = plain_layout(state)
    check_shapes(shapes(model.state_dict()), shapes(state), path)
    model.load_state_dict(state, strict=False)


def to_numpy(obj):
    """Tensors, also inside nested dicts and lists (optimizer state), as numpy arrays."""
    return map_tensors(obj, lambda t: isinstance(t, torch.Tensor),
                       lambda t: t.detach().cpu().numpy())


def from_numpy(state: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in state.items()}

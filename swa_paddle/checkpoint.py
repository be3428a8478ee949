"""Paddle checkpoint files (``.pdparams``): atomic save, load, and checked weight loading."""

from __future__ import annotations

import paddle
from paddle import nn

from swa_recipe.checkpoint import CheckpointError, atomic_save, check_shapes, plain_layout


def save(state: dict, path: str) -> None:
    atomic_save(lambda tmp: paddle.save(state, tmp), path)


def load(path: str) -> dict:
    try:
        return paddle.load(path)
    except Exception as exc:  # paddle raises a variety of errors for a bad file
        raise CheckpointError(f"{path} cannot be read as a Paddle checkpoint "
                              f"({exc.__class__.__name__}); it is truncated or not a .pdparams "
                              f"file") from None


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_weights(model: nn.Layer, state: dict, path: str) -> None:
    """Load a plain state dict after checking every key and shape against ``model``."""
    state = plain_layout(state)
    check_shapes(shapes(model.state_dict()), shapes(state), path)
    model.set_state_dict(state)


def to_numpy(state: dict) -> dict:
    return {k: v.numpy() if isinstance(v, paddle.Tensor) else v for k, v in state.items()}


def from_numpy(state: dict) -> dict:
    return {k: paddle.to_tensor(v) for k, v in state.items()}

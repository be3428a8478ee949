"""Paddle checkpoint files (``.pdparams``): atomic save, load, and checked weight loading."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from swa_recipe.checkpoint import (
    CheckpointError,
    atomic_save,
    check_shapes,
    check_state_dict,
    map_tensors,
    plain_layout,
    safe_unpickle,
)
from swa_recipe.data.safe_pickle import UnsafePickle


def save(state: dict, path: str) -> None:
    atomic_save(lambda tmp: paddle.save(state, tmp), path)


def _is_saved_tensor(obj) -> bool:
    """``paddle.save`` stores a tensor as ``(name, ndarray)``."""
    return (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], np.ndarray))


NAME_TABLE = "StructuredToParameterName@@"


def _as_paddle_load(obj):
    """What ``paddle.load`` makes of an unpickled file: a plain state dict
    (``paddle.save(model.state_dict())``: arrays and a name table) gets its arrays as tensors
    and loses the table; otherwise ``(name, ndarray)`` pairs become tensors when the file has
    any, else every array does."""
    def tensor(t):
        return paddle.to_tensor(t[1] if isinstance(t, tuple) else t)

    if isinstance(obj, dict) and NAME_TABLE in obj:
        table = obj[NAME_TABLE]
        return {k: tensor(v) if isinstance(v, np.ndarray) and k in table else v
                for k, v in obj.items() if k != NAME_TABLE}
    pairs = []
    map_tensors(obj, _is_saved_tensor, pairs.append)
    return map_tensors(obj, _is_saved_tensor if pairs else
                       (lambda t: isinstance(t, np.ndarray)), tensor)


def load(path: str) -> dict:
    """What ``paddle.load`` returns, through the restricted unpickler of
    ``swa_recipe.data.safe_pickle``: loading never runs code hidden in the file, and never builds
    more than the file holds."""
    try:
        return _as_paddle_load(safe_unpickle(path))
    except (CheckpointError, UnsafePickle) as exc:
        raise CheckpointError(f"{path}: refusing to load: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise CheckpointError(f"{path} cannot be read as a Paddle checkpoint "
                              f"({exc.__class__.__name__}); it is truncated or not a .pdparams "
                              f"file") from None


is_tensor = paddle.is_tensor


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_weights(model: nn.Layer, state: dict, path: str) -> None:
    """Load a plain state dict after checking every key and shape against ``model``."""
    state = plain_layout(check_state_dict(state, path, is_tensor))
    check_shapes(shapes(model.state_dict()), shapes(state), path)
    model.set_state_dict(state)


def to_numpy(obj):
    """Tensors, also inside nested dicts and lists (optimizer state), as numpy arrays."""
    return map_tensors(obj, lambda t: isinstance(t, paddle.Tensor), lambda t: t.numpy())


def from_numpy(state: dict) -> dict:
    return {k: paddle.to_tensor(v) for k, v in state.items()}


def _rename_keys(state: dict, names: dict[str, str]) -> dict:
    """Replace a leading parameter name (``<name>_velocity_0``) by its mapped name."""
    out = {}
    for key, value in state.items():
        match = max((n for n in names if key.startswith(n + "_")), key=len, default=None)
        out[names[match] + key[len(match):] if match else key] = value
    return out


def optimizer_state(optimizer: paddle.optimizer.Optimizer, model: nn.Layer) -> dict:
    """The optimizer's state keyed by structured names (``features.0.weight_velocity_0``).

    Paddle keys it by unique names (``conv2d_13.w_0``) that depend on how many layers the
    process created before: a checkpoint keyed so would not resume in another process or next
    to a second model.
    """
    names = {p.name: k for k, p in model.named_parameters()}
    return _rename_keys(optimizer.state_dict(), names)


def load_optimizer_state(optimizer: paddle.optimizer.Optimizer, model: nn.Layer,
                         state: dict) -> None:
    names = {k: p.name for k, p in model.named_parameters()}
    optimizer.set_state_dict(_rename_keys(state, names))

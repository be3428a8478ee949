"""PyTorch checkpoint files (``.pt``): atomic save, safe load, and checked weight loading."""

from __future__ import annotations

import os
import zipfile

import torch
from torch import nn

from swa_recipe.checkpoint import (
    CheckpointError,
    atomic_save,
    check_shapes,
    check_state_dict,
    map_tensors,
    open_checkpoint,
    plain_layout,
)
from swa_recipe.data import safe_pickle
from swa_recipe.data.safe_pickle import UnsafePickle, short


def save(state: dict, path: str) -> None:
    atomic_save(lambda tmp: _save_to(state, tmp), path)


def _save_to(state: dict, tmp: str) -> None:
    """``torch.save`` through a Python file: given a path, torch opens it in C++ and reports
    a failure (read-only folder, full disk) as a RuntimeError; through ``open`` it is the
    OSError every writer of the project turns into one line."""
    with open(tmp, "wb") as fh:
        torch.save(state, fh)


def _check_archive(fh) -> None:
    """A ``torch.save`` zip stores its records uncompressed: records that would inflate past
    the file's own size are a zip bomb, refused before torch reads them."""
    if not zipfile.is_zipfile(fh):
        return
    fh.seek(0)
    with zipfile.ZipFile(fh) as archive:
        claimed = sum(info.file_size for info in archive.infolist())
    if claimed > os.fstat(fh.fileno()).st_size:
        raise UnsafePickle(f"its records claim {claimed} bytes, more than the file holds")


def _stored(t: torch.Tensor) -> torch.Tensor:
    """A tensor may not claim more elements than its storage holds (stride 0 or overlapping
    strides): copying it would allocate what the file never held."""
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        raise UnsafePickle(f"a tensor of shape {short(tuple(t.shape))} claims more elements "
                           f"than its storage holds")
    return t


def load(path: str) -> dict:
    """``weights_only=True``: tensors and plain containers only, never code from the file;
    shared objects visited once, nesting and tensor sizes bounded (``safe_pickle.walk``)."""
    with open_checkpoint(path) as fh:  # a regular file: a FIFO or a device is one line
        return _load_checked(fh, path)


def _load_checked(fh, path: str) -> dict:
    """``load`` of the opened, regular file ``fh``: the descriptor checked is the one read."""
    try:
        _check_archive(fh)
        fh.seek(0)
        state = torch.load(fh, map_location="cpu", weights_only=True)
        return safe_pickle.walk(state, lambda t: isinstance(t, torch.Tensor), _stored,
                                leaves=safe_pickle.LEAVES + (torch.dtype, torch.device))
    except UnsafePickle as exc:
        raise CheckpointError(f"{path}: refusing to load: {exc}") from None
    except Exception as exc:  # torch raises a variety of errors for a bad file
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint "
                              f"({exc.__class__.__name__}); it is truncated, not a .pt file, "
                              f"or holds objects other than tensors") from None


is_tensor = torch.is_tensor


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_weights(model: nn.Module, state: dict, path: str) -> None:
    """Load a plain state dict after checking every key and shape against ``model``."""
    state = plain_layout(check_state_dict(state, path, is_tensor))
    check_shapes(shapes(model.state_dict()), shapes(state), path)
    model.load_state_dict(state, strict=False)


def to_numpy(obj):
    """Tensors, also inside nested dicts and lists (optimizer state), as numpy arrays."""
    return map_tensors(obj, lambda t: isinstance(t, torch.Tensor),
                       lambda t: t.detach().cpu().numpy())


def from_numpy(state: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in state.items()}

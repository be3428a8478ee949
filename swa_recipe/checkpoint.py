"""Checkpoint plumbing both twins share: atomic writes, names, and refusing a mismatching file."""

from __future__ import annotations

import glob
import os
import pickle
import re
from collections.abc import Callable

# What a checkpoint must agree on with the run that loads it.
IDENTITY_KEYS = (("Arch", "model"), ("Arch", "width"), ("Arch", "depth"),
                 ("Arch", "num_classes"), ("Data", "dataset"))
EXTENSIONS = {"paddle": ".pdparams", "torch": ".pt"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here; the message names the file and the mismatch."""


def checkpoint_path(run_dir: str, epoch: int, framework: str, iteration: int = 0) -> str:
    """``checkpoint-{epoch}`` after ``epoch`` complete epochs; ``-iter{k}`` when written after
    ``k`` steps of the next one (on SIGINT/SIGTERM)."""
    mid = f"-iter{iteration}" if iteration else ""
    return os.path.join(run_dir, f"checkpoint-{epoch}{mid}{EXTENSIONS[framework]}")


def framework_of(path: str) -> str | None:
    for framework, ext in EXTENSIONS.items():
        if path.endswith(ext):
            return framework
    return None


def latest_checkpoint(run_dir: str, framework: str) -> str | None:
    """The complete checkpoint with the highest epoch in ``run_dir`` (temp files never match)."""
    pattern = re.compile(rf"checkpoint-(\d+)(?:-iter(\d+))?{re.escape(EXTENSIONS[framework])}$")
    found = [((int(m.group(1)), int(m.group(2) or 0)), p)
             for p in glob.glob(os.path.join(run_dir, "checkpoint-*"))
             if (m := pattern.fullmatch(os.path.basename(p)))]
    return max(found)[1] if found else None


def atomic_save(write: Callable[[str], None], path: str) -> None:
    """Write through a temporary file, flush it to disk, then rename: complete or absent."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_identity(saved: dict | None, cfg: dict, path: str) -> None:
    """Refuse a checkpoint of another model, width, class count or dataset."""
    if not saved:
        return
    for section, key in IDENTITY_KEYS:
        have, want = saved.get(section, {}).get(key), cfg[section][key]
        if have != want:
            raise CheckpointError(f"{path} holds {section}.{key}={have}, this run has {want}; "
                                  f"pass a matching checkpoint or -o {section}.{key}={have}")


def map_tensors(obj, is_tensor: Callable[[object], bool], fn: Callable):
    """``fn`` applied to every tensor of a checkpoint, inside nested dicts, lists and tuples."""
    if is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(v, is_tensor, fn)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, is_tensor, fn) for v in obj)
    return obj


def plain_layout(state: dict) -> dict:
    """A model state dict without an ``AveragedModel``/``DataParallel`` wrapper's ``module.``
    prefix and ``n_averaged``: the layout of the original repo's ``swa_state_dict``."""
    return {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}


def check_shapes(expected: dict, found: dict, path: str) -> None:
    """Compare name -> shape maps; name the first missing, unexpected or differently shaped key."""
    for name, shape in expected.items():
        if name not in found:
            raise CheckpointError(f"{path} lacks '{name}'; it is not a checkpoint of this model")
        if tuple(found[name]) != tuple(shape):
            raise CheckpointError(f"{path}: '{name}' has shape {tuple(found[name])}, the model "
                                  f"expects {tuple(shape)}; check --model and Arch.width")
    extra = [n for n in found if n not in expected]
    if extra:
        raise CheckpointError(f"{path} has '{extra[0]}', which this model lacks; "
                              f"it is a checkpoint of another model")


# All a ``paddle.save`` file of tensors, arrays and plain containers refers to.
SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("builtins", "tuple"), ("builtins", "set"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles tensors-as-arrays and plain containers; refuses any other global, which is
    how a crafted pickle runs code (``os.system``, ``eval``...)."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to load: the file refers to {module}.{name}, which a "
                              f"checkpoint never needs (it could run code); use a trusted file")


def safe_unpickle(path: str):
    with open(path, "rb") as fh:
        return SafeUnpickler(fh).load()

"""Checkpoint plumbing both twins share: atomic writes, names, and refusing a mismatching file."""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable

from swa_recipe.data import regular, safe_pickle
from swa_recipe.data.safe_pickle import short
from swa_recipe.modelsize import weight_count
from swa_recipe.numbers import NumberError, to_float, to_int

# What a checkpoint must agree on with the run that loads it.
IDENTITY_KEYS = (("Arch", "model"), ("Arch", "width"), ("Arch", "depth"),
                 ("Arch", "num_classes"), ("Data", "dataset"))
EXTENSIONS = {"paddle": ".pdparams", "torch": ".pt"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here; the message names the file and the mismatch."""


def checkpoint_path(run_dir: str, epoch: int, framework: str, iteration: int = 0) -> str:
    """``checkpoint-{epoch}`` after ``epoch`` complete epochs (``checkpoint-0``: the initial
    weights, as the original writes them). Written after ``iteration`` steps of the next epoch
    (on SIGINT/SIGTERM), the name is the position as the training line shows it, 1-based:
    ``checkpoint-{epoch + 1}-iter{iteration}``."""
    name = f"checkpoint-{epoch + 1}-iter{iteration}" if iteration else f"checkpoint-{epoch}"
    return os.path.join(run_dir, f"{name}{EXTENSIONS[framework]}")


def framework_of(path: str) -> str | None:
    for framework, ext in EXTENSIONS.items():
        if path.endswith(ext):
            return framework
    return None


def checkpoint_order(epoch: int, iteration: int | None) -> tuple[int, int, int]:
    """Sort key of a checkpoint name's position: ``checkpoint-E-iterK`` (epoch E, 1-based,
    K steps in) comes after ``checkpoint-{E-1}`` and before ``checkpoint-E`` (E done)."""
    return (epoch, 0, iteration) if iteration else (epoch, 1, 0)


def latest_checkpoint(run_dir: str, framework: str) -> str | None:
    """The complete checkpoint furthest into training in ``run_dir`` (temp files never
    match)."""
    pattern = re.compile(rf"checkpoint-(\d+)(?:-iter(\d+))?{re.escape(EXTENSIONS[framework])}$")
    found = [(checkpoint_order(int(m.group(1)), int(m.group(2) or 0)), p)
             for p in glob.glob(os.path.join(run_dir, "checkpoint-*"))
             if (m := pattern.fullmatch(os.path.basename(p)))]
    return max(found)[1] if found else None


def position(epoch: int, iteration: int, iters: int | None = None) -> str:
    """Where a checkpoint stands, as the log counts (1-based): "the end of epoch 3", "epoch 4,
    iteration 120/391", or "the start" for the initial weights."""
    if iteration:
        of = f"/{iters}" if iters else ""
        return f"epoch {epoch + 1}, iteration {iteration}{of}"
    return f"the end of epoch {epoch}" if epoch else "the start (initial weights)"


def atomic_save(write: Callable[[str], None], path: str) -> None:
    """The project's one way to write a file: ``write(tmp)`` fills a new temporary file beside
    ``path``, which is flushed to disk and renamed onto ``path``: complete or absent, a failed
    write never truncates the previous file. The temporary file is created exclusively
    (``mkstemp``), so nothing planted under a predictable name is written through, and the
    rename replaces a symlink at ``path`` instead of following it. Its name starts with
    ``path``'s and holds ``.tmp``: a crash's leftovers are recognised and removed."""
    fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # the mode open() would give; mkstemp's is private
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def open_append(path: str, encoding: str | None = None, errors: str | None = None):
    """``open(path, "a")`` for the logs a run appends to (``train.log``, ``train_log.txt``),
    without following a symlink at ``path`` (``O_NOFOLLOW``: ``ELOOP``, an ``OSError``) and only
    onto a regular file: a link or FIFO planted in the run folder is refused, not written
    through or waited on."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


def check_identity(saved: dict | None, cfg: dict, path: str) -> None:
    """Refuse a checkpoint of another model, width, class count or dataset."""
    if not saved:
        return
    for section, key in IDENTITY_KEYS:
        values = saved.get(section)
        have, want = values.get(key) if isinstance(values, dict) else None, cfg[section][key]
        if type(have) is not type(want) or have != want:
            text = have[:80] if isinstance(have, str) else short(have)
            raise CheckpointError(f"{path} holds {section}.{key}={text}, this run has "
                                  f"{want}; pass a matching checkpoint or "
                                  f"-o {section}.{key}={text}")


def map_tensors(obj, is_tensor: Callable[[object], bool], fn: Callable):
    """``fn`` applied to every tensor of a checkpoint, inside nested dicts, lists and tuples;
    each shared object is visited once (see ``safe_pickle.walk``)."""
    try:
        return safe_pickle.walk(obj, is_tensor, fn, leaves=object)
    except safe_pickle.UnsafePickle as exc:
        raise CheckpointError(str(exc)) from None


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
            raise CheckpointError(f"{path}: '{name}' has shape {short(tuple(found[name]))}, "
                                  f"the model "
                                  f"expects {tuple(shape)}; check --model and Arch.width")
    extra = [n for n in found if n not in expected]
    if extra:
        raise CheckpointError(f"{path} has {short(extra[0], 60)}, which this model lacks; "
                              f"it is a checkpoint of another model")


def check_counters(state: dict, path: str) -> None:
    """The counters of a training checkpoint (epoch, ``swa_n``, mid-epoch progress) through
    the project's number reader before any is used: a pickled 5,000-digit integer, a NaN loss
    total or a text where a count belongs is one line here, not a traceback or an overflow
    where the trainer hands it to the framework."""
    progress = state.get("progress") or {}
    try:
        to_int(state["epoch"], "its epoch", 0, text=False)
        if state.get("swa_n") is not None:
            to_int(state["swa_n"], "its swa_n", 0, text=False)
        if not isinstance(progress, dict):
            raise NumberError(f"its progress is a {type(progress).__name__}, not a mapping")
        to_int(progress.get("iteration", 0), "its progress iteration", 0, text=False)
        totals = progress.get("totals", [0.0, 0.0, 0.0])
        if not isinstance(totals, (list, tuple)) or len(totals) != 3:
            raise NumberError(f"its progress totals are {short(totals)}, not 3 numbers")
        for total in totals:
            to_float(total, "a progress total", text=False)
        if progress.get("first_lr") is not None:
            to_float(progress["first_lr"], "its progress first_lr", text=False)
    except NumberError as exc:
        raise CheckpointError(f"{path}: {exc}; it is not a training checkpoint of this "
                              f"project") from None


def check_weight_count(cfg: dict, shapes: dict, path: str) -> None:
    """Before a model is built from ``cfg`` (a checkpoint's config, or the flags for a plain
    state dict): the state dict (``shapes``: name -> shape) must hold at least the weights
    that model has, so a tiny file whose config asks for a huge model is refused without
    allocating it. The exact
    comparison, ``check_shapes``, follows once the model exists."""
    held = sum(math.prod(shape) for shape in shapes.values())
    need = weight_count(cfg)
    if held < need:
        arch = cfg["Arch"]
        raise CheckpointError(f"{path} holds {held} weights, but {arch['model']} at width "
                              f"{arch['width']:g} has {need}; it is not a checkpoint of this "
                              f"model: pass a matching checkpoint or set Arch.model / "
                              f"Arch.width with -o")


NOT_REGULAR = ("is not a regular file (a FIFO, a device or a socket: reading it would hang or "
               "never end); pass a checkpoint file")


def open_checkpoint(path: str):
    """``regular.open_regular`` for a checkpoint: ``--resume`` naming a FIFO or
    ``/dev/urandom`` is one line, not a hang or a read without end."""
    try:
        return regular.open_regular(path)
    except regular.NotRegularFile:
        raise CheckpointError(f"{short(str(path), 200)} {NOT_REGULAR}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {short(str(path), 200)} "
                              f"({exc.strerror or exc})") from None


def check_export_destinations(save_dir: str, names: tuple[str, ...]) -> None:
    """Refuse, before anything is written or removed, an export destination that is a folder
    or a special file: a rename cannot replace it, and removing it is not the export's to do."""
    path = regular.irreplaceable(save_dir, names)
    if path is not None:
        raise CheckpointError(f"{path} is a directory or a special file, not an exported "
                              f"model's file; remove it or pass another --save_dir")


def safe_unpickle(path: str):
    """A ``paddle.save`` file through the project's restricted unpickler (``safe_pickle``)."""
    with open_checkpoint(path) as fh:
        return safe_pickle.load(fh, safe_pickle.CHECKPOINT_GLOBALS, encoding="latin1")


def check_state_dict(state, path: str, is_tensor: Callable[[object], bool]) -> dict:
    """A model state dict must map names to tensors; say which entry is not."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__} where a state dict "
                              f"(names to tensors) belongs; it is not a model checkpoint")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict key {short(key)} is not a parameter "
                                  f"name; it is not a model checkpoint")
        if not is_tensor(value):
            raise CheckpointError(f"{path}: {short(key, 60)} holds a "
                                  f"{type(value).__name__}, not a tensor; it is not a model "
                                  f"checkpoint")
    return state

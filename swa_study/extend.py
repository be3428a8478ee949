"""Extending a finished SWA run: a longer run that is the shorter one continued.

With SWA, the learning rate of every schedule here depends on ``swa_start`` and ``swa_lr``, not
on the total number of epochs, and data order, augmentation and dropout masks are pure functions
of (seed, epoch, sample). So the 1.25- and 1.5-budget SWA runs of the paper's table are the
1-budget run continued: resuming its last checkpoint with more epochs gives, bit for bit, what a
fresh longer run gives, at the cost of the extra epochs only. That holds only when the two runs
agree on everything that was trained; :func:`refusal` says why an extension would not be exact.

The shorter run's folder is left as it is: its last checkpoint and ``metrics.csv`` are copied
into the longer run's own folder, which then resumes from there.
"""

from __future__ import annotations

import os
import shutil

from swa_recipe import schedules
from swa_recipe.checkpoint import atomic_save, checkpoint_path
from swa_recipe.config import RESUME_SAFE_KEYS

# Keys that may differ between a run and its extension are those a resumed run may change
# (where outputs and data live, how often it logs and saves, its length): one rule for both.
FREE_KEYS = RESUME_SAFE_KEYS
PROBE_ITERS = 4  # iterations per epoch at which per-iteration schedules (cyclic) are compared


class ExtensionError(ValueError):
    """A longer run that is not the shorter one continued; the message says what differs."""


def _plan(cfg: dict, epoch: int) -> tuple:
    """What decides epoch ``epoch``'s numbers: its learning rates, whether it averages, whether
    it evaluates (a row with or without test columns)."""
    lrs = tuple(schedules.learning_rate(cfg, epoch, it, PROBE_ITERS) for it in range(PROBE_ITERS))
    return (lrs, schedules.should_collect(cfg, epoch), schedules.averages_steps(cfg, epoch),
            schedules.should_eval(cfg, epoch))


def refusal(short: dict, long: dict) -> str | None:
    """Why the run configured by ``long`` is not the run ``short`` continued (None: it is)."""
    n, m = short["Global"]["epochs"], long["Global"]["epochs"]
    if not (short["SWA"]["swa"] and long["SWA"]["swa"]):
        return ("an SGD run's learning rate decays over its total epochs, so a longer SGD run "
                "is another run; train it from scratch")
    if m <= n:
        return f"the longer run has {m} epochs, not more than the {n} it would continue"
    for section, values in long.items():
        for key, value in values.items():
            if (section, key) not in FREE_KEYS and short.get(section, {}).get(key) != value:
                return (f"{section}.{key} is {short.get(section, {}).get(key)!r} in the run to "
                        f"extend and {value!r} in the longer run; only "
                        f"{', '.join(sorted('.'.join(k) for k in FREE_KEYS))} may differ")
    for epoch in range(n):
        if _plan(short, epoch) != _plan(long, epoch):
            return (f"epoch {epoch + 1} would train, average or evaluate differently in the "
                    f"longer run (its schedule depends on the total); train it from scratch")
    return None


def check(short: dict, long: dict) -> None:
    reason = refusal(short, long)
    if reason:
        raise ExtensionError(f"cannot extend {short['Global']['dir']} to "
                             f"{long['Global']['epochs']} epochs: {reason}")


def final_checkpoint(run_dir: str, epochs: int, framework: str) -> str | None:
    """The checkpoint a finished run wrote after its last epoch, or None when it is gone."""
    path = checkpoint_path(run_dir, epochs, framework)
    return path if os.path.isfile(path) and not os.path.islink(path) else None


def _copy(src: str, dst_dir: str) -> str:
    """Copy ``src`` into ``dst_dir`` through ``atomic_save``: complete or absent."""
    dst = os.path.join(dst_dir, os.path.basename(src))
    atomic_save(lambda tmp: shutil.copyfile(src, tmp, follow_symlinks=False), dst)
    return dst


def prepare(short: dict, long: dict) -> str:
    """Seed the longer run's folder with the shorter run's last checkpoint and table rows;
    return the checkpoint to resume from. The shorter run's folder is only read."""
    check(short, long)
    src_dir, dst_dir = short["Global"]["dir"], long["Global"]["dir"]
    n, framework = short["Global"]["epochs"], short["Global"]["framework"]
    source = final_checkpoint(src_dir, n, framework)
    if source is None:
        raise ExtensionError(f"cannot extend {src_dir}: its last checkpoint "
                             f"{os.path.basename(checkpoint_path(src_dir, n, framework))} is gone; "
                             f"train the longer run from scratch")
    os.makedirs(dst_dir, exist_ok=True)
    _copy(os.path.join(src_dir, "metrics.csv"), dst_dir)
    return _copy(source, dst_dir)

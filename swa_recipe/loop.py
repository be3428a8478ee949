"""The epoch loop of the original ``train.py``, written once for both twins.

A twin supplies a trainer object with the methods of :class:`Trainer`; this module decides when
to collect, evaluate and save, and writes every run file, so the two twins cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Protocol

from . import schedules
from .checkpoint import CheckpointError, check_identity, checkpoint_path, latest_checkpoint
from .config import run_dir, save_config
from .logs import RunLog, get_logger


class Trainer(Protocol):
    framework: str
    rank: int
    world_size: int
    swa_n: int

    def train_epoch(self, epoch: int, logger: logging.Logger | None) -> dict: ...
    def evaluate(self, swa: bool = False) -> dict: ...
    def collect(self) -> None: ...
    def update_bn(self) -> None: ...
    def state_dict(self, epoch: int) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def save(self, state: dict, path: str) -> None: ...
    def load(self, path: str) -> dict: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the framework RNG (dropout) for one epoch: resuming needs no saved RNG state."""
    return seed * 1_000_003 + epoch


def resume_path(cfg: dict, out: str) -> str | None:
    """``Global.resume`` as a path; ``auto`` is the newest complete checkpoint in the run dir."""
    resume = cfg["Global"]["resume"]
    if resume != "auto":
        return resume
    return latest_checkpoint(out, cfg["Global"]["framework"])


def restore(trainer: Trainer, cfg: dict, path: str) -> int:
    """Load ``path`` into the trainer; return the epoch to continue from."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found; pass an existing file to --resume")
    state = trainer.load(path)
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no epoch/state_dict); "
                              f"resume from a checkpoint-N file of a run")
    check_identity(state.get("config"), cfg, path)
    trainer.load_state_dict(state)
    return int(state["epoch"])


def save_checkpoint(trainer: Trainer, out: str, epoch: int) -> str:
    """Every rank gathers the state (it may involve collectives); rank 0 writes it."""
    path = checkpoint_path(out, epoch, trainer.framework)
    state = trainer.state_dict(epoch)
    if trainer.rank == 0:
        trainer.save(state, path)
    return path


def fit(trainer: Trainer, cfg: dict, logger: logging.Logger | None = None) -> dict:
    """Train for ``Global.epochs``; return the last epoch's row of the table.

    Every rank trains, evaluates and averages; only rank 0 writes files and logs.
    """
    out = run_dir(cfg)
    main = trainer.rank == 0
    if main:
        os.makedirs(out, exist_ok=True)
        logger = logger or get_logger(out)
        save_config(cfg, os.path.join(out, "config.yaml"))
    else:
        logger = None
    swa = cfg["SWA"]["swa"]
    start_epoch = 0
    path = resume_path(cfg, out) if cfg["Global"]["resume"] else None
    if path:
        start_epoch = restore(trainer, cfg, path)
        if logger:
            logger.info(f"resumed from {path} at epoch {start_epoch}")
    else:
        save_checkpoint(trainer, out, 0)
    log = RunLog(out, swa, start_epoch, logger) if main else None
    swa_res = {"loss": None, "accuracy": None}
    row: dict = {}
    for epoch in range(start_epoch, cfg["Global"]["epochs"]):
        t0 = time.time()
        train_res = trainer.train_epoch(epoch, logger)
        evaluating = schedules.should_eval(cfg, epoch)
        test_res = trainer.evaluate() if evaluating else {"loss": None, "accuracy": None}
        if schedules.should_collect(cfg, epoch):
            trainer.collect()
            if evaluating:
                trainer.update_bn()
                swa_res = trainer.evaluate(swa=True)
            else:
                swa_res = {"loss": None, "accuracy": None}
        if schedules.should_save(cfg, epoch):
            save_checkpoint(trainer, out, epoch + 1)
        row = {"ep": epoch + 1, "lr": train_res["lr"], "tr_loss": train_res["loss"],
               "tr_acc": train_res["accuracy"], "te_loss": test_res["loss"],
               "te_acc": test_res["accuracy"], "swa_te_loss": swa_res["loss"],
               "swa_te_acc": swa_res["accuracy"], "time": time.time() - t0}
        if log:
            log.add(row)
    if log:
        logger.info(f"plot written to {log.plot()}")
    return row


def progress_wanted() -> bool:
    """A tqdm bar only when a person watches a terminal."""
    return sys.stderr.isatty()

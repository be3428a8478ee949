"""The epoch and batch loop of the original ``train.py``, written once for both twins.

A twin subclasses :class:`Trainer` and supplies its abstract methods (the step, the learning
rate, framework state in and out); this module decides when to step, collect, evaluate and save,
and writes every run file, so the two twins cannot drift apart.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from swa_recipe import schedules
from swa_recipe.arch import dropout_widths, model_dropout
from swa_recipe.checkpoint import (
    CheckpointError,
    check_counters,
    check_identity,
    check_shapes,
    check_state_dict,
    checkpoint_path,
    framework_of,
    latest_checkpoint,
    plain_layout,
    position,
)
from swa_recipe.config import ConfigError, run_dir, save_config
from swa_recipe.data.safe_pickle import short
from swa_recipe.dropout import keep_masks
from swa_recipe.logs import (
    PROGRESS_SECONDS,
    IterMeter,
    ProgressClock,
    RunLog,
    Scalars,
    get_logger,
    open_log_file,
    summarize,
)
from swa_recipe.rundir import writing
from swa_recipe.runtime import launched_world_size, release_free_memory

# Under a launcher, ranks agree on a stop signal every this many steps (a collective each time),
# and all stop at the same step.
STOP_CHECK_EVERY = 10


class Trainer(abc.ABC):
    """One run's training, written once for both twins; ``swa_paddle.trainer.Trainer`` and
    ``swa_torch.trainer.Trainer`` supply the framework calls (the abstract methods below).

    The seam: this class owns the epoch and the batch loop (``train_epoch``: position, learning
    rate, dropout masks, logging, stop requests, EMA updates) and enters the twin through
    :meth:`set_lr` and :meth:`step` once per step. A twin's ``__init__`` calls this one, then
    builds ``device, rank, world_size, model, net, swa_model, optimizer, train_loader,
    test_loader, batches`` (the loader's ``swa_recipe.data.cifar.EpochBatches``) and ``iters``,
    and sets the class attributes ``framework``, ``checkpoint``, ``dist`` and ``visual`` (its
    twin's modules; ``visual.require()`` and ``visual.open_writer(path)`` give the scalar writer
    of ``Global.use_visualdl``, VisualDL or TensorBoard). ``meter_class`` records each step
    (``logs.IterMeter``; ``diff/`` passes one that also keeps every step's exact values).
    """

    framework: str
    checkpoint: ModuleType
    dist: ModuleType
    visual: ModuleType

    def __init__(self, cfg: dict, meter_class: type[IterMeter] = IterMeter):
        check_sample_dropout(cfg)
        if cfg["Global"]["use_visualdl"]:
            self.visual.require()  # a missing package is refused before any work
        self.cfg, self.meter_class = cfg, meter_class
        self.progress = Progress()
        self.clock: ProgressClock | None = None  # fit() sets rank 0's: estimate, progress lines
        self.scalars: Scalars | None = None  # fit() sets rank 0's with Global.use_visualdl

    # ---------------------------------------------------------------- what a twin supplies

    @abc.abstractmethod
    def set_lr(self, lr: float) -> None:
        """Make ``lr`` the optimizer's rate for the next step."""

    @abc.abstractmethod
    def step(self, x: Any, y: Any, masks: list[np.ndarray] | None, loss_scale: float
             ) -> tuple[Any, Any, int]:
        """One optimizer step on this rank's batch: dropout ``masks`` (host arrays, one per
        dropout layer, or None) for this forward only, the summed cross-entropy times
        ``loss_scale`` (1 / the global batch, times the ranks the gradient is averaged over)
        backward, the optimizer's step. Returns (loss sum, correct count) as device scalars,
        unread so the host need not wait, and the batch's size."""

    @abc.abstractmethod
    def optimizer_state(self) -> dict:
        """The optimizer's state for a checkpoint, loadable in any process."""

    @abc.abstractmethod
    def scaler_state(self) -> dict | None:
        """The AMP loss scaler's state for a checkpoint (float16), None without one."""

    @abc.abstractmethod
    def load_framework_state(self, state: dict) -> None:
        """Weights, optimizer state, SWA average (with its count) and the loss scaler's state
        (``scaler``, absent in older checkpoints) from a checkpoint."""

    @abc.abstractmethod
    def evaluate_model(self, model: Any) -> dict:
        """Mean loss and accuracy (%) of ``model`` on the test loader, over all ranks."""

    @abc.abstractmethod
    def recompute_bn(self, loader: Any, model: Any) -> None:
        """``update_bn`` of ``model`` over ``loader`` (the global batches, under a launcher)."""

    @abc.abstractmethod
    def has_batch_norm(self, model: Any) -> bool:
        """Whether ``model`` has BatchNorm layers (``update_bn`` has work to do)."""

    @abc.abstractmethod
    def to_host(self, tensors: list) -> np.ndarray:
        """Device tensors as one float64 array: one transfer, the one wait for the device."""

    # ------------------------------------------------------------------------- the loop

    def train_epoch(self, epoch: int, logger: logging.Logger | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Train one epoch, from ``self.progress`` on (a run resumed mid-epoch); the epoch's
        loss, accuracy and first lr. On a stop request, return after the step in progress
        with ``interrupted`` and the steps done."""
        meter = self._begin_epoch(epoch, logger)
        for it, (x, y) in enumerate(meter.iterate(self.train_loader), start=meter.start):
            lr = self.learning_rate(epoch, it)
            self.set_lr(lr)
            loss_sum, correct, n = self.step(x, y, self.dropout_masks(epoch, it),
                                             self.world_size / self.batches.global_size(it))
            if self._end_step(meter, it, lr, loss_sum, correct, n, should_stop):
                return {"interrupted": True, "iteration": it + 1}
        return self._end_epoch()

    def learning_rate(self, epoch: int, it: int) -> float:
        """Iteration ``it``'s rate from the one closed-form schedule (``schedules``), for every
        schedule including ``swalr``: nothing to step, so nothing a checkpoint must carry."""
        return schedules.learning_rate(self.cfg, epoch, it, self.iters)

    def _begin_epoch(self, epoch: int, logger: logging.Logger | None) -> IterMeter:
        """Position the loader at ``self.progress`` (0, or where a mid-epoch checkpoint
        stopped); the meter continues that progress's totals."""
        start = self.progress.iteration
        self.averaging_steps = schedules.averages_steps(self.cfg, epoch)
        self._epoch, self._pending = epoch, []
        self.train_loader.batch_sampler.set_epoch(epoch, start)
        self.net.train()
        g = self.cfg["Global"]
        return self.meter_class(epoch, g["epochs"], self.iters, g["log_freq"], logger,
                                progress_wanted() and self.rank == 0, self.progress.totals,
                                start, clock=self.clock)

    def dropout_masks(self, epoch: int, it: int) -> list[np.ndarray] | None:
        """This rank's dropout masks for step ``it``: drawn per sample of the global batch
        (``swa_recipe.dropout``), so they do not depend on the number of processes."""
        p, widths = model_dropout(self.cfg), dropout_widths(self.cfg)
        if p == 0 or not widths:
            return None
        return self.draw_masks(epoch, it, p, widths)

    def draw_masks(self, epoch: int, it: int, p: float, widths: list[int]) -> list:
        """``keep_masks`` of this rank's shard of batch ``it`` as host arrays; a twin whose
        batches are built on the device draws the same masks there (torch, ``Data.on_device``)."""
        return keep_masks(self.cfg["Global"]["seed"], epoch, self.batches.shard(it), p, widths)

    def _end_step(self, meter: IterMeter, it: int, lr: float, loss_sum, correct, n: int,
                  should_stop: Callable[[], bool]) -> bool:
        """Record a finished step; True when every rank should stop here (a signal arrived).

        ``loss_sum`` and ``correct`` are tensors on the device; they are read, in one
        transfer, only when a training line is due, at the epoch's end or on a stop, so the
        host never waits for the device between log lines.
        """
        if self.averaging_steps:
            self.swa_model.update_parameters(self.model)
        self._pending.append((it, lr, loss_sum, correct, n))
        stop = self._stop_agreed(it, should_stop) and it + 1 < self.iters
        if stop or (it + 1) % self.cfg["Global"]["log_freq"] == 0 or it + 1 == self.iters:
            self._flush(meter)
        return stop

    def _stop_agreed(self, it: int, should_stop: Callable[[], bool]) -> bool:
        """One process: the signal flag itself. Under a launcher: every ``STOP_CHECK_EVERY``
        steps, true on every rank when a signal reached one (the same step on all ranks)."""
        if self.world_size == 1:
            return should_stop()
        if (it + 1) % STOP_CHECK_EVERY:
            return False
        return self.dist.any_rank(should_stop(), self.world_size)

    def _flush(self, meter: IterMeter) -> None:
        """Read the pending steps' values and record them (checking each loss)."""
        pending, self._pending = self._pending, []
        values = self.to_host([t for step in pending for t in step[2:4]])
        for k, (it, lr, _, _, n) in enumerate(pending):
            loss = check_finite(float(values[2 * k]) / n, self._epoch, it)
            meter.step(it, lr, loss, int(values[2 * k + 1]), n)
            if self.scalars is not None and meter.line_due(it):
                self.scalars.train(self._epoch * self.iters + it + 1, lr, loss,
                                   100 * int(values[2 * k + 1]) / max(n, 1))
            first_lr = lr if self.progress.first_lr is None else self.progress.first_lr
            self.progress = Progress(it + 1, meter.totals(), first_lr)

    def _end_epoch(self) -> dict:
        """The epoch's loss and accuracy over all ranks, and the lr it started with."""
        totals = self.dist.all_reduce_sum(np.array(self.progress.totals), self.world_size)
        first_lr, self.progress = self.progress.first_lr, Progress()
        return {**summarize(totals), "lr": first_lr}

    @property
    def swa_n(self) -> int:
        return int(self.swa_model.n_averaged) if self.swa_model is not None else 0

    def evaluate(self, swa: bool = False) -> dict:
        if not swa:
            self.dist.broadcast_bn_stats(self.model, self.world_size)
        return self.evaluate_model(self.swa_model.module if swa else self.model)

    def collect(self) -> None:
        """SWA averages the epoch's final weights; EMA has averaged every step already."""
        if self.cfg["SWA"]["avg"] == "swa":
            self.swa_model.update_parameters(self.model)

    def _whole_epoch(self):
        """The training loader over every batch of the current epoch: ``update_bn`` after a
        run resumed mid-epoch must see the batches before the resume point too."""
        self.batches.set_epoch(self.batches.epoch)
        return self.train_loader

    def update_bn(self) -> None:
        if self.has_batch_norm(self.model):
            self.recompute_bn(self._whole_epoch(), self.swa_model.module)

    def state_dict(self, epoch: int) -> dict:
        """The original repo's layout, plus config and mid-epoch progress. No RNG state: data
        order, augmentation and dropout derive from the config's seed and the position, and the
        learning rate is a closed form of the position (an older checkpoint's ``scheduler`` and
        ``rng`` entries are ignored)."""
        self.dist.broadcast_bn_stats(self.model, self.world_size)
        return {
            "epoch": epoch,
            "state_dict": self.model.state_dict(),
            "swa_state_dict": self.swa_model.module.state_dict() if self.swa_n else None,
            "swa_n": self.swa_n if self.swa_model is not None else None,
            "optimizer": self.optimizer_state(),
            "scaler": self.scaler_state(),
            "config": self.cfg,
            "progress": self.progress.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint: the twin's state, then the mid-epoch position."""
        self.load_framework_state(state)
        self.progress.load_state_dict(state.get("progress"))

    def save(self, state: dict, path: str) -> None:
        self.checkpoint.save(state, path)

    def load(self, path: str) -> dict:
        return self.checkpoint.load(path)




def check_sample_dropout(cfg: dict) -> None:
    """Refuse dropout that cannot be drawn per sample (``swa_recipe.dropout``): the masks of
    VGG's classifier are; a model whose dropout layers would draw from the framework's
    generator (WideResNet's, 0 by default) would lose bit-exact resume, identical twin masks
    and N processes training as 1, so it trains without dropout."""
    p = model_dropout(cfg)
    if p > 0 and not dropout_widths(cfg):
        raise ConfigError(f"Arch.dropout={p:g}: {cfg['Arch']['model']}'s dropout cannot be "
                          f"drawn per sample, so resume, the twins and N processes would "
                          f"not train alike; train it with Arch.dropout 0 (the original's)")


@dataclass
class Progress:
    """How far the current epoch got: what a checkpoint written mid-epoch must carry."""

    iteration: int = 0
    totals: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, samples
    first_lr: float | None = None

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "totals": list(self.totals),
                "first_lr": self.first_lr}

    def load_state_dict(self, state: dict | None) -> None:
        fresh = Progress()
        state = state or {}
        self.iteration = int(state.get("iteration", fresh.iteration))
        self.totals = [float(t) for t in state.get("totals", fresh.totals)]
        self.first_lr = state.get("first_lr")


class Interrupted(Exception):
    """SIGINT/SIGTERM: the run stopped after a step and wrote a checkpoint to resume from."""

    def __init__(self, signum: int, path: str):
        self.signum, self.path = signum, path
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; continue with: {resume_command(path)}")


def resume_command(path: str) -> str:
    """The whole command that continues the run from ``path``: the program that is running
    (``python train.py`` or ``swa-train``) and ``--resume PATH``; the checkpoint holds the
    config, folder and data path, so nothing else needs repeating."""
    prog = sys.argv[0] if sys.argv else ""
    if os.path.basename(prog) == "swa-train":
        program = "swa-train"
    else:
        program = f"python {shlex.quote(prog if prog.endswith('train.py') else 'train.py')}"
    launcher = " (under the same launcher)" if launched_world_size() > 1 else ""
    return f"{program} --resume {shlex.quote(path)}{launcher}"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and iteration."""


def check_finite(loss: float, epoch: int, it: int) -> float:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss} at epoch {epoch + 1}, iteration "
                               f"{it + 1}; lower --lr_init (the last good checkpoint is kept)")
    return loss


class StopSignal:
    """Records SIGINT/SIGTERM instead of dying, so the step in progress can finish."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def remove_partial_files(out: str) -> None:
    """Temporary files of a checkpoint write that a crash interrupted (never loaded)."""
    for name in os.listdir(out):
        if name.startswith("checkpoint-") and ".tmp" in name:
            os.remove(os.path.join(out, name))


def resume_path(cfg: dict, out: str) -> str | None:
    """``Global.resume`` as a path; ``auto`` is the newest complete checkpoint in the run dir."""
    resume = cfg["Global"]["resume"]
    if resume != "auto":
        return resume
    return latest_checkpoint(out, cfg["Global"]["framework"])


def agreed_resume_path(trainer: Trainer, cfg: dict, out: str) -> str | None:
    """Rank 0's ``resume_path``, on every rank: with ``auto``, ranks on nodes that do not share
    rank 0's file system would otherwise pick different checkpoints, or none."""
    path = resume_path(cfg, out) if trainer.rank == 0 else None
    return trainer.dist.broadcast_object(path, trainer.world_size)


def restore(trainer: Trainer, cfg: dict, path: str) -> int:
    """Load ``path`` into the trainer; return the epoch to continue from."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found; pass an existing file to --resume")
    found = framework_of(path)
    if found is not None and found != trainer.framework:
        raise CheckpointError(f"{path} is a {found} checkpoint and this run trains with "
                              f"{trainer.framework}; resume with --framework {found}, or start "
                              f"from converted weights")
    state = trainer.load(path)
    check_resumable(trainer, state, cfg, path)
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not fit this run ({exc.__class__.__name__}: "
                              f"{short(str(exc))}); resume from a checkpoint-N file of a run "
                              f"with this config") from None
    return state["epoch"]


def check_resumable(trainer: Trainer, state, cfg: dict, path: str) -> None:
    """A file to resume from is a training checkpoint of this model with optimizer state:
    converted weights and plain state dicts evaluate, they do not resume."""
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no epoch/state_dict); "
                              f"resume from a checkpoint-N file of a run")
    check_counters(state, path)
    if state.get("optimizer") is None:
        raise CheckpointError(f"{path} holds no optimizer state (converted weights?); it "
                              f"evaluates with eval.py but cannot resume a run")
    check_identity(state.get("config"), cfg, path)
    weights = plain_layout(check_state_dict(state["state_dict"], path,
                                            trainer.checkpoint.is_tensor))
    check_shapes(trainer.checkpoint.shapes(trainer.model.state_dict()),
                 trainer.checkpoint.shapes(weights), path)


def save_checkpoint(trainer: Trainer, out: str, epoch: int, iteration: int = 0) -> str:
    """Every rank gathers the state (it may involve collectives); rank 0 writes it.

    ``epoch`` counts completed epochs; ``iteration`` > 0 marks a checkpoint written mid-epoch,
    after that many steps of the next epoch (named ``checkpoint-{epoch + 1}-iter{iteration}``,
    the position as the log shows it). A failed write stops the run with a clear message
    and leaves earlier checkpoints as they were.
    """
    path = checkpoint_path(out, epoch, trainer.framework, iteration)
    state = trainer.state_dict(epoch)
    if trainer.rank == 0:
        try:
            trainer.save(state, path)
        except OSError as exc:
            raise CheckpointError(f"could not write {path} ({exc.strerror or exc}); free disk "
                                  f"space or fix permissions, then resume from the last "
                                  f"checkpoint (earlier ones are intact)") from None
    return path


def fit(trainer: Trainer, cfg: dict, logger: logging.Logger | None = None,
        begin: Callable[[], None] | None = None,
        progress_every: float = PROGRESS_SECONDS) -> dict:
    """Train for ``Global.epochs``; return the last epoch's row of the table.

    Every rank trains, evaluates and averages; only rank 0 writes files and logs, from the
    moment every refusal is past: then ``begin`` runs (``RunDir.begin``) and ``train.log``
    opens (a logger from ``get_logger(defer=True)`` kept its lines until then). Rank 0 also
    estimates the run time and, without a terminal, logs progress every ``progress_every``
    seconds (``logs.ProgressClock``).
    """
    out = run_dir(cfg)
    main = trainer.rank == 0
    if main:
        os.makedirs(out, exist_ok=True)
        logger = logger or get_logger(out, defer=True)
    else:
        logger = None
    swa = cfg["SWA"]["swa"]
    start_epoch = 0
    path = agreed_resume_path(trainer, cfg, out) if cfg["Global"]["resume"] else None
    if path:
        start_epoch = restore(trainer, cfg, path)  # refuses a bad file before anything is written
        if logger:
            at = position(start_epoch, trainer.progress.iteration, trainer.iters)
            logger.info(f"resumed from {path} at {at}")
    if main:
        if begin is not None:
            begin()
        open_log_file(logger, out)
        with writing(os.path.join(out, "config.yaml")):
            save_config(cfg, os.path.join(out, "config.yaml"))
        remove_partial_files(out)
    if not path:
        save_checkpoint(trainer, out, 0)
    log = RunLog(out, swa, start_epoch, logger) if main else None
    if main:
        trainer.clock = ProgressClock(logger, cfg["Global"]["epochs"], trainer.iters,
                                      cfg["Data"]["batch_size"], not progress_wanted(),
                                      progress_every)
    if main and cfg["Global"]["use_visualdl"]:
        trainer.scalars = Scalars(trainer.visual.open_writer(os.path.join(out, "vdl")))
    try:
        with StopSignal() as stop:
            return _epochs(trainer, cfg, out, start_epoch, log, logger, stop)
    finally:  # at the end, and on an interruption or an error
        if trainer.scalars is not None:
            trainer.scalars.close()
            trainer.scalars = None


def _epochs(trainer: Trainer, cfg: dict, out: str, start_epoch: int, log: RunLog | None,
            logger: logging.Logger | None, stop: StopSignal) -> dict:
    swa_res = {"loss": None, "accuracy": None}
    row: dict = {}
    for epoch in range(start_epoch, cfg["Global"]["epochs"]):
        t0 = time.time()
        train_res = trainer.train_epoch(epoch, logger, stop.requested)
        if train_res.get("interrupted"):
            path = save_checkpoint(trainer, out, epoch, train_res["iteration"])
            raise Interrupted(stop.signum, path)
        evaluating = schedules.should_eval(cfg, epoch)
        test_res = trainer.evaluate() if evaluating else {"loss": None, "accuracy": None}
        if schedules.should_collect(cfg, epoch):
            trainer.collect()
            if evaluating:
                if cfg["SWA"]["avg"] == "swa":  # EMA averages the BN statistics with the weights
                    trainer.update_bn()
                swa_res = trainer.evaluate(swa=True)
            else:
                swa_res = {"loss": None, "accuracy": None}
        stopping = trainer.dist.any_rank(stop.requested(), trainer.world_size)
        if schedules.should_save(cfg, epoch) or stopping:
            path = save_checkpoint(trainer, out, epoch + 1)
        release_free_memory()  # the heap's holes, else resident memory creeps up epoch by epoch
        row = {"ep": epoch + 1, "lr": train_res["lr"], "tr_loss": train_res["loss"],
               "tr_acc": train_res["accuracy"], "te_loss": test_res["loss"],
               "te_acc": test_res["accuracy"], "swa_te_loss": swa_res["loss"],
               "swa_te_acc": swa_res["accuracy"], "time": time.time() - t0}
        if log:
            log.add(row)
            trainer.clock.end_epoch(row["time"])
        if trainer.scalars is not None:
            trainer.scalars.evaluation((epoch + 1) * trainer.iters, row)
        if stopping:
            raise Interrupted(stop.signum, path)
    if log:
        logger.info(f"plot written to {log.plot()}")
    return row


def progress_wanted() -> bool:
    """A tqdm bar only when a person watches a terminal."""
    return sys.stderr.isatty()

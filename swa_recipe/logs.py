"""Run outputs both twins share: the training line, epoch table, metrics.csv and plot."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

import tabulate

from swa_recipe.checkpoint import atomic_save, open_append
from swa_recipe.figures import save_png
from swa_recipe.numbers import to_float, to_int
from swa_recipe.rundir import writing

COLUMNS = ["ep", "lr", "tr_loss", "tr_acc", "te_loss", "te_acc", "swa_te_loss", "swa_te_acc",
           "time"]
LOGGER_NAME = "swa"
FORMAT, DATE_FORMAT = "%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"


class LogFile(logging.FileHandler):
    """``train.log``; a failed write (disk full) stops the run with one line instead of
    logging's traceback on stderr, and a symlink or FIFO at its path is refused (``open_append``),
    not written through."""

    def _open(self):
        return open_append(self.baseFilename, self.encoding, self.errors)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            with writing(self.baseFilename):
                raise exc
        super().handleError(record)


class Pending(logging.Handler):
    """Keeps the records of a start that may still be refused, for ``open_log_file``."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _log_file(run_dir: str) -> LogFile:
    path = os.path.join(run_dir, "train.log")
    with writing(path):  # a link, FIFO or read-only file there: one line
        handler = LogFile(path)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    return handler


def open_log_file(logger: logging.Logger, run_dir: str) -> None:
    """Start ``train.log`` with what ``Pending`` kept (nothing to do for a logger that has no
    ``Pending``): a refused start never touches the file."""
    pending = [h for h in logger.handlers if isinstance(h, Pending)]
    if not pending:
        return
    handler = _log_file(run_dir)
    for keeper in pending:
        logger.removeHandler(keeper)
        for record in keeper.records:
            handler.handle(record)
    logger.addHandler(handler)


def get_logger(run_dir: str | None = None, defer: bool = False) -> logging.Logger:
    """The run's logger: stdout, and ``train.log`` in the run directory when given (with
    ``defer``, kept until ``open_log_file``)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        with contextlib.suppress(OSError):  # a log on a full disk cannot flush its tail
            handler.close()
    fmt = logging.Formatter(FORMAT, DATE_FORMAT)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if defer:
        logger.addHandler(Pending())
    elif run_dir is not None:
        logger.addHandler(_log_file(run_dir))
    return logger


PROGRESS_SECONDS = 60.0  # plain progress line interval without a terminal (train.py --progress)
ESTIMATE_AFTER = 5  # timed steps (the first, warm-up, not counted) before the run-time estimate


def duration(seconds: float) -> str:
    """A time span as a person reads it: "40 s", "12 min", "3 h 05 min", "2 d 04 h"."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


class ProgressClock:
    """Times the training steps of a whole run, for whoever cannot see a progress bar.

    After the first few steps it logs the estimated time to the end of the run (a user learns
    at once whether the run takes minutes or days); without a terminal (``nohup``, a scheduler,
    ``> log``) it also logs a plain progress line every ``interval`` seconds, since the tqdm bar
    is not drawn there and training lines come only every ``log_freq`` steps. Lines go through
    the run's logger: stdout and ``train.log``. Evaluation time is left out of the step rate
    but counted in the run's estimate once an epoch has been timed whole.
    """

    def __init__(self, logger: logging.Logger, epochs: int, iters: int, batch_size: int,
                 lines: bool, interval: float = PROGRESS_SECONDS):
        self.logger, self.epochs, self.iters, self.batch_size = logger, epochs, iters, batch_size
        self.lines, self.interval = lines, interval
        self.timed_steps, self.step_seconds = 0, 0.0
        self.window_steps = 0
        self.epoch_seconds: list[float] = []
        self.estimated, self._warm = False, False
        self._tick = self._last_line = self._window_start = time.perf_counter()

    def begin_epoch(self) -> None:
        """Steps are timed from here: the time between epochs (evaluation) is not a step's."""
        self._tick = self._window_start = time.perf_counter()
        self.window_steps = 0

    def end_epoch(self, seconds: float) -> None:
        """A whole epoch's wall time (training and evaluation), for the run's estimate."""
        self.epoch_seconds.append(seconds)

    def step_done(self, epoch: int, done: int) -> None:
        """Step ``done`` (1-based) of ``epoch`` (0-based) has finished."""
        now = time.perf_counter()
        elapsed, self._tick = now - self._tick, now
        if not self._warm:  # the first step builds kernels and starts workers: not typical
            self._warm = True
            return
        self.timed_steps += 1
        self.step_seconds += elapsed
        self.window_steps += 1
        if not self.estimated and self.timed_steps >= ESTIMATE_AFTER:
            self.estimated = True
            self.logger.info(f"estimated time to the end of the run: "
                             f"{duration(self.run_left(epoch, done))} "
                             f"({self.step_seconds / self.timed_steps:.3f} s per iteration over "
                             f"the first steps; {self.iters} iterations x {self.epochs} epochs)")
        if self.lines and now - self._last_line >= self.interval:
            self.logger.info(self.line(epoch, done, now - self._window_start))
            self._last_line = self._window_start = now
            self.window_steps = 0

    def per_step(self) -> float:
        return self.step_seconds / max(self.timed_steps, 1)

    def run_left(self, epoch: int, done: int) -> float:
        """Seconds to the end of the run: the epoch's steps left, then whole epochs (as timed,
        evaluation included, once one has been; else from the step rate)."""
        per_epoch = (sorted(self.epoch_seconds)[len(self.epoch_seconds) // 2]
                     if self.epoch_seconds else self.iters * self.per_step())
        return (self.iters - done) * self.per_step() + (self.epochs - epoch - 1) * per_epoch

    def line(self, epoch: int, done: int, window: float) -> str:
        ips = self.window_steps * self.batch_size / max(window, 1e-12)
        epoch_left = (self.iters - done) * self.per_step()
        return (f"progress: epoch {epoch + 1}/{self.epochs}, iteration {done}/{self.iters}, "
                f"{ips:.1f} images/sec, epoch left {duration(epoch_left)}, "
                f"run left {duration(self.run_left(epoch, done))}")


class IterMeter:
    """Times the reader and the step, and averages loss and accuracy, for the training line.

    ``iterate`` wraps the loader so that the time spent waiting for a batch is the reader cost.
    """

    def __init__(self, epoch: int, epochs: int, iters: int, log_freq: int,
                 logger: logging.Logger | None, progress: bool = False,
                 totals: list | None = None, start: int = 0,
                 clock: ProgressClock | None = None):
        self.epoch, self.epochs, self.iters, self.log_freq = epoch, epochs, iters, log_freq
        self.logger = logger
        self.progress = progress
        self.clock = clock
        self.start = start
        self.loss_sum, self.correct, self.samples = totals or (0.0, 0.0, 0.0)
        self._reset_window()

    def _reset_window(self) -> None:
        self.reader_cost = 0.0
        self.window_samples = self.window_iters = 0
        self._window_start = time.perf_counter()

    def iterate(self, loader: Iterable) -> Iterator:
        batches = loader
        if self.progress:
            from tqdm import tqdm
            batches = tqdm(loader, total=self.iters, initial=self.start, leave=False,
                           desc=f"epoch {self.epoch + 1}", dynamic_ncols=True)
        if self.clock:
            self.clock.begin_epoch()
        tick = time.perf_counter()
        for done, batch in enumerate(batches, start=self.start + 1):
            self.reader_cost += time.perf_counter() - tick
            yield batch
            if self.clock:
                self.clock.step_done(self.epoch, done)
            tick = time.perf_counter()

    def step(self, it: int, lr: float, loss: float, correct: int, n: int) -> None:
        """Record one iteration (its mean loss over ``n`` samples); log every ``log_freq``.

        The trainers read their device's values only when a line is due and then record the
        steps since the last line at once, so costs are taken over the line's window of wall
        time, not per call.
        """
        self.loss_sum += loss * n
        self.correct += correct
        self.samples += n
        self.window_samples += n
        self.window_iters += 1
        if self.logger and self.line_due(it):
            self.logger.info(self.line(it, lr, loss, correct / max(n, 1)))
            self._reset_window()

    def line_due(self, it: int) -> bool:
        """Whether iteration ``it`` (0-based) ends with a training line: every ``log_freq``
        iterations and at the epoch's last."""
        return (it + 1) % self.log_freq == 0 or it + 1 == self.iters

    def line(self, it: int, lr: float, loss: float, acc: float) -> str:
        k = max(self.window_iters, 1)
        elapsed = time.perf_counter() - self._window_start  # reading and computing
        batch_cost = elapsed / k
        ips = self.window_samples / max(elapsed, 1e-12)
        return (f"[Epoch {self.epoch + 1}/{self.epochs}, iter {it + 1}/{self.iters}] "
                f"lr: {lr:.6f}, loss: {loss:.5f}, acc: {100 * acc:.3f}, "
                f"avg_reader_cost: {self.reader_cost / k:.5f} sec, "
                f"avg_batch_cost: {batch_cost:.5f} sec, "
                f"avg_samples: {self.window_samples / k:.1f}, avg_ips: {ips:.1f} images/sec")

    def totals(self) -> list[float]:
        """(loss sum, correct, samples) of this rank, to be summed over ranks."""
        return [self.loss_sum, self.correct, self.samples]


class Writer(Protocol):
    """A scalar writer: ``visualdl.LogWriter`` and torch's ``SummaryWriter`` as each twin's
    ``visual.open_writer`` returns them."""

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


# The epoch row's columns an evaluation writes, and their scalar tags.
EVAL_TAGS = {"te_loss": "test/loss", "te_acc": "test/acc", "swa_te_loss": "swa/test_loss",
             "swa_te_acc": "swa/test_acc"}
TRAIN_TAGS = ("train/lr", "train/loss", "train/acc")


class Scalars:
    """``Global.use_visualdl``: the values of each training line and each evaluation as
    scalars (rank 0), through a twin's writer, so that the loop stays framework-free. The step
    is the global iteration: iterations done since the run began (an evaluation's, its epoch's
    last), the x axis both VisualDL and TensorBoard expect."""

    def __init__(self, writer: Writer):
        self.writer = writer

    def train(self, step: int, lr: float, loss: float, acc: float) -> None:
        """One training line's learning rate, loss and accuracy (%, as the line shows)."""
        for tag, value in zip(TRAIN_TAGS, (lr, loss, acc), strict=True):
            self.writer.add_scalar(tag, float(value), step)

    def evaluation(self, step: int, row: dict) -> None:
        """The test loss and accuracy of an epoch's row (and SWA's), where evaluated."""
        for column, tag in EVAL_TAGS.items():
            if row.get(column) is not None:
                self.writer.add_scalar(tag, float(row[column]), step)

    def close(self) -> None:
        self.writer.close()


def summarize(totals) -> dict:
    """Mean loss per sample and accuracy in percent (the original's units) from
    (loss sum, correct, samples)."""
    loss_sum, correct, samples = (float(t) for t in totals)
    return {"loss": loss_sum / max(samples, 1), "accuracy": 100.0 * correct / max(samples, 1)}


def read_metrics(path: str) -> list[dict]:
    """Rows of a ``metrics.csv``: ``ep`` an int, other columns finite floats, empty cells
    None. Every cell goes through ``swa_recipe.numbers`` (a study folder travels between
    machines): a NaN accuracy, a 5,000-digit epoch or a stray column is a ``NumberError``
    naming the file, line and column."""
    with open(path, newline="") as fh:
        return [_metrics_row(row, f"{path} line {line}") for line, row
                in enumerate(csv.DictReader(fh), start=2)]


def _metrics_row(row: dict, where: str) -> dict:
    return {c: None if v in ("", None) else
            to_int(v, f"{where}, ep", 0) if c == "ep" else to_float(v, f"{where}, {c}")
            for c, v in row.items()}


def note(line: str) -> None:
    """A one-line note: through the run's logger when this process has one (timestamped, and in
    ``train.log``), else on stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers:
        logger.info(line)
    else:
        print(line, file=sys.stderr)


def to_run_log(line: str) -> None:
    """Append ``line`` (an ``error:`` or ``interrupted:`` line the console already shows) to
    ``train.log``, when this process writes one."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logger.makeRecord(LOGGER_NAME, logging.ERROR, __file__, 0, line, None,
                                           None))


class RunLog:
    """The original's epoch table (``train_log.txt``), ``metrics.csv`` and the final plot.

    On resume, rows after the resumed epoch are dropped and the table is rewritten from the rest,
    so both files read as one uninterrupted run.
    """

    def __init__(self, run_dir: str, swa: bool, start_epoch: int = 0,
                 logger: logging.Logger | None = None):
        self.run_dir, self.swa, self.logger = run_dir, swa, logger
        self.columns = COLUMNS if swa else [c for c in COLUMNS if not c.startswith("swa")]
        self.csv_path = os.path.join(run_dir, "metrics.csv")
        self.table_path = os.path.join(run_dir, "train_log.txt")
        rows = read_metrics(self.csv_path) if os.path.exists(self.csv_path) else []
        self.rows: list[dict] = [r for r in rows if r["ep"] <= start_epoch]
        self._write_csv()
        with writing(self.table_path):
            atomic_save(self._write_table, self.table_path)

    def _write_table(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.writelines(self._format(row) + "\n" for row in self.rows)

    def _write_csv(self) -> None:
        """The whole CSV again, through ``atomic_save``: complete or absent."""
        with writing(self.csv_path):
            atomic_save(self._write_rows, self.csv_path)

    def _write_rows(self, path: str) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({c: "" if row.get(c) is None else row[c] for c in self.columns})

    def _format(self, row: dict) -> str:
        """The table text of one epoch, with the header every 40 epochs (as the original)."""
        table = tabulate.tabulate([[row.get(c) for c in self.columns]], self.columns,
                                  tablefmt="simple", floatfmt="8.4f").split("\n")
        return "\n".join([table[1]] + table) if (row["ep"] - 1) % 40 == 0 else table[2]

    def add(self, values: dict) -> str:
        """Append one epoch to the CSV and the table; return the table text."""
        row = {c: values.get(c) for c in self.columns}
        self.rows.append(row)
        self._write_csv()
        text = self._format(row)
        with writing(self.table_path), open_append(self.table_path) as fh:
            fh.write(text + "\n")
        if self.logger:
            for line in text.split("\n"):  # one timestamp per line, no empty stamped lines
                self.logger.info(line)
        return text

    def plot(self) -> str:
        """Learning rate and test accuracy of SGD and SWA over epochs, as ``curves.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        def series(col: str) -> tuple[list[int], list[float]]:
            pts = [(r["ep"], r[col]) for r in self.rows if r.get(col) is not None]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig, (ax_lr, ax_acc) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        ax_lr.plot(*series("lr"), color="tab:gray", drawstyle="steps-post")
        ax_lr.set_ylabel("learning rate")
        ax_acc.plot(*series("te_acc"), marker="o", ms=3, label="SGD")
        if self.swa:
            ax_acc.plot(*series("swa_te_acc"), marker="s", ms=3, label="SWA")
        ax_acc.set_xlabel("epoch")
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_acc.set_ylabel("test accuracy (%)")
        ax_acc.legend()
        ax_acc.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(self.run_dir, "curves.png")
        try:
            with writing(path):  # complete or absent, as the checkpoints
                atomic_save(lambda tmp: save_png(fig, tmp, dpi=100), path)
        finally:
            plt.close(fig)
        return path

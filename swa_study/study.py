"""A study: a grid of training runs (model x method x budget x seed x framework) in one folder.

``configs/study/*.yaml`` describes the grid; each run is an ordinary ``train.py`` run in
``results/<study>/<run>/``. A finished run is skipped, an interrupted one continues with
``--resume auto``, and one whose checkpoints are gone (a fresh clone holds only the committed
tables) starts again, so a study can grow run by run over sessions and machines.

Budgets follow the paper: SGD trains for ``budget`` epochs, decaying to 0.01 x lr_init; SWA runs
for ``swa_budgets`` multiples of it, averaging from ``swa_start = round(swa_start_fraction *
budget)`` (161 of 200) at ``swa_lr``.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import yaml

from swa_recipe.arguments import ArgumentParser
from swa_recipe.checkpoint import latest_checkpoint, open_append
from swa_recipe.config import (
    FRAMEWORKS,
    MODELS,
    SEED_LIMIT,
    ConfigError,
    coerce,
    load_yaml,
    parse_override,
    resolve,
)
from swa_recipe.data.regular import open_regular
from swa_recipe.numbers import NumberError, float_argument, int_argument, short, to_float, to_int
from swa_recipe.numbers import load_yaml as load_numbers_yaml
from swa_recipe.rundir import LOCK_NAME, writing
from swa_recipe.runtime import tune_cpu_env
from swa_study import extend, provenance
from swa_study.landscape import pair_name, summary_of
from swa_study.provenance import Machine, first_difference, recorded_machine
from swa_study.runs import read_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID_KEYS = ("model", "method", "budget", "seed", "framework")
METHODS = ("sgd", "swa")


@dataclass(frozen=True)
class Run:
    """One cell of the grid; ``epochs`` is the budget (SGD) or a multiple of it (SWA)."""

    model: str
    method: str
    epochs: int
    seed: int
    framework: str
    swa_start: int | None = None

    @property
    def name(self) -> str:
        return f"{self.model.lower()}-{self.method}{self.epochs}-s{self.seed}-{self.framework}"

    def overrides(self) -> list[str]:
        """``-o`` overrides that make this run out of the study's base config."""
        out = [f"Arch.model={self.model}", f"Global.epochs={self.epochs}",
               f"Global.seed={self.seed}", f"Global.framework={self.framework}",
               f"SWA.swa={'true' if self.method == 'swa' else 'false'}"]
        if self.swa_start is not None:
            out.append(f"SWA.swa_start={self.swa_start}")
        return out


@dataclass
class Study:
    name: str
    config: str | None
    overrides: list[str]
    runs: list[Run]
    retrain: bool = False  # re-train finished runs whose last checkpoint is gone


def _list(spec: dict, key: str, path: str) -> list:
    value = spec.get(key)
    values = value if isinstance(value, list) else [value]
    if value is None or not values:
        raise ConfigError(f"{path}: grid.{key} must be a value or a non-empty list")
    return values


def _check(values: list, allowed: tuple, what: str, path: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{path}: unknown {what} {bad[0]!r}; valid: {', '.join(allowed)}")


def _positive_ints(values: list, what: str, path: str, high: int | None = None) -> None:
    """Each value an integer in [1, ``high``], read by ``swa_recipe.numbers``."""
    try:
        for v in values:
            to_int(v, f"{path}: grid.{what}", 1, high, text=False)
    except NumberError as exc:
        raise ConfigError(str(exc)) from None


def _fractions(spec: dict, grid: dict, path: str) -> tuple[float, list[float]]:
    """``swa_start_fraction`` in (0, 1] and ``grid.swa_budgets`` (a value or a list), each a
    finite number >= 1: an infinite budget would never round to epochs."""
    fraction, multiples = spec.get("swa_start_fraction", 0.805), grid.get("swa_budgets", [1.0])
    multiples = multiples if isinstance(multiples, list) else [multiples]
    try:
        fraction = to_float(fraction, f"{path}: swa_start_fraction", text=False)
        multiples = [to_float(m, f"{path}: grid.swa_budgets", text=False) for m in multiples]
    except NumberError as exc:
        raise ConfigError(str(exc)) from None
    if not 0 < fraction <= 1:
        raise ConfigError(f"{path}: swa_start_fraction must be in (0, 1], got {fraction!r}")
    if not multiples or not all(m >= 1 for m in multiples):
        raise ConfigError(f"{path}: grid.swa_budgets must be multiples >= 1, got "
                          f"{short(multiples)}")
    return fraction, multiples


def expand(spec: dict, path: str) -> list[Run]:
    """The grid's runs, seed-major: every method and twin of seed 1 before seed 2, so that a
    study cut short still holds complete comparisons."""
    grid = spec.get("grid")
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: a study needs a 'grid' mapping ({', '.join(GRID_KEYS)})")
    unknown = set(grid) - set(GRID_KEYS) - {"swa_budgets"}
    if unknown:
        raise ConfigError(f"{path}: unknown grid key {sorted(unknown)[0]!r}; valid: "
                          f"{', '.join(GRID_KEYS)}, swa_budgets")
    models, methods = _list(grid, "model", path), _list(grid, "method", path)
    budgets, seeds = _list(grid, "budget", path), _list(grid, "seed", path)
    frameworks = _list(grid, "framework", path)
    _check(models, MODELS, "model", path)
    _check(methods, METHODS, "method", path)
    _check(frameworks, FRAMEWORKS, "framework", path)
    _positive_ints(budgets, "budget", path)
    _positive_ints(seeds, "seed", path, SEED_LIMIT - 1)
    fraction, multiples = _fractions(spec, grid, path)
    runs = []
    for seed, model, budget, framework, method in itertools.product(
            seeds, models, budgets, frameworks, methods):
        if method == "sgd":
            runs.append(Run(model, method, budget, seed, framework))
            continue
        start = max(1, half_up(fraction * budget))
        runs += [Run(model, method, half_up(m * budget), seed, framework, start)
                 for m in multiples]
    return runs


STUDY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def half_up(x: float) -> int:
    """Rounding as the paper's budgets read (1.5 x 35 = 52.5 -> 53), not Python's to-even."""
    return math.floor(x + 0.5)


MAX_STUDY_BYTES = 1 << 20  # a study file is about 1 KB


def load_study(path: str) -> Study:
    try:
        with open_regular(path) as fh:  # a FIFO would block, /dev/zero never end
            spec = load_numbers_yaml(fh.read(MAX_STUDY_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"study file {path} cannot be read ({exc.strerror or exc}); pass "
                          f"one of configs/study/*.yaml") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"study file {path} is not valid YAML ({type(exc).__name__})") from None
    except NumberError as exc:
        raise ConfigError(f"study file {path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{path}: a study is a mapping with a 'name' and a 'grid'")
    if not STUDY_NAME.fullmatch(spec["name"]) or spec["name"] in (".", ".."):
        raise ConfigError(f"{path}: the study name must be a plain folder name (letters, "
                          f"digits, '.', '_', '-'; results/<name> holds its runs), got "
                          f"{spec['name'][:60]!r}")
    if not isinstance(spec.get("overrides") or {}, dict):
        raise ConfigError(f"{path}: 'overrides' is a mapping of Section.key: value")
    overrides = [_override_text(str(k), v, path) for k, v in (spec.get("overrides") or {}).items()]
    study = Study(spec["name"], spec.get("config"), overrides, expand(spec, path))
    for run in study.runs:  # every run's whole config, as train.py will check it
        try:
            run_config(study, run, os.path.join("results", study.name, run.name), [])
        except ConfigError as exc:
            raise ConfigError(f"{path}: run {run.name}: {exc}") from None
    return study


def _override_text(name: str, value, path: str) -> str:
    """A study override as ``train.py``'s ``-o`` text, its value checked as a config file's
    is (``coerce``: ``Data.num_workers: -3`` is refused here, before any run starts): text
    keys go verbatim (quoting them made ``'0'`` reach ``train.py`` with
    its quotes), others as YAML (``true``/``null``, not Python's ``True``/``None``)."""
    try:
        section, key, _ = parse_override(f"{name}=")  # an unknown key or section: one line
        value = coerce(section, key, value)
    except ConfigError as exc:
        raise ConfigError(f"{path}: overrides: {exc}") from None
    if not isinstance(value, str):
        value = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
    return f"{name}={value}"


def read_epochs(run_dir: str) -> list[dict]:
    """Rows of a run's ``metrics.csv`` (empty when absent)."""
    from swa_recipe.logs import read_metrics

    path = os.path.join(run_dir, "metrics.csv")
    return read_metrics(path) if os.path.exists(path) else []


def status(run: Run, run_dir: str) -> str:
    """``done``, ``resume`` (a checkpoint to continue from), ``restart`` (outputs without a
    checkpoint) or ``todo``."""
    rows = read_epochs(run_dir)
    if rows and rows[-1]["ep"] >= run.epochs:
        return "done"
    if latest_checkpoint(run_dir, run.framework):
        return "resume"
    return "restart" if os.path.isdir(run_dir) and os.listdir(run_dir) else "todo"


def epoch_seconds(out: str) -> dict[tuple[str, str], float]:
    """Median measured epoch time per (model, framework) over every run in the study folder
    (a pilot outside the grid included)."""
    times: dict[tuple[str, str], list[float]] = {}
    for run in read_study(out) if os.path.isdir(out) else []:
        times.setdefault((run.model, run.framework), []).extend(
            row["time"] for row in run.rows if row.get("time"))
    return {k: statistics.median(v) for k, v in times.items() if v}


def remaining_epochs(run: Run, run_dir: str, state: str) -> int:
    if state == "done":
        return 0
    rows = read_epochs(run_dir) if state == "resume" else []
    return run.epochs - (rows[-1]["ep"] if rows else 0)


def run_config(study: Study, run: Run, run_dir: str, extra: list[str]) -> dict:
    """The validated config ``train.py`` will build for ``run`` (without starting it)."""
    args = argparse.Namespace(config=os.path.join(ROOT, study.config) if study.config else None,
                              override=study.overrides + run.overrides()
                              + [f"Global.dir={run_dir}"] + extra)
    return resolve(args)


@dataclass
class Extension:
    """How a not-yet-trained SWA run starts: continuing ``source`` (finished here), after
    ``pending`` (a shorter run of this grid that is still to finish), or from scratch, for
    ``reason``."""

    source: Run | None
    reason: str
    pending: Run | None = None


def extension(study: Study, run: Run, out: str, extra: list[str]) -> Extension:
    """The longest finished shorter SWA run of the same model, seed, twin and ``swa_start``
    whose last checkpoint is here, if ``run`` is exactly that run continued."""
    shorter = sorted((r for r in study.runs if r.method == "swa" and r.epochs < run.epochs
                      and (r.model, r.seed, r.framework, r.swa_start)
                      == (run.model, run.seed, run.framework, run.swa_start)),
                     key=lambda r: r.epochs, reverse=True)
    if run.method != "swa" or not shorter:
        return Extension(None, NO_SHORTER)
    for source in shorter:
        src_dir = os.path.join(out, source.name)
        state = status(source, src_dir)
        if state != "done":
            if state in ("todo", "resume"):  # trained first by this runner: extend it then
                return Extension(None, "", pending=source)
            continue
        if not extend.final_checkpoint(src_dir, source.epochs, source.framework):
            continue
        short = load_yaml(os.path.join(src_dir, "config.yaml"))
        short["Global"]["dir"] = src_dir
        reason = extend.refusal(short, run_config(study, run, os.path.join(out, run.name), extra))
        return Extension(source, "") if reason is None else Extension(None, reason)
    return Extension(None, f"{shorter[0].name} is not finished here or its last checkpoint "
                           f"is gone")


NO_SHORTER = "no shorter SWA run in the grid"


@dataclass
class RunState:
    """What the runner will do with a run: ``state`` (``status``, or ``extend`` /
    ``retrain``), a note for the plan, the run it extends, and the epochs that run covers."""

    state: str
    note: str = ""
    source: Run | None = None
    covered: int = 0


def run_state(study: Study, run: Run, out: str, extra: list[str]) -> RunState:
    run_dir = os.path.join(out, run.name)
    state = status(run, run_dir)
    if state == "done" and study.retrain and not extend.final_checkpoint(
            run_dir, run.epochs, run.framework):
        return RunState("retrain", "its last checkpoint is gone; rows checked against the "
                                   "committed")
    if state not in ("todo", "restart") or run.method != "swa":
        return RunState(state)
    found = extension(study, run, out, extra)
    if found.source is not None:
        return RunState("extend", f"from {found.source.name}", found.source,
                        found.source.epochs)
    if found.pending is not None:
        return RunState(state, f"extends {found.pending.name} once it finishes", None,
                        found.pending.epochs)
    return RunState(state, "" if found.reason == NO_SHORTER else f"afresh: {found.reason}")


def plan(study: Study, out: str, epoch_time: float | None = None,
         extra: list[str] | None = None) -> tuple[str, float | None]:
    """The grid as a table with each run's state, estimated time left and what an extension
    continues, and the total."""
    measured = epoch_seconds(out)
    fallback = epoch_time or (statistics.median(measured.values()) if measured else None)
    lines, total = [f"{'run':32} {'state':8} {'epochs':>6} {'left (h)':>9}"], 0.0
    for run in study.runs:
        run_dir = os.path.join(out, run.name)
        what = run_state(study, run, out, extra or [])
        state, note = what.state, what.note
        left = remaining_epochs(run, run_dir, state) - what.covered
        per = epoch_time or measured.get((run.model, run.framework), fallback)
        hours = None if per is None else left * per / 3600
        total = None if hours is None or total is None else total + hours
        lines.append(f"{run.name:32} {state:8} {run.epochs:6d} "
                     f"{'?' if hours is None else f'{hours:.2f}':>9}  {note}".rstrip())
    return "\n".join(lines), total


def train_command(study: Study, run: Run, run_dir: str, state: str, extra: list[str]) -> list:
    cmd = [sys.executable, os.path.join(ROOT, "train.py")]
    if study.config:
        cmd += ["--config", os.path.join(ROOT, study.config)]
    for text in study.overrides + run.overrides() + [f"Global.dir={run_dir}"] + extra:
        cmd += ["-o", text]
    if state in ("resume", "extend"):
        cmd += ["-o", "Global.resume=auto"]
    return cmd


def git_commit() -> str:
    return provenance.git_commit(ROOT) or "unknown"


def refuse_if_in_use(run_dir: str) -> None:
    """A run folder whose lock a live process holds (another runner, or a run loading its
    data) is never deleted: its ``flock`` is tried, not waited for."""
    lock = os.path.join(run_dir, LOCK_NAME)
    if not os.path.isfile(lock) or os.path.islink(lock):
        return
    fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        raise ConfigError(f"another process (pid {holder}) is writing to {run_dir}; wait for it "
                          f"to finish, or stop it, before running this study again") from None
    finally:
        os.close(fd)


def portable(cmd: list[str]) -> str:
    """``cmd`` as a record that holds on any machine: ``python``, and paths relative to the
    repository."""
    def rel(text: str) -> str:
        key, sep, value = text.rpartition("=")
        if os.path.isabs(value):
            return f"{key}{sep}{os.path.relpath(value, ROOT)}"
        return text

    return " ".join(["python"] + [rel(c) for c in cmd[1:]])


def record(run_dir: str, cmd: list[str], state: str, note: str, machine: Machine) -> None:
    """Append this start to the run's ``command.txt``, never through a link or into a FIFO
    planted there (a study folder travels between machines)."""
    path = os.path.join(run_dir, "command.txt")
    with writing(path), open_append(path, encoding="utf-8") as fh:
        fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} commit {git_commit()} ({state}"
                 f"{' ' + note if note else ''})\n{machine.line()}\n{portable(cmd)}\n")


@dataclass
class Committed:
    """The rows of a run as found before it is trained again, and the machine that made them."""

    rows: list[dict]
    machine: Machine | None

    @classmethod
    def read(cls, run_dir: str) -> Committed | None:
        rows = read_epochs(run_dir)
        machine = recorded_machine(os.path.join(run_dir, "command.txt"))
        return cls(rows, machine) if rows else None


POLL_SECONDS = 1.0  # reading a run's metrics.csv this often costs nothing measurable


def execute(study: Study, run: Run, out: str, extra: list[str]) -> int:
    """Run (or continue) one run as a ``train.py`` process; its exit code. A run trained again
    over committed rows is checked against them as it goes (see :func:`watch`)."""
    run_dir = os.path.join(out, run.name)
    what = run_state(study, run, out, extra)
    state, note, source = what.state, what.note, what.source
    committed = Committed.read(run_dir) if state in ("restart", "retrain") else None
    if state in ("restart", "extend", "retrain") and os.path.isdir(run_dir):
        refuse_if_in_use(run_dir)
        shutil.rmtree(run_dir)  # committed tables of a run cut off elsewhere: start it afresh
    os.makedirs(run_dir, exist_ok=True)
    if source is not None:
        short = load_yaml(os.path.join(out, source.name, "config.yaml"))
        short["Global"]["dir"] = os.path.join(out, source.name)
        extend.prepare(short, run_config(study, run, run_dir, extra))
    cmd = train_command(study, run, run_dir, state, extra)
    env = dict(os.environ)
    tune_cpu_env(env)  # what train.py will set: the machine record shows the run's threads
    machine = Machine.here(env)
    record(run_dir, cmd, state, note, machine)
    # train.log has the run's output; its stderr is passed on unless the runner stopped it
    with tempfile.TemporaryFile() as err:
        proc, code = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err), None
        try:
            code = watch(proc, run, run_dir, committed, machine)
        finally:  # the runner stopped (SIGINT/SIGTERM): the run checkpoints mid-epoch and exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            if proc.returncode != 0 and not stopped_by_watch(code, proc):
                err.seek(0)
                sys.stderr.write(err.read().decode("utf-8", "replace"))
    return code


def stopped_by_watch(code: int | None, proc: subprocess.Popen) -> bool:
    """``watch`` stopped the run itself (exit 2 while the run died of its SIGTERM)."""
    return code == 2 and proc.returncode == 128 + signal.SIGTERM


def watch(proc: subprocess.Popen, run: Run, run_dir: str, committed: Committed | None,
          machine: Machine) -> int:
    """Wait for the run. Over committed rows made on the same kind of machine, stop it at the
    first row that differs (exit 2, one line); over rows from another machine, or from one not
    recorded, say at the end how far the new rows are from the committed ones."""
    same = committed is not None and machine.same_kind(committed.machine)
    while True:
        try:
            code = proc.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        if committed is not None:
            diff = first_difference(committed.rows, read_epochs(run_dir))
            if diff and same:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                print(f"error: {run.name} does not reproduce its committed rows on the same "
                      f"kind of machine: {diff}; the code or an installed version changed what "
                      f"it computes", file=sys.stderr, flush=True)
                return 2
        if code is not None:
            break
    if committed is not None and code == 0:
        print(f"{run.name}: {reproduction(committed, read_epochs(run_dir), same)}", flush=True)
    return code


def reproduction(committed: Committed, rows: list[dict], same: bool) -> str:
    """One line on how a finished re-run compares with the committed rows."""
    diff = first_difference(committed.rows, rows)
    if diff is None:
        return f"reproduces the {min(len(rows), len(committed.rows))} committed rows bit for bit"
    where = "the same kind of machine" if same else (
        f"another machine ({committed.machine.cpu})" if committed.machine
        else "a machine not recorded")
    col = "swa_te_acc" if run_is_swa(rows) else "te_acc"
    last = min(len(rows), len(committed.rows)) - 1
    return (f"committed on {where}; rows differ from {diff}; final {col} "
            f"{rows[last].get(col)} against the committed {committed.rows[last].get(col)}")


def run_is_swa(rows: list[dict]) -> bool:
    return any(r.get("swa_te_acc") is not None for r in rows)


def pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(SWA run, SGD run) of one model, seed and twin: the SGD run of the largest budget that
    the SWA run does not exceed (SWA 44 and 53 compare with SGD 35, as in the paper)."""
    found = []
    for swa in (r for r in runs if r.method == "swa"):
        sgds = [r for r in runs if r.method == "sgd" and r.epochs <= swa.epochs
                and (r.model, r.seed, r.framework) == (swa.model, swa.seed, swa.framework)]
        if sgds:
            found.append((swa, max(sgds, key=lambda r: r.epochs)))
    return found


def landscape_path(out: str, swa: Run, sgd: Run) -> str:
    """The summary ``tools/landscape.py`` writes for the pair (its name rule)."""
    name = pair_name(swa.model, swa.seed, swa.framework, swa.epochs, sgd.epochs)
    return os.path.join(out, "landscape", name + ".json")


def landscape_state(out: str, swa: Run, sgd: Run, mode: str = "line") -> str:
    """``done`` (its summary holds what ``mode`` measures), ``ready`` (both runs' last
    checkpoints are here) or ``waiting``."""
    path = landscape_path(out, swa, sgd)
    if os.path.isfile(path):
        try:
            measured = summary_of(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a landscape summary ({type(exc).__name__}); "
                              f"delete it to measure the pair again") from None
        if mode == "line" or "width_swa" in measured:
            return "done"
    ready = all(status(r, os.path.join(out, r.name)) == "done" and extend.final_checkpoint(
        os.path.join(out, r.name), r.epochs, r.framework) for r in (swa, sgd))
    return "ready" if ready else "waiting"


def landscape_step(study: Study, out: str, mode: str, data_path: str | None) -> int:
    """Measure the landscape of every pair whose runs are finished here and whose summary is
    not written yet (a step after the runs: it needs their last checkpoints)."""
    for swa, sgd in pairs(study.runs):
        if landscape_state(out, swa, sgd, mode) != "ready":
            continue
        cmd = [sys.executable, os.path.join(ROOT, "tools", "landscape.py"), "--swa",
               os.path.join(out, swa.name), "--sgd", os.path.join(out, sgd.name)]
        cmd += (["--rays"] if mode == "rays" else []) + (
            ["--data_path", data_path] if data_path else [])
        print(f"{time.strftime('%H:%M:%S')} landscape {swa.name} / {sgd.name}: start",
              flush=True)
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        if code:
            return code
        print(f"{time.strftime('%H:%M:%S')} landscape {swa.name} / {sgd.name}: done",
              flush=True)
    return 0


def select(runs: list[Run], only: list[str]) -> list[Run]:
    """Runs matching every ``key=value`` of ``--only`` (e.g. framework=paddle seed=1)."""
    for text in only:
        key, _, value = text.partition("=")
        if key not in GRID_KEYS:
            raise ConfigError(f"--only {text}: key must be one of {', '.join(GRID_KEYS)}")
        runs = [r for r in runs if str(getattr(r, "epochs" if key == "budget" else key))
                .lower() == value.lower()]
    return runs


def study_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Run a grid of training runs (configs/study/)")
    parser.add_argument("study", help="configs/study/NAME.yaml")
    parser.add_argument("--out", default=None, help="results folder (default results/<name>)")
    parser.add_argument("--data_path", default=None, help="CIFAR archive or folder")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="S.KEY=VALUE",
                        help="extra override for every run (e.g. Data.num_workers=2)")
    parser.add_argument("--only", nargs="*", default=[], metavar="KEY=VALUE",
                        help="run only matching cells, e.g. --only framework=torch seed=2")
    parser.add_argument("--max_runs", type=int_argument(0), default=None, help="stop after N runs")
    parser.add_argument("--dry_run", action="store_true", help="print the grid and estimate")
    parser.add_argument("--retrain", action="store_true", help="train again the finished runs "
                        "whose last checkpoint is gone (an extension or landscape needs it), "
                        "checking each row against the committed one")
    parser.add_argument("--landscape", choices=("line", "rays"), default=None,
                        help="after the runs, measure tools/landscape.py (the line, or the line "
                             "and random rays) for every finished SWA/SGD pair without one")
    parser.add_argument("--epoch_time", type=float_argument(0, strict=True), default=None,
                        help="seconds per epoch for the estimate (default: measured ones)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def study_main(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    study.retrain = args.retrain
    out = args.out or os.path.join("results", study.name)
    extra = list(args.override) + ([f"Data.data_path={args.data_path}"] if args.data_path else [])
    for text in extra:
        parse_override(text)
    study.runs = select(study.runs, args.only)
    table, hours = plan(study, out, args.epoch_time, extra)
    print(table)
    left = f"{hours:.1f} h" if hours is not None else "unknown (no epoch measured; --epoch_time)"
    print(f"{len(study.runs)} runs; time left: {left}")
    if args.landscape:
        print("\n".join(f"landscape {swa.name} / {sgd.name}: "
                        f"{landscape_state(out, swa, sgd, args.landscape)}"
                        for swa, sgd in pairs(study.runs)))
    if args.dry_run:
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = 0
    for run in study.runs:
        if run_state(study, run, out, extra).state == "done":
            continue
        if args.max_runs is not None and started >= args.max_runs:
            break
        started += 1
        print(f"{time.strftime('%H:%M:%S')} {run.name}: start", flush=True)
        code = execute(study, run, out, extra)
        if code:
            return code
        print(f"{time.strftime('%H:%M:%S')} {run.name}: done", flush=True)
    return landscape_step(study, out, args.landscape, args.data_path) if args.landscape else 0

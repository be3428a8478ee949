"""The results of a study folder's runs, read from each run's ``metrics.csv`` and
``config.yaml``; shared by the runner (measured epoch times) and the summary (the tables)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from swa_recipe.config import FRAMEWORKS, MODELS, ConfigError
from swa_recipe.logs import read_metrics
from swa_recipe.numbers import NumberError, load_yaml


@dataclass
class RunResult:
    name: str
    model: str
    method: str
    epochs: int
    seed: int
    framework: str
    rows: list[dict]

    @property
    def last_ep(self) -> int:
        return self.rows[-1]["ep"] if self.rows else 0

    @property
    def complete(self) -> bool:
        return self.last_ep >= self.epochs and self.final is not None

    @property
    def final(self) -> float | None:
        """Test accuracy of the method's weights after the last epoch (SWA: the average)."""
        col = "swa_te_acc" if self.method == "swa" else "te_acc"
        return self.rows[-1].get(col) if self.rows else None

    @property
    def latest(self) -> float | None:
        """The last measured accuracy of the method's weights, for incomplete runs."""
        col = "swa_te_acc" if self.method == "swa" else "te_acc"
        found = [r[col] for r in self.rows if r.get(col) is not None]
        return found[-1] if found else None


def read_run(run_dir: str) -> RunResult | None:
    """A run folder's results, or None when it has no metrics yet. Both files may be hostile
    (a study folder travels between machines): anything but a plain config and a table of
    finite numbers with increasing epochs is one error line."""
    csv_path, cfg_path = (os.path.join(run_dir, f) for f in ("metrics.csv", "config.yaml"))
    if not (os.path.isfile(csv_path) and os.path.isfile(cfg_path)):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = load_yaml(fh.read(MAX_FILE_BYTES))
        rows = read_metrics(csv_path)
        result = RunResult(os.path.basename(run_dir), _choice(cfg["Arch"]["model"], MODELS),
                           "swa" if cfg["SWA"]["swa"] is True else "sgd",
                           _count(cfg["Global"]["epochs"]), _count(cfg["Global"]["seed"], 0),
                           _choice(cfg["Global"]["framework"], FRAMEWORKS), rows)
        _check_rows(rows)
        return result
    except NumberError as exc:
        raise ConfigError(f"unreadable {exc}; fix the file or delete the run folder to "
                          f"run it again") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            OverflowError) as exc:
        raise ConfigError(f"{run_dir} holds an unreadable metrics.csv or config.yaml "
                          f"({type(exc).__name__}); delete the run folder to run it "
                          f"again") from None


MAX_FILE_BYTES = 1 << 20  # a run's config.yaml is about 1 KB


def _count(value, least: int = 1) -> int:
    if type(value) is not int or not least <= value <= 2**32:
        raise ValueError("not a count")
    return value


def _choice(value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError("unknown value")
    return value


def _check_rows(rows: list[dict]) -> None:
    """Epochs 1, 2, ... in order (``read_metrics`` has refused NaN or inf accuracies: they
    are not plotted)."""
    for i, row in enumerate(rows, 1):
        if row.get("ep") != i:
            raise ValueError("epochs out of order")


def read_study(out: str) -> list[RunResult]:
    if not os.path.isdir(out):
        raise ConfigError(f"{out} is not a study folder; pass results/<study>")
    runs = [read_run(os.path.join(out, d)) for d in sorted(os.listdir(out))]
    return [r for r in runs if r is not None]

"""The results of a study folder's runs, read from each run's ``metrics.csv`` and
``config.yaml``; shared by the runner (measured epoch times) and the summary (the tables)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from .config import ConfigError
from .logs import read_metrics


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
    """A run folder's results, or None when it has no metrics yet."""
    csv_path, cfg_path = (os.path.join(run_dir, f) for f in ("metrics.csv", "config.yaml"))
    if not (os.path.isfile(csv_path) and os.path.isfile(cfg_path)):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        rows = read_metrics(csv_path)
        return RunResult(os.path.basename(run_dir), cfg["Arch"]["model"],
                         "swa" if cfg["SWA"]["swa"] else "sgd", int(cfg["Global"]["epochs"]),
                         int(cfg["Global"]["seed"]), cfg["Global"]["framework"], rows)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{run_dir} holds an unreadable metrics.csv or config.yaml "
                          f"({type(exc).__name__}); delete the run folder to run it "
                          f"again") from None


def read_study(out: str) -> list[RunResult]:
    if not os.path.isdir(out):
        raise ConfigError(f"{out} is not a study folder; pass results/<study>")
    runs = [read_run(os.path.join(out, d)) for d in sorted(os.listdir(out))]
    return [r for r in runs if r is not None]

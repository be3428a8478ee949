"""The width of the optima (the paper's Figures 4-5), framework-free: where to measure and what
the measurements say.

Two measurements around a pair of solutions of the same twin and seed (SWA's average and SGD's
last iterate):

- the line ``w(t) = w_SWA + t (w_SGD - w_SWA)`` for t from -0.5 to 1.5 (the paper's Figure 5,
  right: does SGD sit near the edge of the low-loss region where test error rises?);
- random rays ``w + r d`` from each solution along the same unit directions ``d`` of the full
  weight space (Figure 5, left, after Figure 4's "flat along random directions").

A probe (``swa_paddle.landscape.Probe`` / ``swa_torch.landscape.Probe``) sets a flat float64
weight vector into a model and measures train loss and error on a fixed subset of training
images (no augmentation, no dropout) and test loss and error on the test set. The width of a
solution is the distance along a ray at which the train loss has risen by ``RISE`` above its
value at the solution, averaged over directions.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from swa_recipe.data.regular import open_regular
from swa_recipe.figures import save_png

RISE = 0.1  # train-loss rise that marks the edge of a solution's basin
LINE_T = tuple((np.arange(21) - 5) / 10)  # -0.5, -0.4, ..., 1.5: 0 and 1 exactly
COLUMNS = ("kind", "origin", "direction", "position", "train_loss", "train_loss_l2",
           "train_err", "test_loss", "test_err")


class Probe(Protocol):
    """What a twin provides: the model's trainable weights as one float64 vector, and its
    evaluation on the fixed training subset or the test set (BatchNorm statistics recomputed
    on the training subset first, for models that have them)."""

    def flat(self) -> np.ndarray: ...

    def set_flat(self, weights: np.ndarray) -> None: ...

    def evaluate(self, split: str) -> dict[str, float]: ...


def measure(probe: Probe, test: bool = True) -> dict[str, float]:
    """``train_loss``, ``train_err`` (and ``test_loss``, ``test_err``, %) at the weights set."""
    out = {}
    for split in ("train", "test")[:2 if test else 1]:
        res = probe.evaluate(split)
        out[f"{split}_loss"], out[f"{split}_err"] = res["loss"], 100.0 - res["accuracy"]
    return out


def pair_name(model: str, seed: int, framework: str, swa_epochs: int, sgd_epochs: int) -> str:
    """The file name (without extension) of a pair's landscape."""
    return f"{model.lower()}-s{seed}-{framework}-swa{swa_epochs}-sgd{sgd_epochs}"


def interpolate(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """``a + t (b - a)``, exactly ``a`` at 0 and exactly ``b`` at 1."""
    if t == 0:
        return a
    if t == 1:
        return b
    return a + t * (b - a)


def direction(dim: int, seed: int, k: int) -> np.ndarray:
    """The ``k``-th random unit direction of a ``dim``-dimensional weight space (Gaussian,
    normalised: uniform on the sphere); a pure function of (seed, k), so both solutions of a
    pair, and any re-run, use the same directions."""
    d = np.random.default_rng([seed, k]).standard_normal(dim)
    return d / np.linalg.norm(d)


def width(distances: Iterable[float], losses: Iterable[float], rise: float = RISE) -> float | None:
    """The distance at which ``losses`` first reach ``losses[0] + rise`` (linear between
    measured points); None when they never do within the distances measured."""
    ds, ls = list(distances), list(losses)
    edge = ls[0] + rise
    for i in range(1, len(ls)):
        if ls[i] >= edge:
            d0, d1, l0, l1 = ds[i - 1], ds[i], ls[i - 1], ls[i]
            return d0 + (d1 - d0) * (edge - l0) / (l1 - l0) if l1 != l0 else d1
    return None


def l2_term(weights: np.ndarray, wd: float) -> float:
    """The weight-decay term the training objective adds: ``wd / 2 * ||w||^2`` (the paper plots
    the L2-regularised train loss)."""
    return 0.5 * wd * float(np.dot(weights, weights))


@dataclass
class Landscape:
    """The measurements of one pair; ``rows`` in CSV order."""

    pair: str
    wd: float
    rows: list[dict] = field(default_factory=list)
    distance: float = 0.0  # ||w_SGD - w_SWA||
    max_distance: float = 0.0

    def add(self, kind: str, origin: str, k: int | None, position: float, weights: np.ndarray,
            measured: dict) -> dict:
        row = {"kind": kind, "origin": origin, "direction": "" if k is None else k,
               "position": position, **measured,
               "train_loss_l2": measured["train_loss"] + l2_term(weights, self.wd)}
        self.rows.append(row)
        return row

    def ray(self, origin: str, k: int) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "ray" and r["origin"] == origin
                and r["direction"] == k]

    def widths(self, origin: str) -> list[float | None]:
        ks = sorted({r["direction"] for r in self.rows if r["kind"] == "ray"
                     and r["origin"] == origin})
        return [width([r["position"] for r in self.ray(origin, k)],
                      [r["train_loss"] for r in self.ray(origin, k)]) for k in ks]

    def summary(self) -> dict:
        """One number per solution: the mean width over directions (a direction whose loss
        never rose by ``RISE`` counts at the largest distance measured, and is counted)."""
        out = {"pair": self.pair, "rise": RISE, "distance_swa_sgd": self.distance,
               "max_distance": self.max_distance}
        for origin in ("swa", "sgd"):
            found = self.widths(origin)
            if found:
                out[f"width_{origin}"] = float(np.mean([w if w is not None else
                                                        self.max_distance for w in found]))
                out[f"censored_{origin}"] = sum(w is None for w in found)
                out[f"directions_{origin}"] = len(found)
        line = [r for r in self.rows if r["kind"] == "line"]
        if line:
            best = min(line, key=lambda r: r["train_loss"])
            out["line_min_train_loss_t"] = best["position"]
            out["line_min_test_err_t"] = min(line, key=lambda r: r["test_err"])["position"]
            for t, name in ((0.0, "swa"), (1.0, "sgd")):
                at = next(r for r in line if r["position"] == t)
                out[f"line_{name}_train_loss"] = at["train_loss"]
                out[f"line_{name}_test_err"] = at["test_err"]
        return out


def measure_line(probe: Probe, w_swa: np.ndarray, w_sgd: np.ndarray, result: Landscape,
                 ts: Iterable[float] = LINE_T, log: Callable[[str], None] = print) -> None:
    for t in ts:
        w = interpolate(w_swa, w_sgd, float(t))
        probe.set_flat(w)
        row = result.add("line", "", None, float(t), w, measure(probe))
        log(f"line t={t:+.2f}: train loss {row['train_loss']:.4f}, test error "
            f"{row['test_err']:.2f} %")


def calibrate(probe: Probe, w: np.ndarray, d: np.ndarray, start: float, rise: float = 1.0,
              doublings: int = 20) -> float:
    """A ray length over which train loss rises by ``rise`` (train loss only: cheap): double
    from ``start`` until it does, so that the rays span the edge of the basin."""
    probe.set_flat(w)
    base, r = measure(probe, test=False)["train_loss"], start
    for _ in range(doublings):
        probe.set_flat(w + r * d)
        if measure(probe, test=False)["train_loss"] >= base + rise:
            return r
        r *= 2
    return r


def measure_rays(probe: Probe, solutions: dict[str, np.ndarray], result: Landscape,
                 directions: int, distances: Sequence[float], seed: int,
                 log: Callable[[str], None] = print) -> None:
    """Rays from each solution along the same ``directions`` unit vectors."""
    dim = len(next(iter(solutions.values())))
    for origin, w in solutions.items():
        probe.set_flat(w)
        at_zero = measure(probe)
        for k in range(directions):
            d = direction(dim, seed, k)
            for r in distances:
                if r == 0:
                    result.add("ray", origin, k, 0.0, w, at_zero)
                    continue
                point = w + r * d
                probe.set_flat(point)
                result.add("ray", origin, k, float(r), point, measure(probe))
            found = result.widths(origin)[-1]
            log(f"ray {origin} {k}: width "
                f"{f'> {distances[-1]:.3g}' if found is None else f'{found:.3g}'}")


def to_csv(result: Landscape) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return buf.getvalue()


def to_json(result: Landscape) -> str:
    return json.dumps(result.summary(), indent=1, sort_keys=True) + "\n"


def plot(result: Landscape, path_writer: Callable[[Callable[[str], None]], None]) -> None:
    """What was measured, one panel each, in one figure: the line (train loss and test error
    against t) and the rays (mean and range of train loss, and of test error, over directions,
    against distance). A ``--landscape line`` run gets the line alone, no empty ray panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = [r for r in result.rows if r["kind"] == "line"]
    rays = {origin: [r for r in result.rows if r["kind"] == "ray" and r["origin"] == origin]
            for origin in ("swa", "sgd")}
    has_rays = any(rays.values())
    n = max(1, bool(line) + 2 * has_rays)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.2), squeeze=False)
    free = iter(axes[0])
    if line:
        _plot_line(next(free), line)
    if has_rays:
        for key, label in (("train_loss", "train loss"), ("test_err", "test error (%)")):
            _plot_rays(next(free), rays, key, label)
    fig.suptitle(result.pair)
    fig.tight_layout()
    path_writer(lambda tmp: save_png(fig, tmp, dpi=110))
    plt.close(fig)


def _plot_line(ax, line: list[dict]) -> None:
    ts = [r["position"] for r in line]
    ax.plot(ts, [r["train_loss_l2"] for r in line], "b-o", ms=3, label="train loss + L2")
    ax.set_xlabel("t  (0: SWA, 1: SGD)")
    ax.set_ylabel("train loss (L2-regularised)", color="b")
    twin = ax.twinx()
    twin.plot(ts, [r["test_err"] for r in line], "r-s", ms=3, label="test error")
    twin.set_ylabel("test error (%)", color="r")
    for t in (0, 1):
        ax.axvline(t, color="grey", lw=0.8, ls=":")
    ax.set_title("line from SWA to SGD")


def _plot_rays(ax, rays: dict[str, list[dict]], key: str, label: str) -> None:
    for origin, colour in (("swa", "tab:blue"), ("sgd", "tab:green")):
        if not rays[origin]:
            continue
        ds = sorted({r["position"] for r in rays[origin]})
        values = np.array([[r[key] for r in rays[origin] if r["position"] == d] for d in ds])
        ax.plot(ds, values.mean(axis=1), color=colour, label=f"{origin.upper()} (mean)")
        ax.fill_between(ds, values.min(axis=1), values.max(axis=1), color=colour, alpha=0.2)
    ax.set_xlabel("distance along a random unit direction")
    ax.set_ylabel(label)
    ax.set_title(f"random rays: {label}")
    ax.legend(fontsize=9)


COUNTS = ("censored_swa", "censored_sgd", "directions_swa", "directions_sgd")


def summary_of(path: str) -> dict:
    """A landscape's ``.json`` summary, checked to be what ``Landscape.summary`` writes: a regular
    file (a FIFO would block), ``pair`` a string, the ray counts small whole numbers, every other
    value a finite number. Raises ``ValueError`` (or ``OSError``) otherwise."""
    with open_regular(path) as fh:
        data = json.loads(fh.read(1 << 16).decode("utf-8"))
    if not isinstance(data, dict) or not all(_plain_value(k, v) for k, v in data.items()):
        raise ValueError(f"{path} is not a landscape summary")
    return data


def _plain_value(key: str, value: object) -> bool:
    if key == "pair":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if key in COUNTS:
        return isinstance(value, int) and 0 <= value <= 10**6
    return math.isfinite(value)


def default_out(run_dir: str) -> str:
    """Landscapes of a study live beside its runs: ``results/<study>/landscape/``."""
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), "landscape")

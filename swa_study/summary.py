"""The paper-style table of a study: final test accuracy, SGD vs SWA, per framework.

Reads every ``results/<study>/<run>/metrics.csv`` with its ``config.yaml``, so it works on a
study in progress: runs short of their last epoch are listed as incomplete and left out of the
means. Writes ``results/<study>/README.md`` and ``results/<study>/study.png``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import statistics

import numpy as np

from swa_recipe.arguments import ArgumentParser
from swa_recipe.checkpoint import atomic_save
from swa_recipe.config import ConfigError
from swa_recipe.data.regular import open_regular
from swa_recipe.figures import save_png
from swa_study.landscape import summary_of
from swa_study.runs import RunResult, read_study
from swa_study.study import load_study


def mean_std(values: list[float]) -> str:
    """``mean ± std (n)`` with the sample standard deviation; ``—`` when empty."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _signed(values: list[float]) -> str:
    text = mean_std(values)
    return text if text == "—" or text.startswith("-") else "+" + text


def columns(runs: list[RunResult]) -> list[tuple[str, int]]:
    """(method, epochs) columns: SGD budgets first, then SWA budgets."""
    return sorted({(r.method, r.epochs) for r in runs}, key=lambda c: (c[0] != "sgd", c[1]))


def accuracy_table(runs: list[RunResult]) -> str:
    """Mean ± std over seeds of complete runs, one row per model and framework."""
    cols = columns(runs)
    head = ["model", "framework"] + [f"{m.upper()} {e} ep" for m, e in cols]
    lines = [_row(head), _row(["---"] * len(head))]
    for model, framework in sorted({(r.model, r.framework) for r in runs}):
        cells = [model, framework]
        for method, epochs in cols:
            group = [r for r in runs if (r.model, r.framework, r.method, r.epochs)
                     == (model, framework, method, epochs)]
            done = [r.final for r in group if r.complete]
            pending = len(group) - len(done)
            cells.append(mean_std(done) + (f", {pending} incomplete" if pending else ""))
        lines.append(_row(cells))
    return "\n".join(lines)


def sgd_partner(swa: RunResult, runs: list[RunResult]) -> RunResult | None:
    """The complete SGD run of the same model, twin and seed with the largest budget that the
    SWA run does not exceed (SWA 250 and 300 epochs compare with SGD 200, as in the paper)."""
    found = [r for r in runs if r.method == "sgd" and r.complete and r.epochs <= swa.epochs
             and (r.model, r.framework, r.seed) == (swa.model, swa.framework, swa.seed)]
    return max(found, key=lambda r: r.epochs) if found else None


def gain_table(runs: list[RunResult]) -> str:
    """SWA − SGD at the same seed, with its standard error, beside the spread of each method
    over seeds; per twin and over both twins' pairs (each pair one paired difference)."""
    head = ["model", "framework", "SWA vs SGD", "SWA − SGD per seed", "SWA − SGD",
            "standard error", "SGD std over seeds", "SWA std over seeds"]
    lines = [_row(head), _row(["---"] * len(head))]
    swa_runs = [r for r in runs if r.method == "swa" and r.complete]
    for model, epochs in sorted({(r.model, r.epochs) for r in swa_runs}):
        pooled = []
        for framework in sorted({r.framework for r in swa_runs}):
            pairs = paired(runs, swa_runs, model, framework, epochs)
            if not pairs:
                continue
            pooled += pairs
            diffs = [s.final - g.final for _, g, s in pairs]
            per_seed = ", ".join(f"s{p[0]}: {d:+.2f}" for p, d in zip(pairs, diffs, strict=True))
            lines.append(_row([model, framework, f"{epochs} vs {pairs[0][1].epochs} ep",
                               per_seed, _signed(diffs), _se(diffs),
                               _std([g.final for _, g, _ in pairs]),
                               _std([s.final for _, _, s in pairs])]))
        if len({s.framework for _, _, s in pooled}) > 1:
            diffs = [s.final - g.final for _, g, s in pooled]
            lines.append(_row([model, "both twins", f"{epochs} ep", f"{len(diffs)} pairs",
                               _signed(diffs), _se(diffs), "", ""]))
    return "\n".join(lines) if len(lines) > 2 else "No complete SGD/SWA pair of one seed yet."


def paired(runs: list[RunResult], swa_runs: list[RunResult], model: str, framework: str,
           epochs: int) -> list[tuple[int, RunResult, RunResult]]:
    """(seed, SGD run, SWA run) of every seed where both are complete."""
    pairs = []
    for swa in sorted((r for r in swa_runs if (r.model, r.framework, r.epochs)
                       == (model, framework, epochs)), key=lambda r: r.seed):
        sgd = sgd_partner(swa, runs)
        if sgd is not None:
            pairs.append((swa.seed, sgd, swa))
    return pairs


def _se(values: list[float]) -> str:
    """Standard error of a mean of paired differences."""
    return f"{statistics.stdev(values) / math.sqrt(len(values)):.2f}" if len(values) > 1 else "—"


def _std(values: list[float]) -> str:
    return f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"


def twin_table(runs: list[RunResult]) -> str:
    """Paddle − torch at the same method, budget and seed, beside the seeds' spread."""
    head = ["model", "method", "Paddle − torch per seed", "Paddle − torch",
            "std over seeds (Paddle / torch)"]
    lines = [_row(head), _row(["---"] * len(head))]
    done = {(r.model, r.method, r.epochs, r.seed, r.framework): r.final
            for r in runs if r.complete}
    for model, method, epochs in sorted({k[:3] for k in done}):
        seeds = sorted(k[3] for k in done if k[:3] == (model, method, epochs)
                       and k[4] == "paddle" and (model, method, epochs, k[3], "torch") in done)
        if not seeds:
            continue
        diffs = [done[(model, method, epochs, s, "paddle")] - done[(model, method, epochs, s,
                                                                     "torch")] for s in seeds]
        spread = [_std([v for k, v in done.items() if k[:3] == (model, method, epochs)
                        and k[4] == fw]) for fw in ("paddle", "torch")]
        lines.append(_row([model, f"{method.upper()} {epochs} ep",
                           ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(seeds, diffs, strict=True)),
                           _signed(diffs), " / ".join(spread)]))
    return "\n".join(lines) if len(lines) > 2 else "No run complete in both twins yet."


def runs_table(runs: list[RunResult], waiting: list[str] = ()) -> str:
    head = ["run", "state", "final test acc", "best test acc"]
    lines = [_row(head), _row(["---"] * len(head))]
    for r in runs:
        col = "swa_te_acc" if r.method == "swa" else "te_acc"
        measured = [row[col] for row in r.rows if row.get(col) is not None]
        state = "complete" if r.complete else f"incomplete (epoch {r.last_ep}/{r.epochs})"
        final = r.final if r.complete else r.latest
        lines.append(_row([_cell(r.name), state, "—" if final is None else f"{final:.2f}",
                           f"{max(measured):.2f}" if measured else "—"]))
    lines += [_row([_cell(name), "not started", "—", "—"]) for name in waiting]
    return "\n".join(lines)


def landscapes(out: str) -> list[dict]:
    """The width summaries of ``tools/landscape.py`` in ``<study>/landscape/``."""
    found = []
    for path in sorted(glob.glob(os.path.join(out, "landscape", "*.json"))):
        try:
            found.append(summary_of(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a landscape summary ({type(exc).__name__}); "
                              f"delete it and run tools/landscape.py again") from None
    return found


def _num(summary: dict, key: str, fmt: str = ".3g") -> str:
    value = summary.get(key)
    return "—" if not isinstance(value, (int, float)) else format(value, fmt)


def width_table(found: list[dict]) -> str:
    """Per pair: the distance between the solutions, each solution's width along random rays
    (where train loss has risen by 0.1), and the line's values at both ends."""
    head = ["pair", "‖w_SGD − w_SWA‖", "width SWA", "width SGD", "SWA / SGD",
            "line: train loss SWA / SGD", "line: test err SWA / SGD (%)",
            "line: t of min train loss / test err"]
    lines = [_row(head), _row(["---"] * len(head))]
    for f in found:
        ratio = (f["width_swa"] / f["width_sgd"] if isinstance(f.get("width_swa"), (int, float))
                 and isinstance(f.get("width_sgd"), (int, float)) and f["width_sgd"] else None)
        censored = sum(int(f.get(f"censored_{o}", 0)) for o in ("swa", "sgd"))
        lines.append(_row([
            _cell(f.get("pair", "?")), _num(f, "distance_swa_sgd"),
            _num(f, "width_swa"), _num(f, "width_sgd"),
            "—" if ratio is None else f"{ratio:.2f}" + (f" ({censored} rays censored)"
                                                        if censored else ""),
            f"{_num(f, 'line_swa_train_loss', '.4f')} / {_num(f, 'line_sgd_train_loss', '.4f')}",
            f"{_num(f, 'line_swa_test_err', '.2f')} / {_num(f, 'line_sgd_test_err', '.2f')}",
            f"{_num(f, 'line_min_train_loss_t', '+.1f')} / "
            f"{_num(f, 'line_min_test_err_t', '+.1f')}"]))
    return "\n".join(lines) if found else "No landscape measured yet (tools/landscape.py)."


MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#!|&~])")  # what could start markup or end a cell


def _plain(text: object, limit: int = 80) -> str:
    """``text`` on one line (whitespace runs and control characters as one space), cut to
    ``limit`` characters."""
    flat = "".join(c if c.isprintable() else " " for c in str(text))
    return " ".join(flat.split())[:limit]


def _cell(text: object) -> str:
    """Text from a file or a folder name as literal markdown (a run folder named
    ``x|<img src=...>`` or holding a newline must not add cells, rows, links or HTML): one
    line, cut first (an escape is never cut in half), then every character that could start
    markup or end the cell backslash-escaped."""
    return MARKDOWN.sub(r"\\\1", _plain(text))


def _code(text: object) -> str:
    """``text`` as an inline code span whose fence is longer than any run of backticks in
    it (inside a code span a backslash is literal, so escaping cannot help there)."""
    plain = _plain(text, 200)
    fence = "`" * (max((len(run) for run in re.findall("`+", plain)), default=0) + 1)
    return f"{fence} {plain} {fence}" if "`" in plain else f"`{plain}`"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def arm_curve(runs: list[RunResult]) -> tuple[list[int], np.ndarray]:
    """Epochs and per-seed test accuracy of the method's weights (SWA runs: the average once
    it exists, the iterate before), over the epochs every run of the arm has."""
    def series(r: RunResult) -> dict[int, float]:
        col = "swa_te_acc" if r.method == "swa" else "te_acc"
        return {row["ep"]: row[col] if row.get(col) is not None else row.get("te_acc")
                for row in r.rows if row.get(col) is not None or row.get("te_acc") is not None}

    all_series = [series(r) for r in runs]
    eps = sorted(set.intersection(*(set(s) for s in all_series)))
    return eps, np.array([[s[e] for e in eps] for s in all_series])


def plot(runs: list[RunResult], path: str) -> str:
    """Each arm (twin x method x budget) as the mean over seeds with a min-max band: the whole
    run, and zoomed on the epochs where SWA averages; the learning rates above. SWA arms show
    the average once it exists. Paddle solid, torch dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_acc, ax_zoom) = plt.subplots(3, 1, figsize=(10, 12),
                                                 gridspec_kw={"height_ratios": [1, 3, 3]})
    arms: dict[tuple, list[RunResult]] = {}
    for r in runs:
        if r.complete:
            arms.setdefault((r.method, r.epochs, r.framework), []).append(r)
    keys = sorted({(m, e) for m, e, _ in arms})
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    styles = {"paddle": "-", "torch": "--"}
    starts, lows = [], []
    for (method, epochs, framework), group in sorted(arms.items()):
        eps, accs = arm_curve(group)
        if not eps:
            continue
        colour, style = colours[(method, epochs)], styles.get(framework, ":")
        label = f"{framework} {method.upper()} {epochs} ep (n={len(group)})"
        for ax in (ax_acc, ax_zoom):
            ax.plot(eps, accs.mean(axis=0), style, color=colour, lw=1.4, label=label)
            ax.fill_between(eps, accs.min(axis=0), accs.max(axis=0), color=colour, alpha=0.15)
        lows.append((np.array(eps), accs.min(axis=0)))
        if framework == "paddle" or not any(k[:2] == (method, epochs) and k[2] == "paddle"
                                            for k in arms):
            ax_lr.plot([row["ep"] for row in group[0].rows], [row["lr"] for row in group[0].rows],
                       drawstyle="steps-post", color=colour, label=f"{method.upper()} {epochs} ep")
        if method == "swa":
            starts += [row["ep"] for row in group[0].rows if row.get("swa_te_acc") is not None][:1]
    ax_lr.set_ylabel("learning rate")
    if ax_lr.lines:
        ax_lr.legend(fontsize=9)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("mean over seeds, band: min to max")
    last = max((r.epochs for r in runs), default=1)
    zoom_from = min(starts) - 3 if starts else max(1, last - 10)
    ax_zoom.set_xlim(zoom_from, last + 0.5)
    shown = [acc[eps >= zoom_from].min() for eps, acc in lows if (eps >= zoom_from).any()]
    if shown:
        ax_zoom.set_ylim(bottom=min(shown) - 0.5)
    ax_zoom.set_title(f"from epoch {zoom_from}: where SWA averages")
    for ax in (ax_acc, ax_zoom):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=9, ncol=2)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def report(out: str, runs: list[RunResult], planned: list[str] = (),
           study: str | None = None, widths: list[dict] = ()) -> str:
    """The study's README text; ``planned``: the run names of the grid in ``study``, so that
    runs not started yet are counted and listed too."""
    done, seen = sum(r.complete for r in runs), {r.name for r in runs}
    waiting = [name for name in planned if name not in seen]
    command = f"tools/summarize.py {out}" + (f" --study {study}" if study else "")
    return "\n\n".join([
        f"# Study {_code(os.path.basename(os.path.normpath(out)))}",
        f"{done} of {len(runs) + len(waiting)} runs complete"
        f"{f', {len(waiting)} not started' if waiting else ''}. Written by {_code(command)} from "
        f"each run's `metrics.csv`; incomplete runs are left out of the means.",
        "## Final test accuracy (%), mean ± std over seeds\n\n" + accuracy_table(runs),
        "## SWA − SGD at the same seed (points)\n\n" + gain_table(runs),
        "## Paddle − torch at the same seed (points)\n\n" + twin_table(runs),
        "## Width of the optima (`tools/landscape.py`)\n\n" + width_table(widths)
        + "".join(f"\n\n![landscape of {f['pair']}](landscape/{f['pair']}.png)"
                  for f in widths if PLAIN_NAME.fullmatch(str(f.get("pair", "")))),
        "## Runs\n\n" + runs_table(runs, waiting),
        "![test accuracy and learning rate of every run](study.png)",
    ]) + "\n"


def summarize_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Tables and plot of a study (results/<study>)")
    parser.add_argument("study_dir", help="results/<study>")
    parser.add_argument("--study", help="the study's configs/study/*.yaml: also count and list "
                        "the runs of its grid not started yet (default: the study file the "
                        "folder's README was written from)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
STUDY_RECORD = re.compile(r"Written by `tools/summarize\.py \S+ --study ([^`\s]+)`")


def recorded_study(study_dir: str) -> str | None:
    """The study file named in the folder's README, so that a plain ``summarize.py
    results/cpu`` keeps the grid's runs not started yet instead of dropping them."""
    try:
        with open_regular(os.path.join(study_dir, "README.md")) as fh:  # a FIFO would block
            found = STUDY_RECORD.search(fh.read(1 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def summarize_main(args: argparse.Namespace) -> int:
    runs = read_study(args.study_dir)
    if not runs:
        raise ConfigError(f"{args.study_dir} holds no run with metrics.csv yet; run "
                          f"tools/study.py first")
    study = args.study or recorded_study(args.study_dir)
    planned = [run.name for run in load_study(study).runs] if study else []
    text = report(args.study_dir, runs, planned, study, landscapes(args.study_dir))
    readme, figure = (os.path.join(args.study_dir, n) for n in ("README.md", "study.png"))

    def write_text(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_save(write_text, readme)
    atomic_save(lambda tmp: plot(runs, tmp), figure)
    print(text, end="")
    print(f"wrote {readme} and {figure}")
    return 0

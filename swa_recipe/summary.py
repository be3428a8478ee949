"""The paper-style table of a study: final test accuracy, SGD vs SWA, per framework.

Reads every ``results/<study>/<run>/metrics.csv`` with its ``config.yaml``, so it works on a
study in progress: runs short of their last epoch are listed as incomplete and left out of the
means. Writes ``results/<study>/README.md`` and ``results/<study>/study.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics

from .config import ConfigError
from .runs import RunResult, read_study
from .study import load_study


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
    """SWA − SGD at the same seed, beside the spread of each method over seeds."""
    head = ["model", "framework", "SWA vs SGD", "SWA − SGD per seed", "SWA − SGD",
            "SGD std over seeds", "SWA std over seeds"]
    lines = [_row(head), _row(["---"] * len(head))]
    swa_runs = [r for r in runs if r.method == "swa" and r.complete]
    for model, framework, epochs in sorted({(r.model, r.framework, r.epochs) for r in swa_runs}):
        pairs = []
        for swa in sorted((r for r in swa_runs if (r.model, r.framework, r.epochs)
                           == (model, framework, epochs)), key=lambda r: r.seed):
            sgd = sgd_partner(swa, runs)
            if sgd is not None:
                pairs.append((swa.seed, sgd, swa))
        if not pairs:
            continue
        diffs = [s.final - g.final for _, g, s in pairs]
        per_seed = ", ".join(f"s{p[0]}: {d:+.2f}" for p, d in zip(pairs, diffs, strict=True))
        lines.append(_row([model, framework, f"{epochs} vs {pairs[0][1].epochs} ep", per_seed,
                           _signed(diffs), _std([g.final for _, g, _ in pairs]),
                           _std([s.final for _, _, s in pairs])]))
    return "\n".join(lines) if len(lines) > 2 else "No complete SGD/SWA pair of one seed yet."


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
        lines.append(_row([r.name, state, "—" if final is None else f"{final:.2f}",
                           f"{max(measured):.2f}" if measured else "—"]))
    lines += [_row([name, "not started", "—", "—"]) for name in waiting]
    return "\n".join(lines)


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def plot(runs: list[RunResult], path: str) -> str:
    """Learning rate and test accuracy over epochs of every run: SGD runs' weights, SWA runs'
    average (solid markers) and their SGD weights (faint); Paddle solid, torch dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_acc) = plt.subplots(2, 1, figsize=(9, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [1, 3]})
    maps = {"sgd": plt.get_cmap("Blues"), "swa": plt.get_cmap("Oranges")}
    styles = {"paddle": "-", "torch": "--"}
    shown_lr = set()
    for r in runs:
        same = [x for x in runs if x.method == r.method]
        shade = 0.5 + 0.45 * same.index(r) / max(len(same) - 1, 1)  # each run its own shade
        colors = {m: cmap(shade) for m, cmap in maps.items()}
        eps = [row["ep"] for row in r.rows]
        if (r.method, r.epochs) not in shown_lr:
            shown_lr.add((r.method, r.epochs))
            ax_lr.plot(eps, [row["lr"] for row in r.rows], drawstyle="steps-post",
                       color=colors[r.method], label=f"{r.method.upper()} {r.epochs} ep")
        for col, alpha, label in (("te_acc", 1.0 if r.method == "sgd" else 0.25, "SGD weights"),
                                  ("swa_te_acc", 1.0, "SWA average")):
            pts = [(row["ep"], row[col]) for row in r.rows if row.get(col) is not None]
            if pts:
                eps, accs = zip(*pts, strict=True)
                ax_acc.plot(eps, accs, styles.get(r.framework, "-"), alpha=alpha, lw=1.2,
                            color=colors["swa" if col == "swa_te_acc" else r.method],
                            label=f"{r.name} ({label})" if alpha == 1.0 else None)
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=7)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(out: str, runs: list[RunResult], planned: list[str] = (),
           study: str | None = None) -> str:
    """The study's README text; ``planned``: the run names of the grid in ``study``, so that
    runs not started yet are counted and listed too."""
    done, seen = sum(r.complete for r in runs), {r.name for r in runs}
    waiting = [name for name in planned if name not in seen]
    command = f"tools/summarize.py {out}" + (f" --study {study}" if study else "")
    return "\n\n".join([
        f"# Study `{os.path.basename(os.path.normpath(out))}`",
        f"{done} of {len(runs) + len(waiting)} runs complete"
        f"{f', {len(waiting)} not started' if waiting else ''}. Written by `{command}` from "
        f"each run's `metrics.csv`; incomplete runs are left out of the means.",
        "## Final test accuracy (%), mean ± std over seeds\n\n" + accuracy_table(runs),
        "## SWA − SGD at the same seed (points)\n\n" + gain_table(runs),
        "## Paddle − torch at the same seed (points)\n\n" + twin_table(runs),
        "## Runs\n\n" + runs_table(runs, waiting),
        "![test accuracy and learning rate of every run](study.png)",
    ]) + "\n"


def summarize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tables and plot of a study (results/<study>)")
    parser.add_argument("study_dir", help="results/<study>")
    parser.add_argument("--study", help="the study's configs/study/*.yaml: also count and list "
                        "the runs of its grid not started yet")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def summarize_main(args: argparse.Namespace) -> int:
    runs = read_study(args.study_dir)
    if not runs:
        raise ConfigError(f"{args.study_dir} holds no run with metrics.csv yet; run "
                          f"tools/study.py first")
    planned = [run.name for run in load_study(args.study).runs] if args.study else []
    text = report(args.study_dir, runs, planned, args.study)
    with open(os.path.join(args.study_dir, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    plot(runs, os.path.join(args.study_dir, "study.png"))
    print(text, end="")
    return 0

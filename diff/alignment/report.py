"""The alignment's records and report: ``reprod_log`` files per step (``S_paddle.npy``,
``S_torch.npy``, ``S_diff.log``), summary rows and the summary table."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from reprod_log import ReprodDiffHelper, ReprodLogger

if TYPE_CHECKING:
    from .context import Context


@dataclass
class Row:
    """One line of the summary: a group of compared arrays with one threshold, or a check."""

    step: str
    compared: str
    mean: float
    max: float
    threshold: float | str
    passed: bool
    note: str = ""
    gate: bool = True  # False: reported, explained in the README, not part of pass/fail


def diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(d.mean()), float(d.max())


@contextlib.contextmanager
def _reprod_root_logger() -> Iterator[None]:
    """``ReprodDiffHelper.report`` adds a stdout and a file handler to the logger 'root' on every
    call and never removes them: remove what it added, so that reports do not leak into each
    other's files, and keep its console copy quiet (the summary table says it)."""
    logger = logging.getLogger("root")  # the root logger, where Paddle has a handler too
    before, level = list(logger.handlers), logger.level
    logger.handlers = []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers = before
        logger.setLevel(level)


def record(ctx: Context, step: str, pd_vals: dict, th_vals: dict, groups: list[tuple],
           notes: dict | None = None, tag: str | None = None) -> list[Row]:
    """Write ``tag_paddle.npy`` / ``tag_torch.npy`` (ReprodLogger; ``tag``: ``step`` unless
    given) and ``tag_diff.log``
    (ReprodDiffHelper.report, one report per threshold group, concatenated); add one summary
    row per group ``(compared, keys, threshold[, gate])``: the worst per-key mean abs diff
    (what the report checks) and the max abs diff over the group's keys."""
    paths = {}
    for name, vals in (("paddle", pd_vals), ("torch", th_vals)):
        logger = ReprodLogger()
        for key, value in vals.items():
            logger.add(key, np.asarray(value))
        paths[name] = ctx.out / f"{tag or step}_{name}.npy"
        logger.save(str(paths[name]))
    helper = ReprodDiffHelper()
    info_pd, info_th = helper.load_info(str(paths["paddle"])), helper.load_info(str(paths["torch"]))
    log_text, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (compared, keys, threshold, *gate) in enumerate(groups):
            helper.compare_info({k: info_pd[k] for k in keys}, {k: info_th[k] for k in keys})
            part = os.path.join(tmp, f"part{i}.log")
            with _reprod_root_logger():
                helper.report(diff_method="mean", diff_threshold=threshold, path=part)
            with open(part) as fh:
                log_text.append(fh.read())
            stats = [diff_stats(info_pd[k], info_th[k]) for k in keys]
            worst_mean = max(s[0] for s in stats)
            worst_max = max(s[1] for s in stats)
            passed = all(s[0] <= threshold for s in stats)
            if threshold == 0:
                passed = passed and all(
                    np.asarray(info_pd[k]).tobytes() == np.asarray(info_th[k]).tobytes()
                    for k in keys)
            note = (notes or {}).get(compared, "")
            rows.append(Row(step, compared, worst_mean, worst_max, threshold, passed, note,
                            gate[0] if gate else True))
    (ctx.out / f"{tag or step}_diff.log").write_text("".join(log_text))
    ctx.rows.extend(rows)
    return rows


def check(ctx: Context, step: str, compared: str, value: float, threshold: str,
          passed: bool, note: str = "") -> Row:
    """A summary row that is a condition, not a diff (e.g. accuracy far above chance)."""
    row = Row(step, compared, value, math.nan, threshold, passed, note)
    ctx.rows.append(row)
    return row


def fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4g}"


def verdict(r: Row) -> str:
    if not r.gate:
        return "met (info)" if r.passed else "not met (info, see README)"
    return "pass" if r.passed else "FAIL"


def summary(rows: list[Row], times: dict[str, float]) -> str:
    lines = ["| step | compared | mean abs | max abs | threshold | result |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        thr = r.threshold if isinstance(r.threshold, str) else f"<= {fmt(r.threshold)}"
        lines.append(f"| {r.step} | {r.compared} | {fmt(r.mean)} | {fmt(r.max)} | {thr} | "
                     f"{verdict(r)} |")
    lines.append("")
    lines.append("time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return "\n".join(lines)

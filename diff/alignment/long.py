"""``--long``: the reduced-scale reproduction on real data, per-epoch curves of both twins."""

from __future__ import annotations

import math
import time

import numpy as np

from swa_recipe.figures import save_png

from .context import T_TRAIN_ACC, T_TRAIN_LOSS, Context, make_cfg
from .report import record
from .train import train_twins
from .twins import eval_loaders


def run_long(ctx: Context, width: float, epochs: int, subset: int | None) -> None:
    """Reduced-scale reproduction: VGG16 at ``width``, ``epochs`` epochs with SWA over the last
    quarter, both twins from the same init on the same batches; per-epoch curves in one PNG."""
    swa_start = epochs - epochs // 4 + 1
    cfg = make_cfg(Global={"epochs": epochs},
                   Arch={"model": "VGG16", "width": width},
                   SWA={"swa": True, "swa_start": swa_start},
                   Data={"data_path": ctx.data_path, "train_subset": subset})
    rows: dict[str, list[dict]] = {"paddle": [], "torch": []}
    loaders = eval_loaders(cfg)
    t0 = time.time()

    def on_epoch(epoch, pt, tt, pd_row, th_row):
        pt.test_loader, tt.test_loader = loaders
        for name, trainer, tr in (("paddle", pt, pd_row), ("torch", tt, th_row)):
            te = trainer.evaluate()
            swa = {"accuracy": float("nan"), "loss": float("nan")}
            if trainer.swa_n:
                trainer.update_bn()
                swa = trainer.evaluate(swa=True)
            rows[name].append({"ep": epoch + 1, "lr": tr["lr"], "tr_loss": tr["loss"],
                               "tr_acc": tr["accuracy"], "te_loss": te["loss"],
                               "te_acc": te["accuracy"], "swa_te_loss": swa["loss"],
                               "swa_te_acc": swa["accuracy"], "time": time.time() - t0})
        p, t = rows["paddle"][-1], rows["torch"][-1]
        print(f"  [long] epoch {epoch + 1}/{epochs}: train loss {p['tr_loss']:.5f} / "
              f"{t['tr_loss']:.5f}, test acc {p['te_acc']:.2f} / {t['te_acc']:.2f}, SWA "
              f"{p['swa_te_acc']:.2f} / {t['swa_te_acc']:.2f} (Paddle / torch), "
              f"{time.time() - t0:.0f} s", flush=True)

    _, _, pd_iters, th_iters = train_twins(ctx, cfg, epochs, on_epoch)
    cols = list(rows["paddle"][0])
    for name in ("paddle", "torch"):
        with open(ctx.out / f"train_align_{name}.csv", "w") as fh:
            fh.write(",".join(cols) + "\n")
            for r in rows[name]:
                fh.write(",".join(f"{r[c]:.6f}" if isinstance(r[c], float) else str(r[c])
                                  for c in cols) + "\n")
    pd_vals = {c: np.nan_to_num(np.array([r[c] for r in rows["paddle"]]))
               for c in ("te_acc", "swa_te_acc")}
    th_vals = {c: np.nan_to_num(np.array([r[c] for r in rows["torch"]]))
               for c in ("te_acc", "swa_te_acc")}
    pd_vals["loss_curve"], th_vals["loss_curve"] = pd_iters[:, 3], th_iters[:, 3]
    pd_vals["final_acc"] = np.array([rows["paddle"][-1]["te_acc"],
                                     rows["paddle"][-1]["swa_te_acc"]])
    th_vals["final_acc"] = np.array([rows["torch"][-1]["te_acc"],
                                     rows["torch"][-1]["swa_te_acc"]])
    record(ctx, "train_align", pd_vals, th_vals, [  # reported, not gated: see README
        (f"long: per-iteration training loss, {len(pd_iters)} iterations", ["loss_curve"],
         T_TRAIN_LOSS, False),
        ("long: per-epoch SGD and SWA test accuracy (%)", ["te_acc", "swa_te_acc"],
         T_TRAIN_ACC, False),
        ("long: final SGD and SWA test accuracy (%)", ["final_acc"], T_TRAIN_ACC, False),
    ])
    _plot_long(ctx, rows, cfg)
    ctx.note("long", f"{epochs} epochs, width {width}, {subset or 50000} train images, SWA from "
             f"epoch {swa_start}: {time.time() - t0:.0f} s; final Paddle SGD "
             f"{rows['paddle'][-1]['te_acc']:.2f} % SWA {rows['paddle'][-1]['swa_te_acc']:.2f} %,"
             f" torch SGD {rows['torch'][-1]['te_acc']:.2f} % SWA "
             f"{rows['torch'][-1]['swa_te_acc']:.2f} %")


def _plot_long(ctx: Context, rows: dict, cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("paddle", "-"), ("torch", "--")):
        ep = [r["ep"] for r in rows[name]]
        ax_loss.plot(ep, [r["tr_loss"] for r in rows[name]], style, label=f"{name} train loss")
        ax_acc.plot(ep, [r["te_acc"] for r in rows[name]], style, marker="o", ms=3,
                    label=f"{name} SGD")
        swa = [(r["ep"], r["swa_te_acc"]) for r in rows[name] if not math.isnan(r["swa_te_acc"])]
        if swa:
            ax_acc.plot(*zip(*swa, strict=True), style, marker="s", ms=3, label=f"{name} SWA")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"VGG16 width {cfg['Arch']['width']}, SWA from epoch "
                 f"{cfg['SWA']['swa_start']}: Paddle (solid) vs PyTorch (dashed)")
    fig.tight_layout()
    save_png(fig, str(ctx.out / "train_align_curves.png"), dpi=100)
    plt.close(fig)

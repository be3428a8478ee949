"""Step-by-step alignment of the Paddle twin with the PyTorch twin (the reproduction guide's diff).

``python diff/align.py --data_path ../shared/data/cifar-10-python.tar.gz`` runs every step on CPU:
for each step S it writes ``S_paddle.npy`` / ``S_torch.npy`` with ``reprod_log.ReprodLogger`` and
``S_diff.log`` with ``reprod_log.ReprodDiffHelper.report`` into ``output/diff/`` (not committed),
prints a summary table and exits 1 if any step fails. ``--out diff/`` refreshes the committed
logs (and writes their dumps beside them, which git ignores), ``--out DIR`` writes anywhere
else; ``--steps a,b`` runs a subset, ``--break KIND`` builds a deliberately broken Paddle twin
(to see the right step fail and name the layer), ``--long`` adds the reduced-scale reproduction
(``train_align_*``). See diff/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFF_DIR = Path(__file__).resolve().parent
# A run writes here unless told otherwise: the committed files under diff/ change only when a
# refresh is asked for (--out diff/), never as a side effect of checking an install.
DEFAULT_OUT = ROOT / "output" / "diff"
for path in (ROOT, DIFF_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from swa_recipe.arguments import ArgumentParser  # noqa: E402
from swa_recipe.runtime import tune_cpu_env  # noqa: E402

CPU_ENV = tune_cpu_env()  # before paddle (reprod_log imports paddle too)

import paddle  # noqa: E402
from alignment import backward, data, ema, forward, long, loss, lr, metric, swa, train  # noqa: E402, E501
from alignment.context import BREAKS, MODELS, Context  # noqa: E402
from alignment.report import fmt, summary, verdict  # noqa: E402
from alignment.twins import cached_archive  # noqa: E402

STEP_FUNCS = {"forward": forward.step_forward, "loss": loss.step_loss, "data": data.step_data,
              "lr": lr.step_lr, "backward": backward.step_backward, "swa": swa.step_swa,
              "ema": ema.step_ema, "metric": metric.step_metric, "train": train.step_train}
STEPS = tuple(STEP_FUNCS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--data_path", default=None,
                        help="CIFAR-10 archive or folder (default: the project's cache/download)")
    parser.add_argument("--model", default="VGG16",
                        help=f"models of the forward, backward and swa steps: comma-separated "
                        f"from {','.join(MODELS)}, or all")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="where the .npy/.log files go (default output/diff/, not committed; "
                        "--out diff/ refreshes the committed logs; the .npy dumps stay "
                        "untracked)")
    parser.add_argument("--break", dest="brk", default="none", choices=BREAKS,
                        help="build a deliberately broken Paddle twin (demonstrates localisation)")
    parser.add_argument("--backward_width", type=float, default=0.125,
                        help="VGG16 width of the backward step (1/8 keeps its dump and log small "
                        "and the step quick; 1 works, see README)")
    parser.add_argument("--train_lr", type=float, default=0.01,
                        help="learning rate of the train step (default: the recipe's swa_lr; "
                        "at 0.05 the trajectories separate chaotically, see README)")
    parser.add_argument("--control", action="store_true",
                        help="train step: also Paddle against itself, its init nudged 1 ulp")
    parser.add_argument("--long", action="store_true",
                        help="also the reduced-scale real-data reproduction (train_align_*)")
    parser.add_argument("--long_width", type=float, default=0.25)
    parser.add_argument("--long_epochs", type=int, default=20)
    parser.add_argument("--long_subset", type=int, default=None,
                        help="first N training images in long mode (default: all 50,000)")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    args.model = MODELS if args.model == "all" else tuple(
        m.strip() for m in args.model.split(",") if m.strip())
    if not args.model or set(args.model) - set(MODELS):
        parser.error(f"--model takes names from {', '.join(MODELS)} or all, got "
                     f"{', '.join(args.model) or 'nothing'}")
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paddle.set_device("cpu")
    ctx = Context(out=out, data_path=args.data_path, brk=args.brk, train_lr=args.train_lr,
                  backward_width=args.backward_width,
                  control=args.control, models=args.model)
    if CPU_ENV:
        print("CPU settings applied: " + " ".join(f"{k}={v}" for k, v in CPU_ENV.items()))
    if args.brk != "none":
        print(f"deliberately broken Paddle twin: --break {args.brk}")
    times: dict[str, float] = {}
    t_all = time.time()
    with cached_archive():
        for step in args.steps:
            print(f"== {step}", flush=True)
            t0 = time.time()
            before = len(ctx.rows)
            STEP_FUNCS[step](ctx)
            times[step] = time.time() - t0
            for r in ctx.rows[before:]:
                print(f"  {verdict(r)}  {r.compared}: mean {fmt(r.mean)}, "
                      f"max {fmt(r.max)} (threshold {fmt(r.threshold)})", flush=True)
        if args.long:
            print("== long", flush=True)
            t0 = time.time()
            long.run_long(ctx, args.long_width, args.long_epochs, args.long_subset)
            times["long"] = time.time() - t0
    times["total"] = time.time() - t_all
    print()
    print(summary(ctx.rows, times))
    failed = sorted({r.step for r in ctx.rows if r.gate and not r.passed})
    for r in ctx.rows:
        if r.gate and not r.passed and r.note:
            print(f"{r.step} / {r.compared}: {r.note}")
    print(f"\nfiles written to {out}")
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

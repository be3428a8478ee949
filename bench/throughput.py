"""Training throughput of both twins on this machine: ``python bench/throughput.py``.

Each measurement runs in a fresh process per framework (CPU settings apply before import; peak
RSS is that framework's), alternating the frameworks round by round so that both see the same
machine state. Prints a table and writes JSON (``--json``).

Widths 1 and 1/4 by default (``--width``), each measured in the same invocation, the
frameworks' order alternating round by round and width by width. The table and the JSON name
the machine (CPU model, the instruction-set flags the kernels dispatch on, threads, versions).

Figures: the real training loop (loader, augmentation, logging, per-step seeding) on real
CIFAR-10 images and, in the same trainer right after it, the loop's own step on batches already
in memory (loop / step is then the loader's and logging's cost alone), evaluation, the
cost of one SWA collection and of ``update_bn`` (on the model, or its BN variant for VGG16/19) as
fractions of a training epoch, peak
RSS after training, and resident memory after each epoch of the lite run
(``configs/lite.yaml`` for 6 epochs: training, SWA collection from epoch 2, evaluation).
Any model of the zoo: ``--model PreResNet164``, and ``-o Section.key=value`` as for train.py.
A bare step on random tensors in a fresh trainer (forward, loss, backward, SGD) and its
variant with the frameworks' own convolutions (``Global.onednn false``).

The torch twin's speed options (``--part options``: AMP bfloat16 and float16, TF32,
channels_last, torch.compile, ``Data.on_device``), each set as a config key exactly as ``-o``
would and measured through the trainer's own ``Trainer.step``, so the figure is the option as
training runs it: the step's images/s on batches in memory, the real loop's images/s, and the
largest difference of the per-step loss from the float32 eager path over the same first steps
(same batches, same initial weights, same dropout masks). Options that only exist on a CUDA GPU
(float16 with loss scaling, TF32) say "skipped: needs CUDA" on a CPU. ``tools/gpu_check.py``
runs the same functions on a GPU.

For a GPU (``--part loader,syncs`` runs only these, in seconds): the numpy augmentation's
images/s in one process (what each loader worker delivers), and the host's reads of tensor
values per training step (each one waits for the device's queue on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from swa_recipe.arguments import ArgumentParser  # noqa: E402
from swa_recipe.numbers import float_argument, int_argument, short  # noqa: E402
from swa_recipe.runtime import release_free_memory, tune_cpu_env  # noqa: E402
from swa_study.provenance import MACHINE_PREFIX, Machine  # noqa: E402

FIGURES = [  # key, label, unit
    ("step_ips", "train step, batches in memory", "img/s"),
    ("loop_ips", "real training loop", "img/s"),
    ("loop_efficiency", "loop / step", "x"),
    ("bare_ips", "bare step, random tensors", "img/s"),
    ("eval_ips", "evaluation", "img/s"),
    ("collect_fraction", "SWA collection / epoch", "%"),
    ("update_bn_fraction", "update_bn / epoch", "x"),
    ("peak_rss_mb", "peak RSS, full-width training", "MiB"),
    ("lite_rss_growth_mb", "RSS growth, lite run epochs 3 -> 6", "MiB"),
    ("native_conv_ips", "bare step, Global.onednn false", "img/s"),
    ("loader_ips_per_worker", "numpy augmentation, one loader worker", "img/s"),
    ("host_syncs_per_step", "host syncs per training step", "x"),
    ("host_syncs_between_lines", "host syncs between log lines", "x"),
]
PARTS = ("speed", "memory", "loader", "syncs", "options")
# Tensor methods through which the host reads values: each waits for the device on a GPU.
# (torch's numpy() only works on CPU tensors, which cpu() made; Paddle's numpy() copies.)
HOST_READS = {
    "torch": ("item", "tolist", "cpu", "__float__", "__int__", "__bool__", "__index__"),
    "paddle": ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"),
}
# Loaders read host tensors of their own (torch's DataLoader draws each epoch's base seed as a
# CPU tensor): no device is waited for, so these callers are not counted.
HOST_ONLY_CALLERS = ("torch.utils.data", "paddle.io")
CIFAR10_TRAIN = 50000
# The torch twin's speed options, each the config update that turns it on (what ``-o`` sets):
# the trainer implements every one, the bench only sets keys and measures Trainer.step.
FP32 = "fp32"
OPTIONS: dict[str, dict] = {
    FP32: {},
    "amp_bf16": {"AMP": {"use_amp": True, "dtype": "bfloat16"}},
    "amp_fp16": {"AMP": {"use_amp": True, "dtype": "float16"}},
    "tf32": {"AMP": {"tf32": True}},
    "channels_last": {"Global": {"channels_last": True}},
    "compile": {"Global": {"compile": True}},
    "on_device": {"Data": {"on_device": True}},
}
# Options whose whole effect is a CUDA feature (float16 autocast with loss scaling; TF32
# tensor cores): on a CPU there is nothing to measure, and the report says so.
CUDA_ONLY = ("amp_fp16", "tf32")
NEEDS_CUDA = "skipped: needs CUDA"


def overrides(args: argparse.Namespace) -> dict:
    """``-o Section.key=value`` options as a config update."""
    from swa_recipe.config import parse_override

    update: dict[str, dict] = {}
    for text in args.override:
        section, key, value = parse_override(text)
        update.setdefault(section, {})[key] = value
    return update


def bench_config(args: argparse.Namespace, framework: str, model: str | None = None,
                 onednn: bool = True) -> dict:
    from swa_recipe.config import default_config, merge, validate

    cfg = merge(default_config(), {
        "Global": {"framework": framework, "epochs": 1, "log_freq": 10**9, "device": "cpu",
                   "onednn": onednn},
        "Arch": {"model": model or args.model, "width": args.width[0]},  # a worker's one width
        "SWA": {"swa": True, "swa_start": 1},
        "Data": {"data_path": args.data_path, "batch_size": args.batch,
                 "train_subset": args.loop_images, "test_subset": args.eval_images},
    }, "bench")
    return validate(merge(cfg, overrides(args), "-o"))


def bn_model(model: str) -> str:
    """The model ``update_bn`` is timed on: VGG16/VGG19 have no BatchNorm, their BN variants do."""
    return f"{model}BN" if model in ("VGG16", "VGG19") else model


def timed(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def bare_step_ips(twin, cfg: dict, steps: int, warmup: int, framework: str) -> float:
    """Forward, loss, backward and SGD step on one batch of random tensors, repeated."""
    import numpy as np

    batch = cfg["Data"]["batch_size"]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y_np = rng.integers(0, 10, batch)
    trainer = twin.trainer.Trainer(cfg)
    if framework == "paddle":
        import paddle
        import paddle.nn.functional as F

        x, y = paddle.to_tensor(x_np), paddle.to_tensor(y_np)

        def step():
            loss = F.cross_entropy(trainer.net(x), y)
            trainer.optimizer.clear_grad()
            loss.backward()
            trainer.optimizer.step()
            float(loss)
    else:
        import torch
        import torch.nn.functional as F

        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

        def step():
            with twin.models.kernels(trainer.model):  # Global.onednn, backward included
                loss = F.cross_entropy(trainer.net(x), y)
                trainer.optimizer.zero_grad()
                loss.backward()
            trainer.optimizer.step()
            float(loss)
    trainer.net.train()
    for _ in range(warmup):
        step()
    return batch / timed(step, steps)


def memory_batches(trainer, steps: int) -> tuple[list, list]:
    """The first ``steps`` batches of epoch 1 from the trainer's own loader (host or
    ``Data.on_device``), held in memory, and their dropout masks: every option trained on
    these sees the same images, in the same order, with the same masks."""
    trainer.train_loader.batch_sampler.set_epoch(1)
    batches = list(itertools.islice(iter(trainer.train_loader), steps))
    return batches, [trainer.dropout_masks(1, it) for it in range(len(batches))]


def run_steps(trainer, batches: list, masks: list) -> list[float]:
    """The loop's own step (``Trainer.step``: learning rate, dropout masks, forward, loss,
    backward, SGD) over ``batches``; each step's mean loss, read in one transfer at the end
    as the loop reads its sums once per log line (the only wait for a GPU)."""
    trainer.net.train()
    scale = trainer.world_size / trainer.batches.global_size(0)
    sums = []
    for it, (x, y) in enumerate(batches):
        trainer.set_lr(trainer.learning_rate(1, it))
        loss_sum, _, n = trainer.step(x, y, masks[it], scale)
        sums.append((loss_sum, n))
    values = trainer.to_host([loss for loss, _ in sums])
    return [float(v) / n for v, (_, n) in zip(values, sums, strict=True)]


def loop_step_ips(trainer, steps: int) -> float:
    """The training loop's own step on real batches already in memory, in the trainer that has
    just timed the loop: the same warm-up, allocator state and code, so loop / step is what the
    loader, augmentation and logging cost and nothing else."""
    batches, masks = memory_batches(trainer, steps)
    run_steps(trainer, batches, masks)  # the batches' first step in this order
    n = sum(int(y.shape[0]) for _, y in batches)
    return n / timed(lambda: run_steps(trainer, batches, masks))


def loop_epoch_ips(trainer) -> float:
    """The real training loop's images/s (loader, augmentation, logging, per-step seeding):
    epoch 0 warms up (first-touch allocations, kernel selection, compilation), epoch 1 is
    timed."""
    trainer.train_epoch(0)
    return trainer.batches.n / timed(lambda: trainer.train_epoch(1))


def option_names(text: str) -> list[str]:
    """``amp_bf16+channels_last``: options of ``OPTIONS`` combined (``fp32`` alone is none)."""
    names = [n for n in text.split("+") if n != FP32]
    unknown = [n for n in names if n not in OPTIONS]
    if unknown or not text:
        raise ValueError(f"unknown option {short(unknown[0] if unknown else text)}; choose "
                         f"from {', '.join(OPTIONS)} (combine with +)")
    return names


def option_config(cfg: dict, option: str) -> dict:
    """``cfg`` with the option's config keys set (``a+b``: both), checked as ``-o`` would."""
    from swa_recipe.config import merge, validate

    for name in option_names(option):
        cfg = merge(cfg, OPTIONS[name], option)
    return validate(cfg)


def skip_reason(option: str, cuda: bool) -> str | None:
    """Why ``option`` is not measured here: a CUDA-only option without a CUDA GPU."""
    if not cuda and any(n in CUDA_ONLY for n in option_names(option)):
        return NEEDS_CUDA
    return None


@contextlib.contextmanager
def backend_flags_kept():
    """torch's global math switches (TF32, float32 matmul precision, cuDNN autotuning) as they
    were before the block: an option that sets them for its trainer must not carry them into
    the next option measured in this process."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision, benchmark = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = benchmark


def timed_passes(run, window_s: float) -> tuple[int, float]:
    """Call ``run`` until ``window_s`` seconds have passed (at least once): the passes made and
    the seconds they took. A window, rather than a count, keeps a fast GPU's figure from
    resting on a few milliseconds, and lets processes measured at once share the same span."""
    t0 = time.perf_counter()
    passes = 0
    while passes == 0 or time.perf_counter() - t0 < window_s:
        run()
        passes += 1
    return passes, time.perf_counter() - t0


def measure_option(twin, cfg: dict, option: str, steps: int, warmup: int,
                   reference: list[float] | None = None, loop: bool = False,
                   window_s: float = 0.0, before_timing=None) -> dict:
    """One option (or ``a+b``) in a fresh trainer of the torch twin: the first ``steps`` steps
    from the initial weights with their losses (compilation and autotuning happen here),
    ``warmup`` more passes, then timed passes over the same batches for ``window_s``
    (images/s); with ``reference`` (the float32 eager losses of the same steps) the largest
    absolute loss difference; with ``loop`` the real training loop's and evaluation's
    images/s too. ``before_timing`` runs just before the timed passes (a barrier)."""
    with backend_flags_kept():
        trainer = twin.trainer.Trainer(option_config(cfg, option))
        batches, masks = memory_batches(trainer, steps)
        losses = run_steps(trainer, batches, masks)
        for _ in range(warmup):
            run_steps(trainer, batches, masks)
        if before_timing is not None:
            before_timing()
        passes, seconds = timed_passes(lambda: run_steps(trainer, batches, masks), window_s)
        n = sum(int(y.shape[0]) for _, y in batches)
        out = {"option": option, "step_ips": passes * n / seconds, "losses": losses,
               "steps": len(batches)}
        if reference is not None:
            out["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
        if loop:
            out["loop_ips"] = loop_epoch_ips(trainer)
            out["eval_ips"] = trainer.test_loader.batch_sampler.batches.n / timed(
                trainer.evaluate)
    return out


def option_or_reason(twin, cfg: dict, option: str, steps: int, warmup: int, cuda: bool,
                     reference: list[float] | None = None, loop: bool = False,
                     window_s: float = 0.0, before_timing=None) -> dict:
    """:func:`measure_option`, or why it was not measured: "skipped: needs CUDA", the config's
    refusal, or the error the option raised (one line), so one broken option does not hide
    the others' figures."""
    from swa_recipe.config import ConfigError

    reason = skip_reason(option, cuda)
    if reason:
        return {"option": option, "skipped": reason}
    try:
        return measure_option(twin, cfg, option, steps, warmup, reference, loop, window_s,
                              before_timing)
    except ConfigError as exc:
        return {"option": option, "skipped": f"refused: {exc}"}
    except Exception as exc:  # a diagnostic: report the option's failure, measure the rest
        return {"option": option, "failed": f"{type(exc).__name__}: {one_line(str(exc))}"}


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (a table cell, a JSON field)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def options_worker(args: argparse.Namespace) -> dict:
    """Every option of ``--options`` against float32 eager, in this process (torch twin)."""
    import torch

    from swa_apps.cli import import_twin

    twin, cuda = import_twin("torch"), torch.cuda.is_available()
    cfg = bench_config(args, "torch")
    results = {}
    reference = None
    for option in [FP32, *[o for o in args.options if o != FP32]]:
        result = option_or_reason(twin, cfg, option, args.steps, args.warmup, cuda, reference,
                                  loop=True)
        if option == FP32:
            reference = result.get("losses")
            result["max_loss_diff"] = 0.0
        results[option] = result
    return {"options": results}


def options_table(options: dict) -> str:
    """The options' rows: step and loop images/s, their ratio to float32 eager, the largest
    loss difference from it, or why an option has no figures."""
    base = options.get(FP32, {}).get("step_ips")
    head = ["option", "step (img/s)", "x fp32", "loop (img/s)", "eval (img/s)",
            "max loss diff vs fp32"]
    rows = []
    for name, r in options.items():
        if "step_ips" not in r:
            rows.append([name, r.get("skipped") or f"failed: {r.get('failed')}", "", "", "", ""])
            continue
        ratio = f"{r['step_ips'] / base:.2f}" if base else ""
        loop = f"{r['loop_ips']:.0f}" if "loop_ips" in r else ""
        evaluation = f"{r['eval_ips']:.0f}" if "eval_ips" in r else ""
        diff = f"{r['max_loss_diff']:.2e}" if "max_loss_diff" in r else ""
        rows.append([name, f"{r['step_ips']:.0f}", ratio, loop, evaluation, diff])
    return markdown(head, rows)


def markdown(head: list, rows: list[list]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(head), line(["---"] * len(head)), *map(line, rows)])


@contextlib.contextmanager
def host_reads(framework: str):
    """Count the host's reads of tensor values while the block runs (a read from within a read,
    e.g. ``float`` through ``item``, counts once; loaders' host tensors do not count); yields
    the list of method names."""
    cls = __import__(framework).Tensor
    originals = {name: getattr(cls, name) for name in HOST_READS[framework]}
    reads: list[str] = []
    depth = [0]

    def counting(name, method):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if depth[0] == 0 and not caller.startswith(HOST_ONLY_CALLERS):
                reads.append(name)
            depth[0] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return read

    for name, method in originals.items():
        setattr(cls, name, counting(name, method))
    try:
        yield reads
    finally:
        for name, method in originals.items():
            setattr(cls, name, method)


def host_syncs(framework: str, data_path: str | None, log_freq: int = 5) -> dict:
    """Host reads per step of a real training epoch (1/16 width, 10 steps of 128 images)."""
    from swa_apps.cli import import_twin
    from swa_recipe.config import default_config, merge, validate

    cfg = validate(merge(default_config(), {
        "Global": {"framework": framework, "device": "cpu", "log_freq": log_freq},
        "Arch": {"width": 0.0625},
        "Data": {"data_path": data_path, "train_subset": 1280, "test_subset": 128}}, "bench"))
    trainer = import_twin(framework).trainer.Trainer(cfg)
    trainer.train_epoch(0)
    with host_reads(framework) as reads:
        trainer.train_epoch(1)
    lines = math.ceil(trainer.iters / log_freq)
    return {"host_syncs_per_step": len(reads) / trainer.iters,
            "host_syncs_between_lines": (len(reads) - lines) / trainer.iters,
            "host_reads": reads, "steps": trainer.iters, "log_freq": log_freq}


def loader_ips(data_path: str | None, images: int = 2560) -> float:
    """Images/s of the numpy augmentation and batching in this process: one loader worker's
    throughput (workers are independent processes, so N workers give about N times this)."""
    import numpy as np

    from swa_recipe.data.cifar import CIFARDataset, EpochBatches, load_cifar10, subset

    train = subset(load_cifar10(data_path)[0], images)
    dataset = CIFARDataset(train, train=True, seed=1)
    batches = EpochBatches(len(train.labels), 128, seed=1, shuffle=True)

    def epoch():
        for keys in batches:
            items = [dataset[k] for k in keys]
            np.stack([x for x, _ in items]), np.array([y for _, y in items])

    epoch()  # warm-up
    return len(train.labels) / timed(epoch, 2)


def rss_mb() -> float:
    """Resident memory now (peak RSS only ever grows)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def lite_rss(args: argparse.Namespace, epochs: int = 6) -> list[float]:
    """RSS after each epoch of the lite run (train, collect, evaluate), in a fresh process."""
    from swa_apps.cli import import_twin
    from swa_recipe.config import load_yaml, merge, validate

    framework = args.worker
    cfg = merge(load_yaml(os.path.join(ROOT, "configs", "lite.yaml")), {
        "Global": {"framework": framework, "device": "cpu", "epochs": epochs},
        "Arch": {"model": args.model}, "Data": {"data_path": args.data_path}}, "bench")
    cfg = validate(merge(cfg, overrides(args), "-o"))
    trainer = import_twin(framework).trainer.Trainer(cfg)
    rss = []
    for epoch in range(cfg["Global"]["epochs"]):
        trainer.train_epoch(epoch)
        trainer.collect()
        trainer.evaluate()
        release_free_memory()  # as ``fit`` does after every epoch
        rss.append(rss_mb())
    return rss


def worker(args: argparse.Namespace) -> dict:
    """One framework's figures, in this process."""
    from swa_apps.cli import import_twin

    framework = args.worker
    twin = import_twin(framework)
    cfg = bench_config(args, framework)
    out = {"bare_ips": bare_step_ips(twin, cfg, args.steps, args.warmup, framework)}

    trainer = twin.trainer.Trainer(cfg)
    out["loop_ips"] = loop_epoch_ips(trainer)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["step_ips"] = loop_step_ips(trainer, args.steps)
    out["loop_efficiency"] = out["loop_ips"] / out["step_ips"]
    n_test = trainer.test_loader.batch_sampler.batches.n
    out["eval_ips"] = n_test / timed(trainer.evaluate)
    full_epoch_s = CIFAR10_TRAIN / out["loop_ips"]
    trainer.collect()
    out["collect_fraction"] = 100 * timed(trainer.collect, 5) / full_epoch_s

    bn_cfg = bench_config(args, framework, bn_model(args.model))
    bn_trainer = twin.trainer.Trainer(bn_cfg)
    bn_trainer.train_epoch(0)
    bn_epoch_s = timed(lambda: bn_trainer.train_epoch(1))
    bn_trainer.collect()
    out["update_bn_fraction"] = timed(bn_trainer.update_bn) / bn_epoch_s
    # Last: Paddle's FLAGS_use_mkldnn, which the oneDNN model set, stays set in the process.
    native = bench_config(args, framework, onednn=False)
    out["native_conv_ips"] = bare_step_ips(twin, native, args.steps, args.warmup, framework)
    return out


def worker_part(args: argparse.Namespace) -> dict:
    """What ``--worker FRAMEWORK --part PART`` measures, in this fresh process."""
    if args.part == "memory":
        return {"lite_rss_mb": lite_rss(args)}
    if args.part == "syncs":
        return host_syncs(args.worker, args.data_path)
    if args.part == "options":
        return options_worker(args)
    return worker(args)


def run_worker(framework: str, argv: list[str], part: str = "speed") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, *argv, "--part", part]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{framework} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    frameworks = list(results)
    head = ["figure", *frameworks] + (["paddle / torch"] if len(frameworks) == 2 else [])
    rows = []
    for key, label, unit in FIGURES:
        vals = [results[f].get(key) for f in frameworks]
        if all(v is None for v in vals):
            continue
        cells = ["n/a" if v is None else f"{v:.2f}" if unit in ("x", "%") else f"{v:.0f}"
                 for v in vals]
        paired = len(vals) == 2 and None not in vals and key.endswith("ips")
        ratio = [f"{vals[0] / vals[1]:.2f}"] if paired else [""] if len(vals) == 2 else []
        rows.append([f"{label} ({unit})", *cells, *ratio])
    return markdown(head, rows)


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", default="paddle,torch")
    parser.add_argument("--model", default="VGG16", help="any model of the zoo")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="S.KEY=VALUE",
                        help="config override, as for train.py (e.g. -o Arch.depth=20)")
    parser.add_argument("--width", type=widths_argument, default=[1.0, 0.25],
                        help="comma-separated widths, measured in one run (default: 1,0.25)")
    parser.add_argument("--batch", type=int_argument(1), default=128)
    parser.add_argument("--steps", type=int_argument(1), default=5, help="timed bare steps")
    parser.add_argument("--warmup", type=int_argument(0), default=2)
    parser.add_argument("--loop_images", type=int_argument(1), default=1280,
                        help="images per timed epoch")
    parser.add_argument("--eval_images", type=int_argument(1), default=1280)
    parser.add_argument("--rounds", type=int_argument(1), default=1,
                        help="alternating rounds; medians")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results.json"))
    parser.add_argument("--part", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)} (default: all; "
                        f"loader,syncs take seconds); a subset writes bench/results-PARTS.json")
    parser.add_argument("--options", type=options_argument, default=list(OPTIONS),
                        help=f"--part options: comma-separated, each one of {', '.join(OPTIONS)} "
                        f"or a combination with + (default: each on its own)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tune_cpu_env()
    if args.worker:
        print(json.dumps(worker_part(args)))
        return 0
    parts = args.part.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown --part {', '.join(sorted(unknown))}; choose from {PARTS}")
    if set(parts) != set(PARTS) and "--json" not in sys.argv:
        args.json = os.path.join(ROOT, "bench", f"results-{'-'.join(parts)}.json")
    argv = without_option(sys.argv[1:], "--width")
    frameworks = args.frameworks.split(",")
    measured = {w: measure(args, parts, frameworks, argv + ["--width", str(w)], order)
                for w, order in alternating_widths(args.width)}
    machine = Machine.here()
    report = {"machine": {"cpu": machine.cpu, "flags": list(machine.flags),
                          "threads": machine.threads, "versions": dict(machine.versions),
                          "cores": os.cpu_count()},
              "options": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
              "widths": {str(w): measured[w] for w in args.width}}
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
    print(machine.line().removeprefix(MACHINE_PREFIX))
    for w in args.width:
        print(f"\n{args.model}, width {w}, batch {args.batch}")
        if set(parts) - {"options"}:
            print(table(measured[w]["results"]))
        options = measured[w]["results"].get("torch", {}).get("options")
        if options:
            print(f"\ntorch options, {args.steps} steps against float32 eager")
            print(options_table(options))
    return 0


def options_argument(text: str) -> list[str]:
    """``--options amp_bf16,channels_last+compile``: each known (``option_names``)."""
    options = text.split(",")
    for option in options:
        try:
            option_names(option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return options


def widths_argument(text: str) -> list[float]:
    """``--width 1,0.25``: each a positive float."""
    return [float_argument(0, strict=True)(part) for part in text.split(",")]


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` and ``option=VALUE`` (each width passes its own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def alternating_widths(widths: list[float]) -> list[tuple[float, int]]:
    """Each width with the round order its frameworks start in (0: as given, 1: reversed),
    so that with two widths each framework goes first at one of them."""
    return [(w, i % 2) for i, w in enumerate(widths)]


def measure(args: argparse.Namespace, parts: list[str], frameworks: list[str],
            argv: list[str], order: int) -> dict:
    """One width's figures: ``--rounds`` rounds of the speed workers, the frameworks'
    order alternating round by round (medians over rounds), then the other parts."""
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    results: dict[str, dict] = {f: {} for f in frameworks}
    if "speed" in parts:
        for r in range(args.rounds):
            for framework in frameworks if (r + order) % 2 == 0 else frameworks[::-1]:
                runs[framework].append(run_worker(framework, argv))
        results = {f: {k: statistics.median(run[k] for run in runs[f]) for k in runs[f][0]}
                   for f in frameworks}
    loader = loader_ips(args.data_path) if "loader" in parts else None
    for f in frameworks:
        if "memory" in parts:
            rss = run_worker(f, argv, "memory")["lite_rss_mb"]
            results[f].update(lite_rss_mb=rss, lite_rss_growth_mb=rss[-1] - rss[2])
        if "syncs" in parts:
            results[f].update(run_worker(f, argv, "syncs"))
        if loader is not None:  # framework-free: the same numpy code feeds both twins
            results[f]["loader_ips_per_worker"] = loader
    if "options" in parts and "torch" in frameworks:  # the options are the torch twin's
        results["torch"]["options"] = run_worker("torch", argv, "options")["options"]
    return {"results": results, "runs": runs}


if __name__ == "__main__":
    sys.exit(main())

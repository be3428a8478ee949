"""One command that checks a CUDA GPU and measures what it gives the paper's VGG16 row:
``python tools/gpu_check.py --data_path data/cifar10_jpeg.npz``.

A GPU is lent rarely and briefly, so everything worth knowing from it comes out of one call of
at most ``--budget_s`` seconds (default 540: nine minutes), written under ``--out`` (default
``output/gpu_check``) phase by phase, so a call cut short still leaves what it measured:

1. the environment (GPU, memory, driver, CUDA, cuDNN, torch, CPU, commit);
2. a lite run per speed option of the torch twin (float32, AMP bfloat16, AMP float16, TF32,
   channels_last, torch.compile, ``Data.on_device``): ``train.py --framework torch`` on
   ``configs/lite.yaml``, pass or fail and the final training loss;
3. throughput at full width, VGG16, batch 128, through ``bench/throughput.py``'s measuring
   functions (the twin's own ``Trainer.step``, options set as config keys): each precision,
   the best one with channels_last, the real loop with the host loader and with
   ``Data.on_device``, eager against compiled, one process against two at once; each figure
   with its largest loss difference from float32 eager over the same first steps and the
   projected time of the paper's VGG16 row (SGD and SWA, 200 epochs each, evaluations
   included) at its rate;
4. with the time left, the paper's SGD and SWA runs (``configs/vgg16_{sgd,swa}_cifar10.yaml``
   with the fastest measured options; batch, schedule, data order, augmentation and dropout
   masks are the recipe's), two processes at once when that measured faster. Before the
   budget ends each run gets train.py's own stop signal (SIGTERM), finishes its step and
   writes a checkpoint; ``--resume`` in a later call continues both (``--resume auto``) for
   that call's whole budget, with the options of the first.

Results: ``gpu_check.json`` and a short table on stdout. ``--dry`` runs the same code on the
CPU at 1/16 width with a few steps and a small budget (the test suite runs it); options that
need CUDA (float16, TF32) say "skipped: needs CUDA", and torch.compile, whose first compile
takes minutes on a small CPU, is skipped unless ``--options`` names it. Needs only torch (a
CUDA build on a GPU) and this repository: the torch twin never imports Paddle.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import throughput as bench  # noqa: E402  (bench/throughput.py: the measuring functions)

from swa_recipe.numbers import float_argument  # noqa: E402
from swa_recipe.runtime import tune_cpu_env, usable_cpus  # noqa: E402

LITE_OPTIONS = ("fp32", "amp_bf16", "amp_fp16", "tf32", "channels_last", "compile", "on_device")
PRECISIONS = ("fp32", "tf32", "amp_bf16", "amp_fp16")  # the step's arithmetic: one at a time
PAPER_CONFIGS = {"sgd": "configs/vgg16_sgd_cifar10.yaml", "swa": "configs/vgg16_swa_cifar10.yaml"}
CIFAR10_TRAIN, CIFAR10_TEST = 50000, 10000
# An option whose first losses stray further than this from float32 eager (a loss of about
# 2.3 at the start) is broken, not merely rounded differently: it is never chosen.
LOSS_TOLERANCE = 0.1
DRY_SKIPS = {"compile": "skipped in --dry: compiling takes minutes on a small CPU "
                        "(--options compile runs it)"}
RESULT = "RESULT "  # a worker's result line on stdout (train and library lines pass by)
STOPPED = "stopped by the budget (checkpoint written)"
# Of the throughput phase's time, the worker's share; the two processes at once get the rest.
WORKER_SHARE = 0.75


@dataclass(frozen=True)
class Mode:
    """The sizes of one kind of call: the GPU check itself, or its CPU rehearsal (``--dry``)."""

    device: str
    width: float
    batch: int
    steps: int  # steps per timed pass (and compared with float32 eager)
    warmup: int
    window_s: float  # a timed measurement repeats passes for at least this long
    loop_images: int  # images of the timed real-loop epoch
    eval_images: int
    lite: tuple[str, ...]  # train.py overrides of the lite runs
    recipe: tuple[str, ...]  # train.py overrides of the recipe runs (beyond the options)
    lite_jobs: int  # lite runs at once
    lite_share: float  # budget shares of the lite and throughput phases
    speed_share: float
    min_recipe_s: float  # below this the recipe phase does not start (data loading alone)
    stop_margin_s: float  # SIGTERM this long before the budget ends: step, checkpoint, exit

    @property
    def recipe_reserve(self) -> float:
        """Seconds the earlier phases leave for the recipe phase, whatever their shares."""
        return self.min_recipe_s + self.stop_margin_s


GPU = Mode(device="gpu", width=1.0, batch=128, steps=20, warmup=2, window_s=2.0,
           loop_images=12800, eval_images=CIFAR10_TEST,
           lite=("Data.num_workers=2",), recipe=(), lite_jobs=len(LITE_OPTIONS),
           lite_share=0.25, speed_share=0.35, min_recipe_s=60, stop_margin_s=25)
DRY = Mode(device="cpu", width=0.0625, batch=128, steps=2, warmup=0, window_s=0.5,
           loop_images=256, eval_images=128,
           lite=("Global.epochs=1", "SWA.swa_start=1", "Data.train_subset=256",
                 "Data.test_subset=128", "Data.num_workers=0"),
           recipe=("Arch.width=0.0625", "Data.train_subset=256", "Data.test_subset=128",
                   "Data.num_workers=0"),
           lite_jobs=1, lite_share=0.4, speed_share=0.35, min_recipe_s=12, stop_margin_s=8)


class Clock:
    """The call's budget: seconds left, and a phase's share of what is left."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        """Seconds until the budget ends (negative once past it)."""
        return self.end - time.monotonic()

    def share(self, fraction: float, reserve: float = 0.0) -> float:
        """Seconds a phase may take: ``fraction`` of the time left, never past the end less
        ``reserve``; what an earlier phase did not use passes on to the later ones."""
        return max(0.0, min(fraction * self.left(), self.left() - reserve))


# ------------------------------------------------------------------------------ environment


def environment() -> dict:
    """What the figures depend on: GPU, memory, driver, CUDA and cuDNN, torch, CPU, commit."""
    import torch

    from swa_study.provenance import Machine

    machine = Machine.here()
    env = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "python": platform.python_version(), "cpu": machine.cpu, "cpu_cores": usable_cpus(),
           "cpu_flags": list(machine.flags), "commit": git_commit(),
           "paddle_installed": _importable("paddle")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_count=torch.cuda.device_count(),
                   compute_capability=f"{props.major}.{props.minor}", **nvidia_smi())
    else:
        env["gpu"] = None
    return env


def _importable(name: str) -> bool:
    """Whether ``name`` is installed, without importing it (Paddle's import is slow and loud)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def nvidia_smi() -> dict:
    """Driver version (and the CUDA version the driver supports) from ``nvidia-smi``."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {"driver": None}
    return {"driver": proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else None}


def git_commit() -> str:
    """The checkout's commit, and whether its tracked files differ from it; a copied tree
    without ``.git`` says so."""
    from swa_study.provenance import git_commit as checkout_commit

    head = checkout_commit(ROOT)
    if head is None:
        return "unknown (not a git checkout)"
    try:
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown (not a git checkout)"
    return head + (" (modified)" if dirty.stdout.strip() else "")


# -------------------------------------------------------------------------------- options


def option_overrides(option: str) -> list[str]:
    """An option of ``bench.OPTIONS`` (or ``a+b``) as train.py's ``-o Section.key=value``."""
    out = []
    for name in bench.option_names(option):
        for section, values in bench.OPTIONS[name].items():
            out += [f"{section}.{key}={override_value(value)}" for key, value in values.items()]
    return out


def override_value(value: object) -> str:
    """A config value as ``-o`` reads it back: ``true``/``false`` for booleans, else as is."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def skip_reason(option: str, dry: bool, cuda: bool, asked: bool) -> str | None:
    """Why ``option`` is not run in this call: it needs CUDA, or it is too slow for --dry
    unless asked for by name."""
    reason = bench.skip_reason(option, cuda)
    if reason:
        return reason
    if dry and not asked:
        for name in bench.option_names(option):
            if name in DRY_SKIPS:
                return DRY_SKIPS[name]
    return None


def usable(result: dict) -> bool:
    """A measured option whose first losses agree with float32 eager (finite, within
    ``LOSS_TOLERANCE``): fast and broken is not a choice."""
    diff = result.get("max_loss_diff")
    return "step_ips" in result and diff is not None and math.isfinite(diff) and (
        diff <= LOSS_TOLERANCE)


def fastest(results: list[dict], key: str = "step_ips") -> dict | None:
    """The usable result with the most images/s under ``key``."""
    candidates = [r for r in results if usable(r) and key in r]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def with_option(option: str, extra: str) -> str:
    """``option`` plus ``extra`` (``fp32`` is no option: ``fp32 + compile`` is ``compile``)."""
    return extra if option == bench.FP32 else f"{option}+{extra}"


# ------------------------------------------------------------------------------- processes


def python_command(*args: str) -> list[str]:
    """This interpreter (the one whose torch the check measures) running ``args``."""
    return [sys.executable, *args]


def subprocess_env() -> dict:
    """Children's environment: warnings off (their output is parsed and tabled), unbuffered
    so that a worker stopped at its time limit has written every result it had."""
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


def run_logged(cmd: list[str], log: str, timeout: float) -> tuple[int | None, float]:
    """Run ``cmd`` with its output in ``log``; stop it (SIGTERM, then SIGKILL) at ``timeout``.
    Returns the exit code (None: stopped by the timeout) and the seconds it took."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=max(timeout, 0.1)), time.monotonic() - t0
        except subprocess.TimeoutExpired:
            stop(proc, 10)
            return None, time.monotonic() - t0


def stop(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM (train.py's stop signal: finish the step, write a checkpoint), then SIGKILL
    after ``grace`` seconds."""
    return stop_all([proc], grace)[0]


def stop_all(procs: list[subprocess.Popen], grace: float) -> list[int]:
    """:func:`stop` for several processes at once: every one gets its signal first, then all
    share the same ``grace`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]


def results_of(log: str) -> list[dict]:
    """A worker's ``RESULT`` lines, in order (those written before a timeout included; a line
    cut off by the timeout is left out)."""
    found = []
    with open(log, errors="replace") as fh:
        for line in fh:
            if line.startswith(RESULT):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line[len(RESULT):]))
    return [r for r in found if isinstance(r, dict) and isinstance(r.get("option"), str)]


def last_lines(path: str, n: int = 3) -> str:
    """The last ``n`` non-empty lines of a child's output, on one line: why it failed."""
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return bench.one_line(" / ".join(lines[-n:]))


# ---------------------------------------------------------------------------------- lite


def lite_command(args: argparse.Namespace, mode: Mode, option: str, run_dir: str) -> list[str]:
    """train.py on ``configs/lite.yaml`` with the option's keys, as a user would type it."""
    cmd = python_command("train.py", "--config", "configs/lite.yaml", "--framework", "torch",
                         "--dir", run_dir, "--overwrite", "-o", f"Global.device={mode.device}")
    if args.data_path:
        cmd += ["--data_path", args.data_path]
    for text in (*mode.lite, *option_overrides(option)):
        cmd += ["-o", text]
    return cmd


def final_row(run_dir: str) -> dict | None:
    """The last row of a run's ``metrics.csv`` (None: no epoch finished)."""
    from swa_recipe.logs import read_metrics

    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return None
    rows = read_metrics(path)
    return rows[-1] if rows else None


def lite_phase(args: argparse.Namespace, mode: Mode, clock: Clock, cuda: bool) -> dict:
    """One lite train.py run per option, ``mode.lite_jobs`` at a time, within the phase's
    share of the budget: pass (exit 0 and a finite final loss) or fail, with the loss."""
    deadline = time.monotonic() + clock.share(mode.lite_share, reserve=mode.recipe_reserve)
    results, queue = {}, []
    for option in args.lite:
        reason = skip_reason(option, args.dry, cuda, option in args.asked)
        if reason:
            results[option] = {"status": reason}
        else:
            queue.append(option)
    os.makedirs(os.path.join(args.out, "lite"), exist_ok=True)
    with contextlib.ExitStack() as stack:
        running: dict[str, tuple[subprocess.Popen, float]] = {}
        while (queue or running) and time.monotonic() < deadline:
            while queue and len(running) < mode.lite_jobs:
                option = queue.pop(0)
                run_dir = os.path.join(args.out, "lite", option)
                log = stack.enter_context(open(run_dir + ".log", "w"))
                running[option] = (subprocess.Popen(
                    lite_command(args, mode, option, run_dir), cwd=ROOT, env=subprocess_env(),
                    stdout=log, stderr=subprocess.STDOUT), time.monotonic())
            time.sleep(0.2)
            for option, (proc, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[option]
                    results[option] = lite_result(args.out, option, proc.returncode,
                                                  time.monotonic() - t0)
        stop_all([proc for proc, _ in running.values()], 5)
    for option, (_, t0) in running.items():
        results[option] = lite_result(args.out, option, None, time.monotonic() - t0)
    for option in queue:
        results[option] = {"status": "not run: the phase's share of the budget ran out"}
    return {o: results[o] for o in args.lite}


def lite_result(out: str, option: str, rc: int | None, seconds: float) -> dict:
    """A lite run's outcome: pass or FAIL, its final training loss and test accuracy, and
    why it failed (the last line of its output, or the time limit)."""
    run_dir = os.path.join(out, "lite", option)
    row = final_row(run_dir)
    loss = row.get("tr_loss") if row else None
    ok = rc == 0 and loss is not None and math.isfinite(loss)
    status = "pass" if ok else "FAIL" if rc is not None else "unfinished: the phase's time ran out"
    out = {"status": status, "seconds": round(seconds, 1),
           "final_train_loss": loss, "returncode": rc}
    if row:
        out["final_test_acc"] = row.get("te_acc")
    if not ok:
        out["why"] = last_lines(run_dir + ".log", 1)
    return out


# ----------------------------------------------------------------------------- throughput


def speed_config(args: argparse.Namespace, mode: Mode, images: int) -> dict:
    """The paper's VGG16 SWA config at the mode's width and batch, on ``images`` training
    images (the timed epochs), evaluated on ``mode.eval_images``."""
    from swa_recipe.config import load_yaml, merge, validate

    cfg = merge(load_yaml(os.path.join(ROOT, PAPER_CONFIGS["swa"])), {
        "Global": {"framework": "torch", "device": mode.device, "epochs": 2, "log_freq": 10**9},
        "Arch": {"width": mode.width}, "SWA": {"swa_start": 1},
        "Data": {"data_path": args.data_path, "batch_size": mode.batch,
                 "train_subset": images, "test_subset": mode.eval_images}}, "gpu_check")
    return validate(cfg)


def emit(result: dict) -> dict:
    """A worker's result, as one ``RESULT`` line the parent reads (even after a timeout)."""
    print(RESULT + json.dumps(result), flush=True)
    return result


def speed_worker(args: argparse.Namespace, mode: Mode) -> int:
    """Measure in this process, each result emitted as soon as it is known: the precisions,
    the fastest with channels_last, the real loop with and without ``Data.on_device``
    (evaluation too), then torch.compile on the fastest so far."""
    import torch

    from swa_apps.cli import import_twin

    twin, cuda = import_twin("torch"), torch.cuda.is_available()
    cfg = speed_config(args, mode, max(mode.loop_images, mode.steps * mode.batch))

    def measure(option: str, reference: list[float] | None, loop: bool = False) -> dict:
        reason = skip_reason(option, args.dry, cuda, option in args.asked)
        if reason:
            return emit({"option": option, "skipped": reason, "stage": stage})
        result = bench.option_or_reason(twin, cfg, option, mode.steps, mode.warmup, cuda,
                                        reference, loop, window_s=mode.window_s)
        gc.collect()  # the trainer's loader workers and device memory, before the next one
        if cuda:
            torch.cuda.empty_cache()
        return emit({**result, "stage": stage})

    stage = "precision"
    fp32 = bench.option_or_reason(twin, cfg, bench.FP32, mode.steps, mode.warmup, cuda,
                                  window_s=mode.window_s)
    reference = fp32.get("losses")
    emit({**fp32, "stage": stage, **({"max_loss_diff": 0.0} if reference else {})})
    if reference is None:
        return 1
    fp32["max_loss_diff"] = 0.0
    results = [fp32] + [measure(o, reference) for o in PRECISIONS if o != bench.FP32]
    best = fastest(results)["option"]
    stage = "layout"
    layout = [measure("channels_last", reference)]
    if best != bench.FP32:
        layout.append(measure(with_option(best, "channels_last"), reference))
    best = fastest([r for r in results if r["option"] == best] + layout)["option"]
    stage = "loop"
    loops = [measure(best, reference, loop=True),
             measure(with_option(best, "on_device"), reference, loop=True)]
    chosen = fastest(loops, "loop_ips") or loops[0]
    stage = "compile"
    measure(with_option(chosen["option"], "compile"), reference, loop=True)
    return 0


def pair_worker(args: argparse.Namespace, mode: Mode) -> int:
    """One of two processes measuring the same option at once: both warm up, wait for each
    other (files in ``--ready_dir``), then time the same window."""
    import torch

    from swa_apps.cli import import_twin

    twin, cuda = import_twin("torch"), torch.cuda.is_available()
    cfg = speed_config(args, mode, max(mode.loop_images, mode.steps * mode.batch))
    ready = os.path.join(args.ready_dir, f"ready-{args.index}")

    def barrier() -> None:
        open(ready, "w").close()
        deadline = time.monotonic() + 600
        while len(os.listdir(args.ready_dir)) < args.procs and time.monotonic() < deadline:
            time.sleep(0.05)

    result = bench.option_or_reason(twin, cfg, args.pair_option, mode.steps, mode.warmup, cuda,
                                    window_s=mode.window_s, before_timing=barrier)
    emit({**result, "index": args.index})
    return 0


def worker_command(args: argparse.Namespace, kind: str, *extra: str) -> list[str]:
    """This script as a measuring process (``--worker speed`` or ``pair``): a fresh process
    per measurement run, so that its GPU memory and compiled code are its own."""
    cmd = python_command(os.path.abspath(__file__), "--worker", kind, "--out", args.out,
                         "--options", ",".join(args.asked) or "fp32")
    if args.data_path:
        cmd += ["--data_path", args.data_path]
    if args.dry:
        cmd.append("--dry")
    return cmd + list(extra)


def speed_phase(args: argparse.Namespace, mode: Mode, clock: Clock) -> dict:
    """The throughput figures (one worker process), then one process against two at once on
    the chosen option; each with the projected time of the paper's row at its rate."""
    logs = os.path.join(args.out, "speed")
    os.makedirs(logs, exist_ok=True)
    seconds = clock.share(mode.speed_share / (1 - mode.lite_share), reserve=mode.recipe_reserve)
    t0 = time.monotonic()
    log = os.path.join(logs, "worker.log")
    rc, _ = run_logged(worker_command(args, "speed"), log, WORKER_SHARE * seconds)
    measured = results_of(log)
    out = {"results": measured, "returncode": rc}
    if rc != 0:
        out["why"] = "timed out" if rc is None else last_lines(log)
    chosen = choose(measured)
    out["chosen"] = chosen
    if chosen:
        left = seconds - (time.monotonic() - t0)
        one = next(r["step_ips"] for r in measured if r["option"] == chosen["option"])
        out["processes"] = processes_figures(args, chosen["option"], one, left, logs)
    out["projection"] = projections(out)
    return out


def choose(measured: list[dict]) -> dict | None:
    """The options the recipe runs with: the fastest usable real loop (compiled or not); the
    fastest step where no loop was measured."""
    return fastest(measured, "loop_ips") or fastest(measured)


def processes_figures(args: argparse.Namespace, option: str, one: float, seconds: float,
                      logs: str) -> dict:
    """The chosen option's step images/s in one process (the speed worker's figure) and in
    each of two processes at once, measured by the same function over the same window after
    both have warmed up."""
    ready = os.path.join(logs, "ready")
    os.makedirs(ready, exist_ok=True)
    for name in os.listdir(ready):
        os.remove(os.path.join(ready, name))
    paths = [os.path.join(logs, f"pair-{i}.log") for i in range(2)]
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        running = [subprocess.Popen(
            worker_command(args, "pair", "--pair_option", option, "--procs", "2",
                           "--index", str(i), "--ready_dir", ready),
            cwd=ROOT, env=subprocess_env(), stdout=stack.enter_context(open(path, "w")),
            stderr=subprocess.STDOUT) for i, path in enumerate(paths)]
        while any(p.poll() is None for p in running) and time.monotonic() - t0 < seconds:
            time.sleep(0.1)
        stop_all(running, 5)
    found = [r for p in paths for r in results_of(p) if "step_ips" in r]
    two = ({"step_ips_each": [r["step_ips"] for r in found],
            "step_ips_total": sum(r["step_ips"] for r in found)} if len(found) == 2 else
           {"why": last_lines(paths[-1], 1) or "timed out"})
    return {"1": {"step_ips_total": one}, "2": two}


# ----------------------------------------------------------------------------- projection


def paper_row_images() -> dict:
    """Images the paper's VGG16 row trains and evaluates (SGD and SWA runs, 200 epochs each;
    evaluations every ``eval_freq`` epochs, the SWA model's too once it is collected), counted
    with the loop's own rules (``swa_recipe.schedules``)."""
    from swa_recipe.config import load_yaml
    from swa_recipe.schedules import should_collect, should_eval

    train = evaluated = 0
    for path in PAPER_CONFIGS.values():
        cfg = load_yaml(os.path.join(ROOT, path))
        epochs = cfg["Global"]["epochs"]
        train += epochs * CIFAR10_TRAIN
        for epoch in range(epochs):
            if should_eval(cfg, epoch):
                evaluated += CIFAR10_TEST * (2 if should_collect(cfg, epoch) else 1)
    return {"train": train, "eval": evaluated}


def row_seconds(train_ips: float, eval_ips: float | None, images: dict) -> float:
    """Seconds for the paper's row at ``train_ips`` (both runs' training) and ``eval_ips``;
    without an evaluation figure the training alone."""
    return images["train"] / train_ips + (images["eval"] / eval_ips if eval_ips else 0.0)


def projections(speed: dict) -> list[dict]:
    """Each throughput figure with the paper row's time at that rate (a projection from the
    rate measured here; evaluation at the best measured evaluation rate)."""
    images = paper_row_images()
    evals = [r["eval_ips"] for r in speed["results"] if "eval_ips" in r and usable(r)]
    eval_ips = max(evals) if evals else None
    rows, stepped = [], set()
    for r in speed["results"]:
        for key in ("step_ips", "loop_ips"):
            if key == "step_ips" and r["option"] in stepped:
                continue  # measured again with its loop: the first figure stands
            stepped.add(r["option"])
            if key in r and usable(r):
                rows.append({"figure": f"{r['option']} {key[:-4]}", "ips": r[key],
                             "max_loss_diff": r["max_loss_diff"],
                             "paper_row_s": row_seconds(r[key], eval_ips, images)})
    for procs, fig in speed.get("processes", {}).items():
        if "step_ips_total" in fig:
            rows.append({"figure": f"{speed['chosen']['option']} step, "
                                   f"{'one process' if procs == '1' else 'two processes at once'}"
                                   f" (total)",
                         "ips": fig["step_ips_total"], "max_loss_diff": None,
                         "paper_row_s": row_seconds(fig["step_ips_total"], eval_ips, images)})
    return rows


# -------------------------------------------------------------------------------- recipe


@dataclass
class Plan:
    """How the recipe runs train: their options, one process each at once or one after the
    other, and the data; kept in ``recipe/plan.json`` so that ``--resume`` continues alike."""

    option: str
    concurrent: bool
    device: str
    overrides: list[str]

    def command(self, kind: str, run_dir: str, data_path: str | None, resume: bool) -> list[str]:
        """train.py for the ``kind`` run (sgd or swa): the paper's config, the plan's keys, and
        ``--resume auto`` (the newest checkpoint in ``run_dir``) on a later call."""
        cmd = python_command("train.py", "--config", PAPER_CONFIGS[kind], "--framework", "torch",
                             "--dir", run_dir, "-o", f"Global.device={self.device}")
        if data_path:
            cmd += ["--data_path", data_path]
        for text in (*self.overrides, *option_overrides(self.option)):
            cmd += ["-o", text]
        return cmd + (["--resume", "auto"] if resume else [])


def load_plan(path: str, mode: Mode) -> Plan | str:
    """The plan an earlier call wrote, checked as any file read back may need (a known option,
    this call's device, overrides train.py parses), or why it cannot be used."""
    from swa_recipe.config import ConfigError, parse_override

    try:
        with open(path) as fh:
            plan = Plan(**json.load(fh))
        bench.option_names(plan.option)
        if not isinstance(plan.concurrent, bool) or not isinstance(plan.overrides, list):
            raise TypeError("bad field types")
        for text in plan.overrides:
            parse_override(text)
    except (OSError, ValueError, TypeError, AttributeError, ConfigError) as exc:
        return f"{path} is not a plan this tool wrote ({bench.one_line(str(exc), 120)})"
    if plan.device != mode.device:
        return (f"the recipe runs in {os.path.dirname(os.path.dirname(path))} were started on "
                f"the {plan.device}; resume them {'with' if plan.device == 'cpu' else 'without'} "
                f"--dry")
    return plan


def make_plan(speed: dict, mode: Mode) -> Plan:
    """The chosen option (float32 eager when nothing was measured), two processes at once
    when they measured faster in total than one (or were not measured), and loader workers
    shared between them on a GPU."""
    option = speed["chosen"]["option"] if speed.get("chosen") else bench.FP32
    figures = speed.get("processes", {})
    one, two = (figures.get(k, {}).get("step_ips_total") for k in ("1", "2"))
    concurrent = not (one and two) or two > one
    overrides = list(mode.recipe)
    if concurrent and mode.device == "gpu":
        overrides.append(f"Data.num_workers={max(0, min(8, usable_cpus() // 2 - 1))}")
    return Plan(option, concurrent, mode.device, overrides)


def recipe_dirs(out: str) -> dict[str, str]:
    """The SGD and SWA run folders under ``out``: fixed, so that ``--resume`` finds them."""
    return {kind: os.path.join(out, "recipe", f"vgg16_{kind}") for kind in PAPER_CONFIGS}


def recipe_phase(args: argparse.Namespace, mode: Mode, clock: Clock, plan: Plan,
                 resume: bool) -> dict:
    """The paper's SGD and SWA runs until ``mode.stop_margin_s`` before the budget ends, then
    train.py's stop signal: each finishes its step and writes a checkpoint."""
    left = clock.left() - mode.stop_margin_s
    if left < mode.min_recipe_s:
        return {"status": f"skipped: {max(left, 0):.0f} s left, {mode.min_recipe_s:.0f} s needed"}
    dirs = recipe_dirs(args.out)
    kinds = list(PAPER_CONFIGS)
    if plan.concurrent:
        rcs = train_until(args, plan, kinds, dirs, clock.end - mode.stop_margin_s, resume, mode)
    else:
        rcs = {}
        for i, kind in enumerate(kinds):
            share = (clock.left() - mode.stop_margin_s) / (len(kinds) - i)
            end = time.monotonic() + share
            rcs.update(train_until(args, plan, [kind], dirs, end, resume, mode))
    return {"plan": asdict(plan), "runs": {k: run_summary(dirs[k], rcs[k]) for k in kinds}}


def train_until(args: argparse.Namespace, plan: Plan, kinds: list[str], dirs: dict,
                end: float, resume: bool, mode: Mode) -> dict[str, int | None]:
    """Start the runs of ``kinds`` at once; at ``end`` (monotonic) send each its stop signal
    and give it ``mode.stop_margin_s`` to write its checkpoint."""
    procs = {}
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            os.makedirs(os.path.dirname(dirs[kind]), exist_ok=True)
            fh = stack.enter_context(open(dirs[kind] + ".log", "a"))
            cmd = plan.command(kind, dirs[kind], args.data_path, resume)
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            procs[kind] = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=fh,
                                           stderr=subprocess.STDOUT)
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < end:
            time.sleep(0.2)
        return dict(zip(procs, stop_all(list(procs.values()), mode.stop_margin_s),
                        strict=True))


def run_summary(run_dir: str, rc: int | None) -> dict:
    """Where a recipe run stands: how it ended, epochs finished, its last row, its newest
    checkpoint, its mean epoch time and the 200 epochs that implies."""
    from swa_recipe.checkpoint import latest_checkpoint

    rows = read_rows(os.path.join(run_dir, "metrics.csv"))
    out = {"status": run_status(rc, last_lines(run_dir + ".log", 1)), "returncode": rc,
           "epochs_done": len(rows),
           "checkpoint": latest_checkpoint(run_dir, "torch") if os.path.isdir(run_dir) else None}
    if rows:
        out["last_row"] = rows[-1]
        times = [r["time"] for r in rows if r.get("time") is not None]
        if times:
            out["epoch_s"] = sum(times) / len(times)
            out["projected_200_epochs_s"] = 200 * out["epoch_s"]
    return out


def run_status(rc: int | None, last_line: str) -> str:
    """How train.py ended: finished, stopped with a checkpoint (its last line names the command
    that continues it), stopped before training began (nothing to save), or failed."""
    if rc == 0:
        return "finished"
    if rc == 128 + signal.SIGTERM and "continue with:" in last_line:
        return STOPPED
    if rc == 128 + signal.SIGTERM:
        return "stopped before training began (no new checkpoint)"
    return f"FAIL (exit {rc}): {last_line}"


def read_rows(path: str) -> list[dict]:
    """A run's ``metrics.csv`` rows (checked by ``read_metrics``); none before its first epoch."""
    from swa_recipe.logs import read_metrics

    return read_metrics(path) if os.path.isfile(path) else []


# -------------------------------------------------------------------------------- report


def fmt_s(seconds: float | None) -> str:
    """Seconds as minutes or hours: projections span minutes to days."""
    if seconds is None:
        return ""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def summary(report: dict) -> str:
    """The short table: environment, lite runs, throughput with projections, recipe runs."""
    env, lines = report.get("env"), []
    if env:
        lines.append(f"GPU: {env.get('gpu') or 'none (CPU)'}  memory: "
                     f"{env.get('gpu_memory_gib', '-')} GiB  driver: {env.get('driver', '-')}  "
                     f"CUDA: {env.get('cuda_build')}  torch: {env.get('torch')}  CPU: "
                     f"{env.get('cpu')} x{env.get('cpu_cores')}  commit: {env.get('commit')}")
    if "lite" in report:
        rows = [[o, r["status"], _num(r.get("final_train_loss"), ".4f"), _num(r.get("seconds"),
                 ".1f")] for o, r in report["lite"].items()]
        lines += ["", "lite runs", bench.markdown(["option", "result", "final loss", "s"], rows)]
    speed = report.get("speed")
    if speed:
        rows = [[p["figure"], f"{p['ips']:.0f}", _num(p["max_loss_diff"], ".1e"),
                 fmt_s(p["paper_row_s"])] for p in speed.get("projection", [])]
        rows += [[r["option"], r.get("skipped") or f"failed: {r.get('failed')}", "", ""]
                 for r in speed.get("results", []) if "step_ips" not in r]
        lines += ["", f"throughput (img/s; paper row = 2 runs x 200 epochs x 50,000 images + "
                      f"evaluation, projected at that rate); chosen: "
                      f"{(speed.get('chosen') or {}).get('option', 'none')}",
                  bench.markdown(["figure", "img/s", "max loss diff vs fp32", "paper row"], rows)]
    recipe = report.get("recipe")
    if recipe:
        lines += ["", "recipe runs"]
        if "runs" not in recipe:
            lines.append(recipe["status"])
        else:
            rows = [[k, r["status"], str(r["epochs_done"]), _num(r.get("epoch_s"), ".1f"),
                     fmt_s(r.get("projected_200_epochs_s")), r.get("checkpoint") or ""]
                    for k, r in recipe["runs"].items()]
            lines.append(bench.markdown(["run", "status", "epochs", "s / epoch", "200 epochs",
                                         "checkpoint"], rows))
            lines.append(f"options: {recipe['plan']['option']}, "
                         f"{'at once' if recipe['plan']['concurrent'] else 'one after the other'}")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    """A table cell: empty where there is no figure."""
    return "" if value is None else format(value, spec)


def save(report: dict, out: str) -> None:
    """``gpu_check.json``, rewritten after every phase: a call cut short keeps what it has."""
    from swa_recipe.checkpoint import atomic_save

    def write(path: str) -> None:
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2)

    atomic_save(write, os.path.join(out, "gpu_check.json"))


def resume_line(args: argparse.Namespace) -> str:
    """The command that continues this call's recipe runs, printed last."""
    parts = ["python tools/gpu_check.py", "--resume", "--out", args.out]
    if args.data_path:
        parts += ["--data_path", args.data_path]
    if args.dry:
        parts.append("--dry")
    return " ".join(parts)


# ---------------------------------------------------------------------------------- main


class OneLineParser(argparse.ArgumentParser):
    """Bad input ends the command with one line on stderr and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {bench.one_line(message)}\n")


def options_argument(text: str) -> list[str]:
    """``--options``: comma-separated options of ``bench.OPTIONS`` (``a+b`` combinations)."""
    return bench.options_argument(text)


def parser() -> argparse.ArgumentParser:
    """The command line (the worker options are hidden: only this script passes them)."""
    p = OneLineParser(description="Check a CUDA GPU and measure what it gives the paper's VGG16 "
                      "row: environment, a lite run per speed option, throughput with "
                      "projections, then the SGD and SWA runs until the budget ends (--dry: a "
                      "CPU rehearsal).")
    p.add_argument("--data_path", default=None, help="the CIFAR-10 JPEG pack (.npz) or the "
                   "python archive (.tar.gz); default: the user cache (download)")
    p.add_argument("--out", default=os.path.join("output", "gpu_check"),
                   help="output folder (default output/gpu_check)")
    p.add_argument("--budget_s", type=float_argument(0, strict=True), default=None,
                   help="seconds for the whole call (default 540; --dry: 100)")
    p.add_argument("--dry", action="store_true", help="CPU rehearsal at 1/16 width")
    p.add_argument("--resume", action="store_true", help="continue the recipe runs of an "
                   "earlier call in --out for the whole budget (skips phases 2 and 3)")
    p.add_argument("--options", type=options_argument, default=[],
                   help="lite runs of only these options (comma-separated); with --dry, "
                   "'compile' runs torch.compile too")
    for name in ("--worker", "--pair_option", "--ready_dir"):
        p.add_argument(name, default=None, help=argparse.SUPPRESS)
    for name in ("--procs", "--index"):
        p.add_argument(name, type=int, default=1, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, then run the check or, with the hidden ``--worker``, one measuring process."""
    args = parser().parse_args(argv)
    args.asked = [o for o in args.options if o != "fp32"] if args.options else []
    args.lite = args.options or list(LITE_OPTIONS)
    if args.budget_s is None:
        args.budget_s = 100.0 if args.dry else 540.0
    mode = DRY if args.dry else GPU
    tune_cpu_env()
    if args.worker:
        return {"speed": speed_worker, "pair": pair_worker}[args.worker](args, mode)
    return check(args, mode)


def check(args: argparse.Namespace, mode: Mode) -> int:
    """The four phases, the report after each, the summary and the resume command."""
    clock = Clock(args.budget_s)
    import torch

    cuda = torch.cuda.is_available()
    if not args.dry and not cuda:
        return refuse("no CUDA GPU is visible to torch (a CUDA build and a GPU are needed); "
                      "--dry rehearses the check on the CPU")
    plan_path = os.path.join(args.out, "recipe", "plan.json")
    if args.resume and not os.path.isfile(plan_path):
        return refuse(f"{args.out} holds no earlier recipe runs (no recipe/plan.json); run "
                      f"without --resume first")
    if not args.resume and any(os.path.exists(d) for d in recipe_dirs(args.out).values()):
        return refuse(f"{args.out} already holds recipe runs; continue them with --resume, "
                      f"or pass another --out")
    os.makedirs(args.out, exist_ok=True)
    report = load_report(args.out) if args.resume else {}
    report.update(env=environment(), call={"budget_s": args.budget_s, "dry": args.dry,
                                           "resume": args.resume, "mode": asdict(mode)})
    save(report, args.out)
    print(summary({"env": report["env"]}), flush=True)
    if args.resume:
        plan = load_plan(plan_path, mode)
        if isinstance(plan, str):
            return refuse(plan)
    else:
        report["lite"] = lite_phase(args, mode, clock, cuda)
        save(report, args.out)
        report["speed"] = speed_phase(args, mode, clock)
        save(report, args.out)
        plan = make_plan(report["speed"], mode)
        os.makedirs(os.path.dirname(plan_path), exist_ok=True)
        with open(plan_path, "w") as fh:
            json.dump(asdict(plan), fh, indent=2)
    report["recipe"] = recipe_phase(args, mode, clock, plan, args.resume)
    calls = report.get("recipe_calls")
    report["recipe_calls"] = [*(calls if isinstance(calls, list) else []), report["recipe"]]
    save(report, args.out)
    print(summary({k: v for k, v in report.items() if k != "env"}))
    print(f"\nwritten: {os.path.join(args.out, 'gpu_check.json')}; continue the recipe runs "
          f"with: {resume_line(args)}")
    return 0


def load_report(out: str) -> dict:
    """The earlier call's report, kept under ``--resume`` (anything but a JSON object: none)."""
    path = os.path.join(out, "gpu_check.json")
    try:
        with open(path) as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def refuse(message: str) -> int:
    """One line on stderr and exit status 2, as the project's commands refuse bad input."""
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

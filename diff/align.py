"""Step-by-step alignment of the Paddle twin with the PyTorch twin (the reproduction guide's diff).

``python diff/align.py --data_path ../shared/data/cifar-10-python.tar.gz`` runs every step on CPU:
for each step S it writes ``S_paddle.npy`` / ``S_torch.npy`` with ``reprod_log.ReprodLogger`` and
``S_diff.log`` with ``reprod_log.ReprodDiffHelper.report``, prints a summary table and exits 1 if
any step fails. ``--steps a,b`` runs a subset, ``--out DIR`` writes elsewhere than ``diff/``,
``--break KIND`` builds a deliberately broken Paddle twin (to see the right step fail and name the
layer), ``--long`` adds the reduced-scale reproduction (``train_align_*``). See diff/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFF_DIR = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swa_recipe.runtime import tune_cpu_env  # noqa: E402

CPU_ENV = tune_cpu_env()  # before paddle (reprod_log imports paddle too)

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as pF  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as tF  # noqa: E402
from reprod_log import ReprodDiffHelper, ReprodLogger  # noqa: E402

import swa_paddle.data as pd_data  # noqa: E402
import swa_paddle.trainer as pd_trainer  # noqa: E402
import swa_torch.data as th_data  # noqa: E402
import swa_torch.trainer as th_trainer  # noqa: E402
from swa_paddle import checkpoint as pd_ckpt  # noqa: E402
from swa_paddle import models as pd_models  # noqa: E402
from swa_paddle import swa_utils as pd_swa  # noqa: E402
from swa_recipe import cifar, schedules  # noqa: E402
from swa_recipe.config import default_config, load_yaml, merge, validate  # noqa: E402
from swa_recipe.convert import convert_state_dict  # noqa: E402
from swa_recipe.logs import IterMeter  # noqa: E402
from swa_torch import checkpoint as th_ckpt  # noqa: E402
from swa_torch import models as th_models  # noqa: E402
from swa_torch import swa_utils as th_swa  # noqa: E402

STEPS = ("forward", "loss", "data", "lr", "backward", "swa", "ema", "metric", "train")
BREAKS = ("none", "linear_transpose", "bn_momentum", "maxpool_grad")
SEED = 1
FAKE_SHAPE = (8, 3, 32, 32)
RECIPE = ROOT / "configs" / "vgg16_swa_cifar10.yaml"
CHANCE_FACTOR = 2.0  # "far above chance": at least twice the 10 % of a 10-class guess

T_FORWARD = T_LOSS = T_BACKWARD = 1e-6
T_DATA = 0.0
T_LR = 1e-9
T_SWA_AVG, T_SWA_BN = 1e-7, 1e-5
T_METRIC = 0.05  # accuracy points
T_TRAIN_LOSS, T_TRAIN_ACC = 1e-3, 0.3
T_F64_RATIO = 2.0  # Paddle's worst gradient error vs float64: at most twice torch's worst
T_GRAD_LOCATE = 1e-5  # relative output-gradient diff that localisation counts as divergence


# ------------------------------------------------------------------------------- bookkeeping


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


@dataclass
class Context:
    out: Path
    data_path: str | None
    brk: str = "none"
    seed: int = SEED
    train_lr: float = 0.01
    backward_width: float = 0.125
    control: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def note(self, step: str, text: str) -> None:
        self.notes.append(f"{step}: {text}")
        print(f"  [{step}] {text}", flush=True)


def make_cfg(**sections: dict) -> dict:
    """A validated config from the project's defaults; CPU, seed 1, quiet logs."""
    base = {"Global": {"device": "cpu", "seed": SEED, "log_freq": 10 ** 6}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return validate(merge(default_config(), base, "diff/align.py"))


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
           notes: dict | None = None) -> list[Row]:
    """Write ``step_paddle.npy`` / ``step_torch.npy`` (ReprodLogger) and ``step_diff.log``
    (ReprodDiffHelper.report, one report per threshold group, concatenated); add one summary
    row per group ``(compared, keys, threshold[, gate])``: the worst per-key mean abs diff
    (what the report checks) and the max abs diff over the group's keys."""
    paths = {}
    for name, vals in (("paddle", pd_vals), ("torch", th_vals)):
        logger = ReprodLogger()
        for key, value in vals.items():
            logger.add(key, np.asarray(value))
        paths[name] = ctx.out / f"{step}_{name}.npy"
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
    (ctx.out / f"{step}_diff.log").write_text("".join(log_text))
    ctx.rows.extend(rows)
    return rows


def check(ctx: Context, step: str, compared: str, value: float, threshold: str,
          passed: bool, note: str = "") -> Row:
    """A summary row that is a condition, not a diff (e.g. accuracy far above chance)."""
    row = Row(step, compared, value, math.nan, threshold, passed, note)
    ctx.rows.append(row)
    return row


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


_load_cifar10 = cifar.load_cifar10


@lru_cache(maxsize=2)
def cached_load_cifar10(data_path: str | None, md5: str | None = "auto"):
    """``swa_recipe.cifar.load_cifar10``, read once per run instead of once per loader (the
    arrays are never written to)."""
    return _load_cifar10(data_path, md5)


@contextlib.contextmanager
def cached_archive() -> Iterator[None]:
    """Every loader the twins build in this run reads the archive through the cache."""
    with contextlib.ExitStack() as stack:
        for module in (cifar, pd_data, th_data):
            if hasattr(module, "load_cifar10"):
                stack.enter_context(patched(module, "load_cifar10", cached_load_cifar10))
        yield


@contextlib.contextmanager
def fake_full_loaders() -> Iterator[None]:
    """Trainers whose loaders index 50,000 / 10,000 blank images: the real trainer objects, the
    full recipe's 391 iterations per epoch, no archive (for the steps that need no pixels)."""
    train = cifar.Split(np.zeros((50000, 3, 32, 32), np.uint8), np.zeros(50000, np.int64))
    test = cifar.Split(np.zeros((10000, 3, 32, 32), np.uint8), np.zeros(10000, np.int64))

    def loaders(data):
        return lambda cfg, rank=0, world_size=1, device="cpu": (data.make_loader(train, True, cfg),
                                                  data.make_loader(test, False, cfg))

    with patched(pd_trainer, "build_loaders", loaders(pd_data)), \
            patched(th_trainer, "build_loaders", loaders(th_data)):
        yield


def eval_loaders(cfg: dict, batch: int = 1000):
    """The twins' test loaders for ``cfg`` with batches of ``batch`` images: the same images
    and accuracy, and about twice as fast on a small CPU as batches of 128."""
    ecfg = validate(merge(cfg, {"Data": {"batch_size": batch}}, "diff/align.py"))
    return pd_data.build_loaders(ecfg)[1], th_data.build_loaders(ecfg)[1]


# ------------------------------------------------------------------------------- twins


def torch_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in th_ckpt.to_numpy(model.state_dict()).items()}


def paddle_state_as_torch(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return convert_state_dict(pd_ckpt.to_numpy(model.state_dict()), "paddle2torch")


def to_paddle_weights(state: dict[str, np.ndarray], brk: str) -> dict[str, np.ndarray]:
    """The converter; ``--break linear_transpose`` reshapes Linear weights into Paddle's
    ``[in, out]`` instead of transposing them (loads without error, scrambles the weights)."""
    converted = convert_state_dict(state, "torch2paddle")
    if brk == "linear_transpose":
        for key, value in state.items():
            if key.endswith(".weight") and np.ndim(value) == 2:
                converted[key] = np.ascontiguousarray(value.reshape(value.shape[::-1]))
    return converted


def load_torch_into_paddle(th_model: torch.nn.Module, pd_model: paddle.nn.Layer,
                           brk: str = "none") -> None:
    state = to_paddle_weights(torch_state(th_model), brk)
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(state), "<torch init>")


class _AvgGradMaxPool(paddle.autograd.PyLayer):
    """Max pooling forward, average pooling's backward: the gradient is spread evenly over each
    2x2 window instead of going to its maximum (``--break maxpool_grad``)."""

    @staticmethod
    def forward(ctx, x):
        return pF.max_pool2d(x, kernel_size=2, stride=2)

    @staticmethod
    def backward(ctx, grad):
        up = paddle.repeat_interleave(paddle.repeat_interleave(grad, 2, axis=2), 2, axis=3)
        return up / 4.0


class BrokenMaxPool(paddle.nn.Layer):
    def forward(self, x):
        return _AvgGradMaxPool.apply(x)


def apply_break(model: paddle.nn.Layer, brk: str) -> paddle.nn.Layer:
    """Break a Paddle twin in place: ``bn_momentum`` gives BatchNorm torch's momentum number
    (0.1) literally, i.e. keeps 10 % of the running statistics instead of 90 %;
    ``maxpool_grad`` swaps MaxPool2D for :class:`BrokenMaxPool` (same forward, wrong backward)."""
    if brk == "bn_momentum":
        for m in model.sublayers():
            if isinstance(m, paddle.nn.layer.norm._BatchNormBase):
                m._momentum = 0.1
    elif brk == "maxpool_grad":
        for parent in model.sublayers(include_self=True):
            for name, child in list(parent.named_children()):
                if isinstance(child, paddle.nn.MaxPool2D):
                    parent._sub_layers[name] = BrokenMaxPool()
    return model


def twin_models(cfg: dict, brk: str = "none", seed: int = SEED):
    """(torch, paddle) models of ``cfg``: torch initialises, Paddle gets the converted weights."""
    torch.manual_seed(seed)
    th_model = th_models.build_model(cfg)
    paddle.seed(seed)
    pd_model = apply_break(pd_models.build_model(cfg), brk)
    load_torch_into_paddle(th_model, pd_model, brk)
    return th_model, pd_model


def leaves_torch(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def leaves_paddle(model: paddle.nn.Layer) -> list[tuple[str, paddle.nn.Layer]]:
    return [(n, m) for n, m in model.named_sublayers() if not list(m.children())]


class Probe:
    """Forward hooks on every leaf layer of both twins (outputs, in call order) and, with
    ``grads``, tensor hooks on those outputs (gradient w.r.t. each layer's output)."""

    def __init__(self, th_model: torch.nn.Module, pd_model: paddle.nn.Layer, grads: bool):
        self.th_out, self.pd_out, self.th_grad, self.pd_grad = {}, {}, {}, {}
        self.order: list[str] = []
        self.kinds = {n: type(m).__name__ for n, m in leaves_paddle(pd_model)}
        self.handles = []
        for name, m in leaves_torch(th_model):
            self.handles.append(m.register_forward_hook(self._th_hook(name, grads)))
        for name, m in leaves_paddle(pd_model):
            self.handles.append(m.register_forward_post_hook(self._pd_hook(name, grads)))

    def _th_hook(self, name: str, grads: bool):
        def hook(module, inputs, output):
            self.th_out[name] = output.detach().numpy().copy()
            if name not in self.order:
                self.order.append(name)
            if grads and output.requires_grad:
                output.register_hook(lambda g: self.th_grad.__setitem__(name, g.numpy().copy()))
        return hook

    def _pd_hook(self, name: str, grads: bool):
        def hook(layer, inputs, output):
            self.pd_out[name] = output.numpy()
            if grads and not output.stop_gradient:
                output.register_hook(lambda g: self.pd_grad.__setitem__(name, g.numpy()))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def layer_diffs(self, which: str) -> list[tuple[str, float, float]]:
        """(layer, mean abs diff, mean abs diff / mean |torch value|) in forward order."""
        th, pd = (self.th_out, self.pd_out) if which == "output" else (self.th_grad, self.pd_grad)
        out = []
        for name in self.order:
            if name in th and name in pd and th[name].shape == pd[name].shape:
                mean, _ = diff_stats(pd[name], th[name])
                scale = float(np.abs(th[name]).mean()) or 1.0
                out.append((name, mean, mean / scale))
            elif name in th or name in pd:
                out.append((name, math.inf, math.inf))
        return out

    def first_output_divergence(self, threshold: float) -> str:
        for name, mean, _ in self.layer_diffs("output"):
            if mean > threshold:
                return (f"first layer whose output diverges: {name} ({self.kinds.get(name)}), "
                        f"mean abs diff {mean:.3g} > {threshold:g}")
        return "no layer output diverges beyond the threshold"

    def first_grad_divergence(self, threshold: float) -> str:
        """Walk from the loss back to the input: the first layer whose output gradient diverges
        (relative to its scale) is the output of the layer *after* it, in forward order, whose
        backward produced it; that layer is named as responsible."""
        diffs = self.layer_diffs("grad")
        for i in range(len(diffs) - 1, -1, -1):
            name, _, rel = diffs[i]
            if rel > threshold:
                after = diffs[i + 1][0] if i + 1 < len(diffs) else "the loss"
                kind = self.kinds.get(after, "cross-entropy")
                return (f"gradient first diverges (walking back from the loss) at the output "
                        f"of {name}: relative diff {rel:.3g} > {threshold:g}, while the "
                        f"gradient at the output of {after} matches; responsible: the backward "
                        f"of {after} ({kind})")
        return "no layer's output gradient diverges beyond the threshold"


def fake_data(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """``fake_data.npy`` / ``fake_label.npy`` (seeded): normalised-image-like noise, 8x3x32x32."""
    if "fake" not in ctx.cache:
        rng = np.random.default_rng([ctx.seed, 2018])
        x = rng.standard_normal(FAKE_SHAPE).astype(np.float32)
        y = rng.integers(0, 10, FAKE_SHAPE[0]).astype(np.int64)
        np.save(ctx.out / "fake_data.npy", x)
        np.save(ctx.out / "fake_label.npy", y)
        ctx.cache["fake"] = (x, y)
    return ctx.cache["fake"]


# ------------------------------------------------------------------------------- steps


def eval_twins(ctx: Context):
    """VGG16 at full width (dropout 0.5 as in the recipe), torch init converted, eval mode,
    the fake data through both with every layer's output recorded."""
    if "vgg16_eval" not in ctx.cache:
        x, _ = fake_data(ctx)
        th_model, pd_model = twin_models(make_cfg(Arch={"model": "VGG16"}), ctx.brk, ctx.seed)
        th_model.eval()
        pd_model.eval()
        probe = Probe(th_model, pd_model, grads=False)
        with torch.no_grad():
            th_logits = th_model(torch.from_numpy(x))
        with paddle.no_grad():
            pd_logits = pd_model(paddle.to_tensor(x))
        probe.remove()
        ctx.cache["vgg16_eval"] = (th_model, pd_model, th_logits, pd_logits, probe)
    return ctx.cache["vgg16_eval"]


def step_forward(ctx: Context) -> None:
    x, _ = fake_data(ctx)
    _, _, th_logits, pd_logits, probe = eval_twins(ctx)
    pd_vals = {"logits": pd_logits.numpy()}
    th_vals = {"logits": th_logits.numpy()}

    th_bn, pd_bn = twin_models(make_cfg(Arch={"model": "VGG16BN", "dropout": 0.0}), ctx.brk,
                               ctx.seed)
    th_bn.train()
    pd_bn.train()
    inputs = [x, np.ascontiguousarray(x[:, :, :, ::-1]), 0.5 * x + 0.25]
    for xi in inputs:
        with torch.no_grad():
            th_bn(torch.from_numpy(xi))
        with paddle.no_grad():
            pd_bn(paddle.to_tensor(xi))
    th_state, pd_state = torch_state(th_bn), paddle_state_as_torch(pd_bn)
    bn_layers = [k[:-len(".running_mean")] for k in th_state if k.endswith(".running_mean")]
    for layer in bn_layers:
        th_vals[f"bn_running_mean/{layer}"] = th_state[f"{layer}.running_mean"]
        pd_vals[f"bn_running_mean/{layer}"] = pd_state[f"{layer}.running_mean"]

    notes = {}
    logits_keys = ["logits"]
    if diff_stats(pd_vals["logits"], th_vals["logits"])[0] > T_FORWARD:
        notes["VGG16 logits"] = probe.first_output_divergence(T_FORWARD)
    # VGG16BN: three train-mode passes update the BatchNorm running statistics (momentum)
    mean_keys = [f"bn_running_mean/{layer}" for layer in bn_layers]
    for layer, key in zip(bn_layers, mean_keys, strict=True):
        mean, _ = diff_stats(pd_vals[key], th_vals[key])
        if mean > T_FORWARD:
            notes["VGG16BN BN running means"] = (
                f"first layer whose running mean diverges: {layer} (BatchNorm2D), mean abs diff "
                f"{mean:.3g}; Paddle momentum {pd_bn_momentum(pd_bn):g} (torch 0.1 == Paddle 0.9)")
            break
    record(ctx, "forward", pd_vals, th_vals, [
        ("VGG16 logits", logits_keys, T_FORWARD),
        ("VGG16BN BN running means", mean_keys, T_FORWARD),
    ], notes)
    for row in ctx.rows[-2:]:
        if row.note:
            ctx.note("forward", f"{row.compared}: {row.note}")

    # Not compared with a threshold: Paddle on CPU stores the *biased* batch variance in its
    # running variance, torch the unbiased one (the reason swa_paddle.update_bn exists).
    ratios = []
    for layer in bn_layers:
        n = _bn_count(th_bn, layer, inputs[0].shape[0])
        th_var, pd_var = th_state[f"{layer}.running_var"], pd_state[f"{layer}.running_var"]
        ratios.append((layer, n, float(np.abs(pd_var - th_var).max()),
                       float(np.abs(_unbias(pd_var, n, len(inputs)) - th_var).max())))
    worst = max(ratios, key=lambda r: r[2])
    ctx.note("forward", f"(informational) VGG16BN running_var after {len(inputs)} train passes: "
             f"max abs diff {worst[2]:.3g} at {worst[0]} (n = {worst[1]} values per channel); "
             f"after rescaling Paddle's biased batch variances by n/(n-1): max abs diff "
             f"{max(r[3] for r in ratios):.3g}. Paddle stores the biased variance on CPU, torch "
             f"the unbiased one; see README")
    ctx.cache["bn_var_note"] = ratios


def pd_bn_momentum(model: paddle.nn.Layer) -> float:
    for m in model.sublayers():
        if isinstance(m, paddle.nn.layer.norm._BatchNormBase):
            return float(m._momentum)
    return float("nan")


def _bn_count(th_model: torch.nn.Module, layer: str, batch: int) -> int:
    """Values per channel a BN layer of VGG16BN sees: batch x H x W at its depth."""
    sizes = {}
    h = 32
    for name, m in th_model.features.named_children():
        if isinstance(m, torch.nn.MaxPool2d):
            h //= 2
        sizes[f"features.{name}"] = h
    return batch * sizes[layer] ** 2


def _unbias(pd_var: np.ndarray, n: int, passes: int) -> np.ndarray:
    """Paddle's running variance after ``passes`` updates from 1 (momentum 0.9), with every
    batch variance it folded in rescaled by n/(n-1); needs the per-pass variances, so this
    inverts the recursion: v_k = 0.9 v_{k-1} + 0.1 s_k, and sum 0.1*0.9^(p-k) s_k = v_p - 0.9^p."""
    decay = 0.9 ** passes
    return decay + (pd_var - decay) * n / (n - 1)


def step_loss(ctx: Context) -> None:
    _, y = fake_data(ctx)
    _, _, th_logits, pd_logits, _ = eval_twins(ctx)
    th_y, pd_y = torch.from_numpy(y), paddle.to_tensor(y)
    th_vals = {"loss": tF.cross_entropy(th_logits, th_y).numpy().reshape(1),
               "loss_per_sample": tF.cross_entropy(th_logits, th_y, reduction="none").numpy()}
    pd_vals = {"loss": pF.cross_entropy(pd_logits, pd_y).numpy().reshape(1),
               "loss_per_sample": pF.cross_entropy(pd_logits, pd_y,
                                                   reduction="none").numpy().reshape(-1)}
    record(ctx, "loss", pd_vals, th_vals,
           [("cross-entropy on VGG16 logits (mean and per sample)", list(th_vals), T_LOSS)])


def first_batch(loader, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    loader.batch_sampler.set_epoch(epoch)
    x, y = next(iter(loader))
    return np.asarray(x.numpy()), np.asarray(y.numpy()).astype(np.int64).reshape(-1)


def step_data(ctx: Context) -> None:
    n_train = len(cached_load_cifar10(ctx.data_path, "auto")[0].labels)
    cfg = make_cfg(Data={"data_path": ctx.data_path, "batch_size": min(128, n_train)})
    pd_train, pd_test = pd_data.build_loaders(cfg)
    th_train, th_test = th_data.build_loaders(cfg)
    pd_vals, th_vals = {}, {}
    for tag, pd_loader, th_loader, epoch in (("test", pd_test, th_test, 0),
                                             ("train_epoch0", pd_train, th_train, 0),
                                             ("train_epoch1", pd_train, th_train, 1)):
        (px, py), (tx, ty) = first_batch(pd_loader, epoch), first_batch(th_loader, epoch)
        pd_vals[f"{tag}_images"], pd_vals[f"{tag}_labels"] = px, py
        th_vals[f"{tag}_images"], th_vals[f"{tag}_labels"] = tx, ty
    n = len(pd_vals["test_labels"])
    record(ctx, "data", pd_vals, th_vals, [
        (f"first batch ({n} images) of the test loader and of the augmented train loader in "
         f"epochs 1 and 2 (images, labels)", list(pd_vals), T_DATA)])
    if np.array_equal(pd_vals["train_epoch0_images"], pd_vals["train_epoch1_images"]):
        check(ctx, "data", "train batches of epochs 1 and 2 differ (reshuffled, re-augmented)",
              0.0, "differ", False)


def step_lr(ctx: Context) -> None:
    pd_vals, th_vals, keys = {}, {}, []
    for schedule in ("original", "cyclic", "swalr"):
        cfg = validate(merge(load_yaml(str(RECIPE)), {
            "Global": {"device": "cpu"}, "Arch": {"width": 0.0625},
            "Optimizer": {"schedule": schedule}}, "diff/align.py"))
        with fake_full_loaders():
            pt, tt = pd_trainer.Trainer(cfg), th_trainer.Trainer(cfg)
        iters, epochs = pt.iters, cfg["Global"]["epochs"]
        assert tt.iters == iters, (pt.iters, tt.iters)
        pd_lr, th_lr = np.zeros((epochs, iters)), np.zeros((epochs, iters))
        for epoch in range(epochs):
            with warnings.catch_warnings():  # torch: scheduler.step() before optimizer.step()
                warnings.simplefilter("ignore", UserWarning)
                pt._step_swalr(epoch)  # what Trainer.train_epoch does before an epoch's 1st step
                tt._step_swalr(epoch)
            for it in range(iters):
                pt._lr(epoch, it)
                tt._lr(epoch, it)
                pd_lr[epoch, it] = pt.optimizer.get_lr()
                th_lr[epoch, it] = tt.optimizer.param_groups[0]["lr"]
        pd_vals[f"lr_{schedule}"], th_vals[f"lr_{schedule}"] = pd_lr, th_lr
        keys.append(f"lr_{schedule}")
        ctx.cache[f"lr_{schedule}"] = (pd_lr, th_lr)
    record(ctx, "lr", pd_vals, th_vals, [
        (f"lr of every iteration, {epochs} epochs x {iters} iters, schedules original, cyclic, "
         f"swalr (Paddle optimizer.get_lr(), torch param_groups)", keys, T_LR)])


def float64_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Parameter gradients of a float64 copy of the torch model: the exact reference both
    float32 twins are measured against."""
    ref = copy.deepcopy(model).double()
    loss = tF.cross_entropy(ref(torch.from_numpy(x).double()), torch.from_numpy(y),
                            reduction="sum") * (1.0 / len(y))
    loss.backward()
    return {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """mean |a - ref| / mean |ref|: a difference relative to the gradient's scale."""
    scale = float(np.abs(ref).mean()) or 1.0
    return float(np.abs(a.astype(np.float64) - ref).mean()) / scale


def step_backward(ctx: Context) -> None:
    x, y = fake_data(ctx)
    cfg = make_cfg(Arch={"model": "VGG16", "width": ctx.backward_width, "dropout": 0.0})
    with fake_full_loaders():
        tt = th_trainer.Trainer(cfg)
        pt = pd_trainer.Trainer(cfg)
    apply_break(pt.model, ctx.brk)
    load_torch_into_paddle(tt.model, pt.model, ctx.brk)
    for m in tt.model.modules():  # out-of-place ReLU so that tensor hooks see each output
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    tt.model.train()
    pt.model.train()
    g64 = float64_grads(tt.model, x, y)
    px, py = paddle.to_tensor(x), paddle.to_tensor(y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    pd_vals, th_vals = {}, {}
    probe = Probe(tt.model, pt.model, grads=True)
    for it in range(10):
        # the body of Trainer.train_epoch (one process), on the fake batch
        pt._lr(0, it)
        pd_loss = pF.cross_entropy(pt.model(px), py, reduction="sum") * (1.0 / len(y))
        pt.optimizer.clear_grad()
        pd_loss.backward()
        tt._lr(0, it)
        th_loss = tF.cross_entropy(tt.model(tx), ty, reduction="sum") * (1.0 / len(y))
        tt.optimizer.zero_grad()
        th_loss.backward()
        if it == 0:
            probe.remove()
            pd_grads = convert_state_dict(
                {k: p.grad.numpy() for k, p in pt.model.named_parameters()}, "paddle2torch")
            th_grads = {k: p.grad.numpy().copy() for k, p in tt.model.named_parameters()}
        pt.optimizer.step()
        tt.optimizer.step()
        pd_vals[f"loss_iter_{it}"] = pd_loss.numpy().reshape(1)
        th_vals[f"loss_iter_{it}"] = th_loss.detach().numpy().reshape(1)
    names = list(th_grads)
    for name in names:
        scale = float(np.abs(th_grads[name]).mean()) or 1.0
        th_vals[f"grad/{name}"], pd_vals[f"grad/{name}"] = th_grads[name], pd_grads[name]
        th_vals[f"grad_rel/{name}"] = th_grads[name] / scale
        pd_vals[f"grad_rel/{name}"] = pd_grads[name] / scale
    loss_keys = [f"loss_iter_{i}" for i in range(10)]
    g_loss = (f"VGG16 (width {ctx.backward_width:g}, dropout 0): loss of each of 10 "
              f"Momentum+wd iterations (lr 0.05, momentum 0.9, wd 5e-4)")
    g_abs = "parameter gradients after the first backward, absolute, mean abs(dg)"
    g_rel = "the same relative to each gradient's scale, mean abs(dg) / mean abs(g)"
    twin_rel = {n: rel_err(pd_grads[n], th_grads[n]) for n in names}
    err_th = {n: rel_err(th_grads[n], g64[n]) for n in names}
    err_pd = {n: rel_err(pd_grads[n], g64[n]) for n in names}
    notes = {}
    loss0 = diff_stats(pd_vals["loss_iter_0"], th_vals["loss_iter_0"])[0]
    if loss0 > T_BACKWARD:
        where = "the first forward already differs: " + probe.first_output_divergence(T_BACKWARD)
        notes[g_loss] = notes[g_abs] = where
    elif max(err_pd.values()) > T_F64_RATIO * max(err_th.values()) or max(
            diff_stats(pd_grads[n], th_grads[n])[0] for n in names) > T_BACKWARD:
        notes[g_abs] = probe.first_grad_divergence(T_GRAD_LOCATE)
    above = sorted((n for n in names if twin_rel[n] > T_BACKWARD), key=twin_rel.get)
    notes[g_rel] = (f"{len(above)} of {len(names)} parameters above 1e-6 (worst {above[-1]} "
                    f"{twin_rel[above[-1]]:.3g}); torch's own float32 error vs float64 is up to "
                    f"{max(err_th.values()):.3g}: see the next row and README"
                    if above else "all parameters within 1e-6")
    record(ctx, "backward", pd_vals, th_vals, [
        (g_loss, loss_keys, T_BACKWARD),
        (g_abs, [f"grad/{n}" for n in names], T_BACKWARD),
        (g_rel, [f"grad_rel/{n}" for n in names], T_BACKWARD, False),
    ], notes)
    w_pd, w_th = max(err_pd, key=err_pd.get), max(err_th, key=err_th.get)
    value = err_pd[w_pd] / err_th[w_th] if err_th[w_th] > 0 else math.inf
    check(ctx, "backward", f"gradients vs a float64 reference: Paddle's worst relative error "
          f"({w_pd} {err_pd[w_pd]:.3g}) / torch's worst ({w_th} {err_th[w_th]:.3g})",
          value, f"<= {T_F64_RATIO:g}", value <= T_F64_RATIO, notes.get(g_abs, ""))
    ctx.cache["backward_profile"] = {"twin_rel": twin_rel, "err_torch": err_th,
                                     "err_paddle": err_pd, "layers": probe.layer_diffs("grad")}
    for row in ctx.rows[-4:]:
        if row.note:
            ctx.note("backward", f"{row.compared}: {row.note}")


def step_swa(ctx: Context) -> None:
    cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0},
                   Data={"data_path": ctx.data_path, "batch_size": 32, "train_subset": 96})
    th_model, pd_model = twin_models(cfg, ctx.brk, ctx.seed)
    th_avg, pd_avg = th_swa.AveragedModel(th_model), pd_swa.AveragedModel(pd_model)
    base = torch_state(th_model)
    rng = np.random.default_rng([ctx.seed, 5])
    for k in range(5):  # five weight snapshots, fed to both averagers in the same order
        snap = {}
        for key, value in base.items():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                snap[key] = value
                continue
            scale = float(value.std()) or 1.0
            noise = rng.standard_normal(value.shape).astype(np.float32)
            snap[key] = (value + np.float32(0.1 * scale) * noise).astype(value.dtype)
        th_model.load_state_dict(th_ckpt.from_numpy(snap))
        pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(to_paddle_weights(snap, ctx.brk)),
                             f"<snapshot {k}>")
        th_avg.update_parameters(th_model)
        pd_avg.update_parameters(pd_model)
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    params = [k for k, _ in th_avg.module.named_parameters()]
    moved = np.mean([diff_stats(th_state[k], snap[k])[0] for k in params])
    ctx.note("swa", f"the average is not the last snapshot: mean abs difference {moved:.3g} "
             f"(torch), n_averaged {int(th_avg.n_averaged)} / {int(pd_avg.n_averaged)}")
    pd_vals = {f"avg/{k}": pd_state[k] for k in params}
    th_vals = {f"avg/{k}": th_state[k] for k in params}
    pd_vals["n_averaged"] = np.array([int(pd_avg.n_averaged)], np.int64)
    th_vals["n_averaged"] = np.array([int(th_avg.n_averaged)], np.int64)

    # update_bn on the averaged VGG16BN, the same real batches (the twins' train loaders)
    pd_train, _ = pd_data.build_loaders(cfg)
    th_train, _ = th_data.build_loaders(cfg)
    pd_train.batch_sampler.set_epoch(0)
    th_train.batch_sampler.set_epoch(0)
    pd_swa.update_bn(pd_train, pd_avg.module)
    th_swa.update_bn(th_train, th_avg.module)
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    bn_keys = [k for k in th_state if k.endswith(("running_mean", "running_var"))]
    for k in bn_keys:
        pd_vals[f"update_bn/{k}"], th_vals[f"update_bn/{k}"] = pd_state[k], th_state[k]
    n_batches = len(pd_train.batch_sampler)
    record(ctx, "swa", pd_vals, th_vals, [
        ("AveragedModel of 5 VGG16BN (1/8 width) snapshots: averaged parameters and n_averaged",
         [f"avg/{k}" for k in params] + ["n_averaged"], T_SWA_AVG),
        (f"update_bn on the averaged VGG16BN, {n_batches} identical batches: running "
         f"mean/var", [f"update_bn/{k}" for k in bn_keys], T_SWA_BN),
    ])


T_EMA_AVG, T_EMA_TRAIN = 1e-7, 1e-6
EMA_DECAY = 0.9


def ema_snapshot(base: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """``base`` with seeded noise on every float array, BN statistics included (EMA averages
    them); variances scaled by a positive factor."""
    snap = {}
    for key, value in base.items():
        noise = rng.standard_normal(value.shape).astype(np.float32)
        if key.endswith("num_batches_tracked"):
            snap[key] = value
        elif key.endswith("running_var"):
            snap[key] = (value * np.exp(np.float32(0.1) * noise)).astype(value.dtype)
        else:
            scale = float(value.std()) or 1.0
            snap[key] = (value + np.float32(0.1 * scale) * noise).astype(value.dtype)
    return snap


def step_ema(ctx: Context) -> None:
    """``SWA.avg ema``: torch's ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d),
    use_buffers=True)`` against Paddle's on the same VGG16BN snapshots (weights and BN
    statistics), then both trainers with ``SWA.avg ema`` on the same real batches."""
    cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0})
    th_model, pd_model = twin_models(cfg, ctx.brk, ctx.seed)
    th_avg = th_swa.AveragedModel(th_model, multi_avg_fn=th_swa.get_ema_multi_avg_fn(EMA_DECAY),
                                  use_buffers=True)
    pd_avg = pd_swa.AveragedModel(pd_model, multi_avg_fn=pd_swa.get_ema_multi_avg_fn(EMA_DECAY),
                                  use_buffers=True)
    base, rng = torch_state(th_model), np.random.default_rng([ctx.seed, 6])
    for k in range(5):
        snap = ema_snapshot(base, rng)
        th_model.load_state_dict(th_ckpt.from_numpy(snap))
        pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(to_paddle_weights(snap, ctx.brk)),
                             f"<snapshot {k}>")
        th_avg.update_parameters(th_model)
        pd_avg.update_parameters(pd_model)
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    keys = [k for k in th_state if not k.endswith("num_batches_tracked")]
    pd_vals = {f"avg/{k}": pd_state[k] for k in keys}
    th_vals = {f"avg/{k}": th_state[k] for k in keys}
    moved = np.mean([diff_stats(th_state[k], snap[k])[0] for k in keys])
    ctx.note("ema", f"the EMA is not the last snapshot: mean abs difference {moved:.3g} (torch)")

    tcfg = make_cfg(Global={"epochs": 2}, Arch={"model": "VGG16", "width": 0.0625,
                                                 "dropout": 0.0},
                    Optimizer={"lr_init": 0.01},
                    SWA={"swa": True, "swa_start": 2, "swa_lr": 0.01, "avg": "ema",
                         "ema_decay": EMA_DECAY},
                    Data={"data_path": ctx.data_path, "train_subset": 640})
    pt, tt, pd_iters, _ = train_twins(ctx, tcfg, tcfg["Global"]["epochs"])
    th_ema, pd_ema = torch_state(tt.swa_model.module), paddle_state_as_torch(pt.swa_model.module)
    for k in th_ema:
        pd_vals[f"trainer/{k}"], th_vals[f"trainer/{k}"] = pd_ema[k], th_ema[k]
    pd_vals["trainer/n_averaged"] = np.array([pt.swa_n], np.int64)
    th_vals["trainer/n_averaged"] = np.array([tt.swa_n], np.int64)
    record(ctx, "ema", pd_vals, th_vals, [
        (f"EMA (decay {EMA_DECAY}, use_buffers) of 5 VGG16BN (1/8 width) snapshots: parameters "
         f"and BN statistics", [f"avg/{k}" for k in keys], T_EMA_AVG),
        (f"trainers with SWA.avg ema from epoch 2: EMA weights after {len(pd_iters)} identical "
         f"iterations (VGG16 1/16 width, 640 images, lr 0.01), and steps averaged",
         [f"trainer/{k}" for k in th_ema] + ["trainer/n_averaged"], T_EMA_TRAIN),
    ])


def step_metric(ctx: Context) -> None:
    """A short real run of the Paddle twin (the faster one on CPU), converted to torch, both
    evaluated on the whole test set."""
    cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0},
                   Data={"data_path": ctx.data_path, "batch_size": 64, "train_subset": 10000})
    t0 = time.time()
    pt = pd_trainer.Trainer(cfg)
    apply_break(pt.model, ctx.brk)
    train_res = pt.train_epoch(0)
    train_s = time.time() - t0
    pd_test, th_test = eval_loaders(cfg)
    pd_res = pd_trainer.evaluate(pt.model, pd_test)
    th_model = th_models.build_model(cfg)
    state = convert_state_dict(pd_ckpt.to_numpy(pt.model.state_dict()), "paddle2torch")
    th_ckpt.load_weights(th_model, th_ckpt.from_numpy(state), "<paddle trained>")
    th_res = th_trainer.evaluate(th_model, th_test)
    n_test = th_test.batch_sampler.batches.n
    record(ctx, "metric", {"acc": np.array([pd_res["accuracy"]]),
                           "loss": np.array([pd_res["loss"]])},
           {"acc": np.array([th_res["accuracy"]]), "loss": np.array([th_res["loss"]])},
           [(f"test accuracy (%) on {n_test} images, Paddle-trained VGG16BN 1/8 width "
             f"converted to torch", ["acc"], T_METRIC),
            ("mean test loss (cross-entropy) on the same images", ["loss"], T_LOSS)])
    chance = 100.0 / cfg["Arch"]["num_classes"]
    check(ctx, "metric", f"accuracy far above chance (Paddle {pd_res['accuracy']:.2f} %, "
          f"torch {th_res['accuracy']:.2f} %)", min(pd_res["accuracy"], th_res["accuracy"]),
          f">= {CHANCE_FACTOR * chance:g}",
          min(pd_res["accuracy"], th_res["accuracy"]) >= CHANCE_FACTOR * chance)
    ctx.note("metric", f"trained 1 epoch on {cfg['Data']['train_subset']} images in "
             f"{train_s:.0f} s (train acc {train_res['accuracy']:.2f} %); test loss Paddle "
             f"{pd_res['loss']:.6f}, torch {th_res['loss']:.6f}")


def recording_meter(sink: list) -> type:
    """``IterMeter`` that also keeps every iteration's (lr, loss): the trainers log only every
    ``log_freq`` iterations and round the loss to 5 decimals."""

    class RecordingMeter(IterMeter):
        def step(self, it, lr, loss, correct, n):
            sink.append((self.epoch, it, lr, loss))
            super().step(it, lr, loss, correct, n)

    return RecordingMeter


def train_twins(ctx: Context, cfg: dict, epochs: int, on_epoch: Callable | None = None):
    """Both trainers from the torch trainer's init (converted), the same batches, the real
    ``train_epoch`` / ``collect`` / ``update_bn`` / ``evaluate``; per-iteration (lr, loss)."""
    tt = th_trainer.Trainer(cfg)
    pt = pd_trainer.Trainer(cfg)
    apply_break(pt.model, ctx.brk)
    load_torch_into_paddle(tt.model, pt.model, ctx.brk)
    pd_iters, th_iters = [], []
    for epoch in range(epochs):
        with patched(pt, "meter_class", recording_meter(pd_iters)):
            pd_row = pt.train_epoch(epoch)
        with patched(tt, "meter_class", recording_meter(th_iters)):
            th_row = tt.train_epoch(epoch)
        if schedules.should_collect(cfg, epoch):
            pt.collect()
            tt.collect()
        if on_epoch is not None:
            on_epoch(epoch, pt, tt, pd_row, th_row)
    return pt, tt, np.array(pd_iters), np.array(th_iters)


def train_cfg(ctx: Context, lr: float) -> dict:
    """The train step's run: VGG16 at 1/16 width, dropout 0, 2 epochs of the first 5,000
    images (80 iterations of 128), the average collected after each epoch; schedule original
    with swa_start 1: epoch 1 at ``lr``, epoch 2 at the recipe's swa_lr 0.01 (constant 0.01 by
    default; ``--train_lr 0.05`` is the recipe's two phases)."""
    return make_cfg(Global={"epochs": 2},
                    Arch={"model": "VGG16", "width": 0.0625, "dropout": 0.0},
                    Optimizer={"lr_init": lr},
                    SWA={"swa": True, "swa_start": 1, "swa_lr": 0.01},
                    Data={"data_path": ctx.data_path, "train_subset": 5000})


def step_train(ctx: Context) -> None:
    cfg = train_cfg(ctx, ctx.train_lr)
    t0 = time.time()
    pt, tt, pd_iters, th_iters = train_twins(ctx, cfg, cfg["Global"]["epochs"])
    train_s = time.time() - t0
    pt.test_loader, tt.test_loader = eval_loaders(cfg)
    res = {}
    for name, trainer in (("paddle", pt), ("torch", tt)):
        sgd = trainer.evaluate()
        trainer.update_bn()
        swa = trainer.evaluate(swa=True)
        res[name] = (sgd, swa, trainer.swa_n)
    pd_vals = {"loss_curve": pd_iters[:, 3], "lr_curve": pd_iters[:, 2],
               "sgd_test_acc": np.array([res["paddle"][0]["accuracy"]]),
               "swa_test_acc": np.array([res["paddle"][1]["accuracy"]])}
    th_vals = {"loss_curve": th_iters[:, 3], "lr_curve": th_iters[:, 2],
               "sgd_test_acc": np.array([res["torch"][0]["accuracy"]]),
               "swa_test_acc": np.array([res["torch"][1]["accuracy"]])}
    n_it = len(pd_iters)
    n_test = tt.test_loader.batch_sampler.batches.n
    lrs = (f"lr {ctx.train_lr:g} then 0.01" if ctx.train_lr != 0.01
           else "lr 0.01 = the recipe's swa_lr")
    record(ctx, "train", pd_vals, th_vals, [
        (f"per-iteration training loss, {n_it} iterations (2 epochs x "
         f"{cfg['Data']['train_subset']} images, VGG16 1/16 width, dropout 0, {lrs})",
         ["loss_curve"], T_TRAIN_LOSS),
        (f"final SGD and SWA (average of {res['paddle'][2]} epochs) test accuracy (%), "
         f"{n_test} images", ["sgd_test_acc", "swa_test_acc"], T_TRAIN_ACC),
        ("lr of every iteration, as the trainers used it", ["lr_curve"], T_LR),
    ])
    weights_max = max(diff_stats(a, b)[1] for a, b in zip(
        paddle_state_as_torch(pt.model).values(), torch_state(tt.model).values(), strict=True))
    loss_diff = np.abs(pd_iters[:, 3] - th_iters[:, 3])
    ctx.note("train", f"{train_s:.0f} s of training; Paddle SGD {res['paddle'][0]['accuracy']:.2f}"
             f" %, SWA {res['paddle'][1]['accuracy']:.2f} %; torch SGD "
             f"{res['torch'][0]['accuracy']:.2f} %, SWA {res['torch'][1]['accuracy']:.2f} %; "
             f"loss {pd_iters[0, 3]:.4f} -> {pd_iters[-1, 3]:.4f}; loss diff > 1e-5 from "
             f"iteration "
             f"{int(np.argmax(loss_diff > 1e-5)) if (loss_diff > 1e-5).any() else '-'}; final "
             f"weights max abs diff {weights_max:.3g}")
    if ctx.control:
        chaos_control(ctx, cfg, pd_iters[:, 3])


def chaos_control(ctx: Context, cfg: dict, twin_curve: np.ndarray) -> None:
    """The Paddle twin against itself, every init weight nudged by one float32 ulp (up or down,
    seeded): how far the training dynamics alone carry a rounding-size difference."""
    sink = []
    trainer = pd_trainer.Trainer(cfg)
    th_init = th_trainer.Trainer(cfg).model  # the init the twins started from
    state = to_paddle_weights(torch_state(th_init), "none")
    rng = np.random.default_rng([ctx.seed, 7])
    for key, w in state.items():
        direction = np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf).astype(w.dtype)
        state[key] = np.nextafter(w, direction)
    pd_ckpt.load_weights(trainer.model, pd_ckpt.from_numpy(state), "<nudged init>")
    for epoch in range(cfg["Global"]["epochs"]):
        with patched(pd_trainer, "IterMeter", recording_meter(sink)):
            trainer.train_epoch(epoch)
    curve = np.array(sink)[:, 3]
    mean, mx = diff_stats(curve, twin_curve)
    ctx.rows.append(Row("train", "control: Paddle vs Paddle with every init weight nudged by "
                        "1 ulp, per-iteration loss", mean, mx, T_TRAIN_LOSS, mean <= T_TRAIN_LOSS,
                        "", False))


STEP_FUNCS: dict[str, Callable[[Context], None]] = {
    "forward": step_forward, "loss": step_loss, "data": step_data, "lr": step_lr,
    "backward": step_backward, "swa": step_swa, "ema": step_ema, "metric": step_metric,
    "train": step_train,
}


# ------------------------------------------------------------------------------- long mode


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
    fig.savefig(ctx.out / "train_align_curves.png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--data_path", default=None,
                        help="CIFAR-10 archive or folder (default: the project's cache/download)")
    parser.add_argument("--out", default=str(DIFF_DIR), help="where the .npy/.log files go")
    parser.add_argument("--break", dest="brk", default="none", choices=BREAKS,
                        help="build a deliberately broken Paddle twin (demonstrates localisation)")
    parser.add_argument("--backward_width", type=float, default=0.125,
                        help="VGG16 width of the backward step (1/8: its gradients fit in the "
                        "committed .npy files; 1 works, see README)")
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
                  control=args.control)
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
            run_long(ctx, args.long_width, args.long_epochs, args.long_subset)
            times["long"] = time.time() - t0
    times["total"] = time.time() - t_all
    print()
    print(summary(ctx.rows, times))
    failed = sorted({r.step for r in ctx.rows if r.gate and not r.passed})
    for r in ctx.rows:
        if r.gate and not r.passed and r.note:
            print(f"{r.step} / {r.compared}: {r.note}")
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

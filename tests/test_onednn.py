"""swa_paddle.onednn: oneDNN convolutions from eager mode equal paddle.nn.Conv2D."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch
from paddle.base import core

from conftest import ROOT, tiny_config
from swa_paddle import models as pd_models
from swa_paddle import onednn
from swa_recipe import runtime
from swa_recipe.config import needs_legacy_ir
from swa_torch import models as th_models

pytestmark = pytest.mark.skipif(not core.is_compiled_with_mkldnn(), reason="no oneDNN in Paddle")


def pair(cin: int, cout: int, seed: int = 0, fast: bool = True, **kw
         ) -> tuple[paddle.nn.Conv2D, onednn.Conv2D]:
    paddle.seed(seed)
    ref = paddle.nn.Conv2D(cin, cout, 3, padding=1, **kw)
    ours = onednn.Conv2D(cin, cout, 3, padding=1, **kw)
    ours.set_state_dict(ref.state_dict())
    assert onednn.enable(ours, fast) == fast, "tests run with tune_cpu_env: oneDNN is available"
    return ref, ours


def forward_backward(layer: paddle.nn.Layer, x: np.ndarray, grad: np.ndarray) -> list[np.ndarray]:
    xt = paddle.to_tensor(x, stop_gradient=False)
    y = layer(xt)
    paddle.autograd.backward([y], [paddle.to_tensor(grad)])
    out = [y.numpy(), xt.grad.numpy(), layer.weight.grad.numpy()]
    if layer.bias is not None:
        out.append(layer.bias.grad.numpy())
    layer.clear_gradients()
    return out


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("cin,cout,size,batch,bias", [
    (3, 8, 32, 4, True), (16, 32, 8, 5, True), (32, 32, 2, 3, True), (8, 16, 4, 2, False)])
def test_forward_and_gradients_equal_paddle_conv(cin, cout, size, batch, bias):
    ref, ours = pair(cin, cout, bias_attr=None if bias else False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size), dtype=np.float32)
    g = rng.standard_normal((batch, cout, size, size), dtype=np.float32)
    for a, b in zip(forward_backward(ours, x, g), forward_backward(ref, x, g), strict=True):
        assert relative(a, b) < 1e-5
    assert onednn._static_conv.cache_info().currsize > 0  # the oneDNN path ran


def test_new_batch_size_and_no_grad():
    ref, ours = pair(4, 8)
    for batch in (6, 1, 6):
        x = paddle.randn([batch, 4, 8, 8])
        with paddle.no_grad():
            assert relative(ours(x).numpy(), ref(x).numpy()) < 1e-5


def test_deepcopy_uses_its_own_weights():
    """AveragedModel deep-copies the network: the copy must not run the original's weights."""
    _, ours = pair(4, 8)
    twin = copy.deepcopy(ours)
    twin.weight.set_value(paddle.zeros_like(twin.weight))
    twin.bias.set_value(paddle.full_like(twin.bias, 3.0))
    x = paddle.randn([2, 4, 8, 8])
    np.testing.assert_array_equal(twin(x).numpy(), np.full([2, 8, 8, 8], 3.0, np.float32))
    assert np.abs(ours(x).numpy() - 3.0).max() > 0.1


def test_bias_gradient_is_the_sum_over_images_and_pixels():
    y = paddle.randn([3, 5, 4, 4])  # stop_gradient: BiasAdd must return None for it
    b = paddle.randn([5])
    b.stop_gradient = False
    g = paddle.randn([3, 5, 4, 4])
    out = onednn.BiasAdd.apply(y, b)
    paddle.autograd.backward([out], [g])
    np.testing.assert_allclose(out.numpy(), y.numpy() + b.numpy()[None, :, None, None])
    np.testing.assert_allclose(b.grad.numpy(), g.numpy().sum((0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_disabled_is_exactly_paddle_conv():
    ref, ours = pair(4, 8, fast=False)
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8), dtype=np.float32)
    g = np.ones((2, 8, 8, 8), np.float32)
    for a, b in zip(forward_backward(ours, x, g), forward_backward(ref, x, g), strict=True):
        np.testing.assert_array_equal(a, b)


def test_refuses_layouts_it_does_not_run():
    with pytest.raises(ValueError, match="NCHW"):
        onednn.Conv2D(4, 8, 3, data_format="NHWC")


def test_build_model_follows_the_config_per_model():
    """``Global.onednn`` sets the kernels of the model built, never of one built before."""
    cfg = tiny_config("unused.tar.gz")
    fast = pd_models.build_model(cfg)
    assert isinstance(fast.features[0], onednn.Conv2D) and fast.features[0].use_onednn
    cfg["Global"]["onednn"] = False
    native = pd_models.build_model(cfg)
    assert not native.features[0].use_onednn and fast.features[0].use_onednn


def test_torch_models_run_their_own_kernels():
    """torch's oneDNN switch is process-wide: a model built with ``Global.onednn false`` turns
    it off for its own forward passes (and its step's backward) only, and every other model
    keeps oneDNN; an exception inside the forward still restores the switch."""
    cfg = tiny_config("unused.tar.gz")
    cfg["Global"]["onednn"] = False
    native = th_models.build_model(cfg)
    cfg["Global"]["onednn"] = True
    fast = th_models.build_model(cfg)
    assert torch.backends.mkldnn.enabled
    seen = []
    for model in (native, fast):
        model.features[0].register_forward_hook(
            lambda *_: seen.append(torch.backends.mkldnn.enabled))
        model(torch.randn(2, 3, 32, 32))
    assert seen == [False, True] and torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError):
        native(torch.randn(2, 5, 32, 32))  # wrong channel count: raises inside the forward
    assert torch.backends.mkldnn.enabled
    with th_models.kernels(native):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled


def test_torch_step_runs_its_backward_with_the_models_kernels(lite_archive):
    """torch picks a convolution's backward kernels when the backward runs: the twin's step
    runs it under the model's switch."""
    from swa_torch.trainer import Trainer

    cfg = tiny_config(str(lite_archive))
    cfg["Global"]["onednn"] = False
    trainer = Trainer(cfg)
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []
    def watch_backward(module, args, out) -> None:  # runs before the conv's backward does
        out.grad_fn.register_prehook(lambda *_: seen.append(torch.backends.mkldnn.enabled))

    convs[1].register_forward_hook(watch_backward)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    trainer.step(x, y, None, 0.25)
    assert seen == [False] and torch.backends.mkldnn.enabled


def test_vgg_logits_equal_with_and_without_onednn():
    cfg = tiny_config("unused.tar.gz")
    x = paddle.randn([4, 3, 32, 32])
    logits = []
    for on in (False, True):
        cfg["Global"]["onednn"] = on
        paddle.seed(0)
        model = pd_models.build_model(cfg)
        model.eval()
        with paddle.no_grad():
            logits.append(model(x).numpy())
    assert relative(logits[1], logits[0]) < 1e-5


def test_pir_process_falls_back_to_paddle_conv():
    """Without the legacy IR (a user who set FLAGS_enable_pir_api=1) the model still runs."""
    code = ("from conftest import tiny_config; import paddle;"
            "from swa_paddle import models, onednn;"
            "m = models.build_model(tiny_config('unused.tar.gz')); print(m.features[0].use_onednn,"
            " tuple(m(paddle.randn([2, 3, 32, 32])).shape))")
    env = {**os.environ, "FLAGS_enable_pir_api": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False (2, 10)"


def test_tune_cpu_env_sets_only_what_is_unset(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "AuthenticAMD")
    env: dict[str, str] = {}
    applied = runtime.tune_cpu_env(env)
    assert env == applied and applied["FLAGS_enable_pir_api"] == "0"
    assert applied["MKL_DEBUG_CPU_TYPE"] == "5" and int(applied["OMP_NUM_THREADS"]) >= 1
    assert applied["MALLOC_ARENA_MAX"] == "2"
    user = {"OMP_NUM_THREADS": "7", "FLAGS_enable_pir_api": "1", "MKL_DEBUG_CPU_TYPE": "4",
            "MALLOC_ARENA_MAX": "8"}
    assert runtime.tune_cpu_env(dict(user)) == {}
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    assert "MKL_DEBUG_CPU_TYPE" not in runtime.tune_cpu_env({})


def test_limit_malloc_arenas_reaches_glibc():
    assert runtime.limit_malloc_arenas(2) == bool(runtime.ctypes.util.find_library("c"))


@pytest.mark.skipif(not onednn.available(), reason="no oneDNN in this Paddle build")
@pytest.mark.parametrize("model, depth", [("PreResNet164", 47), ("WideResNet28x10", 10)])
def test_residual_model_trains_after_a_forward_without_gradients(archive, model, depth):
    """A shape first run without gradients (evaluation, update_bn), then trained: the
    shortcut convolution fed by another convolution gets oneDNN's layout in its backward
    (one static program per gradient mode), and the gradients equal Paddle's own kernels'."""
    cfg = tiny_config(archive, Arch={"model": model, "depth": depth, "width": 0.125},
                      Global={"seed": 5})
    x = paddle.to_tensor(np.random.default_rng(3).standard_normal((6, 3, 32, 32), np.float32))
    grads = []
    for fast in (True, False):
        cfg["Global"]["onednn"] = fast
        paddle.seed(0)
        net = pd_models.build_model(cfg)
        with paddle.no_grad():
            net(x)
        net(x).sum().backward()
        grads.append({k: p.grad.numpy() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        scale = float(np.abs(grads[1][k]).mean()) or 1.0
        # + 1e-6: biases before a BatchNorm have a zero gradient (rounding noise only)
        assert float(np.abs(grads[0][k] - grads[1][k]).mean()) <= 1e-4 * scale + 1e-6, k


def test_legacy_ir_only_where_onednn_convolutions_run():
    """``FLAGS_enable_pir_api=0`` only for Paddle on the CPU with ``Global.onednn`` true."""
    assert needs_legacy_ir({}) and needs_legacy_ir({"device": "cpu"})
    for settings in ({"device": "gpu"}, {"onednn": False}, {"framework": "torch"}):
        assert not needs_legacy_ir(settings)
    env: dict[str, str] = {}
    assert "FLAGS_enable_pir_api" not in runtime.tune_cpu_env(env, legacy_ir=False)
    assert "FLAGS_enable_pir_api" not in env


def test_training_settings_are_known_before_the_import():
    """``train.py`` decides the IR from the whole config, or with ``--resume PATH`` (whose
    config only Paddle can read) from the command line."""
    from swa_apps.cli import settings_before_import, train_parser

    args = train_parser().parse_args(["--config", str(ROOT / "configs" / "lite.yaml"),
                                      "-o", "Global.onednn=false"])
    assert settings_before_import(args)["onednn"] is False
    args = train_parser().parse_args(["--resume", "run/checkpoint-3.pdparams",
                                      "-o", "Global.device=gpu"])
    settings = settings_before_import(args)
    assert settings["device"] == "gpu" and "onednn" not in settings  # no checkpoint was read


@pytest.mark.parametrize("onednn", [True, False])
def test_a_run_without_onednn_keeps_paddles_own_ir(tmp_path, lite_archive, onednn):
    """The flag is set (and logged with what else was set) only for oneDNN runs."""
    unset = ("FLAGS_enable_pir_api", "OMP_NUM_THREADS")  # conftest set them for this process
    env = {k: v for k, v in os.environ.items() if k not in unset}
    run = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                    str(ROOT / "configs" / "lite.yaml"), "--data_path", str(lite_archive),
                    "--dir", str(run), "-o", "Global.epochs=1", "-o", "SWA.swa_start=1",
                    "-o", "Data.train_subset=128", "-o", "Data.batch_size=64",
                    "-o", "Data.test_subset=64", "-o", f"Global.onednn={str(onednn).lower()}"],
                   env=env, capture_output=True, text=True, check=True, timeout=600)
    applied = next(line for line in (run / "train.log").read_text().splitlines()
                   if "CPU settings applied" in line)
    assert ("FLAGS_enable_pir_api=0" in applied) is onednn

"""``swa_paddle.callbacks.SWA`` in ``paddle.Model.fit`` against a hand-written loop with
``AveragedModel`` + ``update_bn`` on the same batches."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import ROOT
from swa_paddle import models
from swa_paddle.callbacks import SWA
from swa_paddle.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from swa_recipe import schedules

EPOCHS, LR, SWA_LR, MOMENTUM = 4, 0.05, 0.01, 0.9


def network(batch_norm: bool = True) -> paddle.nn.Layer:
    paddle.seed(3)
    return models.VGG(depth=16, batch_norm=batch_norm, width=0.0625, dropout=0.0)


@pytest.fixture(scope="module")
def loader() -> paddle.io.DataLoader:
    """64 images in 4 batches, fixed order: both loops see the same batches."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, (64, 1)).astype(np.int64)
    data = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    return paddle.io.DataLoader(data, batch_size=16, shuffle=False)


def optimizer(net: paddle.nn.Layer) -> paddle.optimizer.Momentum:
    return paddle.optimizer.Momentum(learning_rate=LR, momentum=MOMENTUM,
                                     parameters=net.parameters(), weight_decay=5e-4)


def fit_with_callback(net: paddle.nn.Layer, loader, **kwargs) -> SWA:
    callback = SWA(bn_loader=loader, **kwargs)
    model = paddle.Model(net)
    model.prepare(optimizer(net), paddle.nn.CrossEntropyLoss())
    model.fit(loader, epochs=EPOCHS, verbose=0, callbacks=[callback])
    return callback


def hand_loop(net: paddle.nn.Layer, loader, swa_start: int, swa_c_epochs: int, schedule: str,
              avg: str = "swa", ema_decay: float = 0.9) -> tuple[AveragedModel, list[float]]:
    """What the callback promises, written out: the schedule's lr before each step, the average
    at each collection epoch (SWA) or after each step (EMA), update_bn at the end (SWA)."""
    opt, iters = optimizer(net), len(loader)
    cfg = {"Global": {"epochs": EPOCHS}, "Optimizer": {"lr_init": LR, "schedule": schedule},
           "SWA": {"swa": True, "swa_start": swa_start, "swa_lr": SWA_LR,
                   "swa_c_epochs": swa_c_epochs, "anneal_epochs": 2, "anneal_strategy": "cos"}}
    ema = avg == "ema"
    averaged = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
                if ema else AveragedModel(net))
    lrs = []
    for epoch in range(EPOCHS):
        net.train()
        for it, (x, y) in enumerate(loader):
            lrs.append(schedules.learning_rate(cfg, epoch, it, iters))
            opt.set_lr(lrs[-1])
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            if ema and epoch + 1 >= swa_start:
                averaged.update_parameters(net)
        if not ema and epoch + 1 >= swa_start and (epoch + 1 - swa_start) % swa_c_epochs == 0:
            averaged.update_parameters(net)
    if not ema:
        update_bn(loader, averaged.module)
    return averaged, lrs


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy()).max()) for k in a)


@pytest.mark.parametrize("schedule,swa_c_epochs,avg", [
    ("original", 1, "swa"), ("cyclic", 2, "swa"), ("swalr", 1, "swa"), ("original", 1, "ema")])
def test_fit_with_callback_equals_hand_written_loop(loader, schedule, swa_c_epochs, avg):
    net = network()
    reference = copy.deepcopy(net)
    lrs = []

    class RecordLr(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            lrs.append(self.model._optimizer.get_lr())

    callback = SWA(swa_start=2, swa_lr=SWA_LR, swa_c_epochs=swa_c_epochs, schedule=schedule,
                   anneal_epochs=2, avg=avg, ema_decay=0.9, bn_loader=loader, swap=False)
    model = paddle.Model(net)
    model.prepare(optimizer(net), paddle.nn.CrossEntropyLoss())
    model.fit(loader, epochs=EPOCHS, verbose=0, callbacks=[callback, RecordLr()])
    expected, expected_lrs = hand_loop(reference, loader, 2, swa_c_epochs, schedule, avg)

    np.testing.assert_allclose(lrs, expected_lrs, rtol=0, atol=1e-12)
    assert len(set(np.round(lrs, 9))) > 1  # the schedule moved the rate
    assert int(callback.averaged_model.n_averaged) == int(expected.n_averaged) > 1
    got, want = callback.averaged_model.module.state_dict(), expected.module.state_dict()
    assert any(k.endswith("_variance") for k in got)
    diff = max_diff(got, want)
    print(f"{schedule}/{avg}: averaged weights and BN statistics max abs diff {diff:.2e}")
    assert diff <= 1e-6
    # swap=False: the network keeps its own (last SGD) weights, which differ from the average
    assert max_diff(net.state_dict(), reference.state_dict()) <= 1e-6
    assert max_diff(net.state_dict(), want) > 1e-4


def test_swap_loads_the_average_and_saves_it(loader, tmp_path):
    net = network()
    path = tmp_path / "swa.pdparams"
    callback = fit_with_callback(net, loader, swa_start=3, swa_lr=SWA_LR, save_path=str(path))
    averaged = callback.averaged_model.module.state_dict()
    assert max_diff(net.state_dict(), averaged) == 0
    saved = paddle.load(str(path))
    assert max_diff({k: paddle.to_tensor(v) for k, v in saved.items()}, averaged) == 0
    assert int(callback.averaged_model.n_averaged) == 2


def test_keras_constant_schedule(loader):
    """keras-swa's ``constant``: flat to half of the 0-based start epoch, linear to swa_lr at
    90 % of it, then swa_lr (swa_start 11 = keras start_epoch 11, 0-based 10)."""
    lr = [schedules.keras_constant_lr(e, 0.1, 11, 0.01) for e in (0, 5, 7, 9, 10, 30)]
    np.testing.assert_allclose(lr, [0.1, 0.1, 0.055, 0.01, 0.01, 0.01], rtol=1e-12)
    lrs = []

    class RecordLr(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            lrs.append(self.model._optimizer.get_lr())

    net = network(batch_norm=False)
    model = paddle.Model(net)
    model.prepare(optimizer(net), paddle.nn.CrossEntropyLoss())
    model.fit(loader, epochs=EPOCHS, verbose=0,
              callbacks=[SWA(swa_start=3, schedule="constant"), RecordLr()])
    swa_lr = 0.1 * LR  # keras' swa_lr "auto"
    expected = [schedules.keras_constant_lr(e, LR, 3, swa_lr) for e in range(EPOCHS)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[0] == LR and lrs[-1] == pytest.approx(swa_lr)


def test_batch_norm_without_loader_is_refused(loader):
    net = network()
    model = paddle.Model(net)
    model.prepare(optimizer(net), paddle.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="bn_loader"):
        model.fit(loader, epochs=1, verbose=0, callbacks=[SWA(swa_start=1)])


def test_no_epoch_reached_swa_start_keeps_the_network(loader):
    net = network(batch_norm=False)
    callback = fit_with_callback(net, loader, swa_start=EPOCHS + 1, schedule=None)
    assert int(callback.averaged_model.n_averaged) == 0
    assert max_diff(net.state_dict(), callback.averaged_model.module.state_dict()) > 1e-4


@pytest.mark.parametrize("kwargs,match", [({"schedule": "step"}, "schedule"),
                                          ({"avg": "polyak"}, "avg"),
                                          ({"schedule": "constant", "swa_start": 1}, ">= 2")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SWA(**{"swa_start": 2, **kwargs})


def test_example_script_runs(lite_archive, tmp_path):
    out = tmp_path / "swa.pdparams"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "swa_hapi_cifar10.py"),
                           "--data_path", str(lite_archive), "--epochs", "2", "--swa_start", "1",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "average of 2 epochs" in proc.stdout and out.is_file()


def test_readme_example_runs(tmp_path):
    """The callback example of docs/library.md runs as printed, and prints nothing on stderr
    (Paddle's warnings that ask nothing of the user are filtered by ``import swa_paddle``)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "library.md").read_text(), re.S)
    code = next(b for b in blocks if "from swa_paddle.callbacks import SWA" in b)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("5 epochs averaged") and (tmp_path / "swa.pdparams").is_file()
    assert proc.stderr == ""

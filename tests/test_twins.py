"""The twins side by side: byte-identical batches, and the same SGD steps from the same init."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as pF
import pytest
import torch
import torch.nn.functional as tF

from conftest import tiny_config
from swa_apps.convert import convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import data as pd_data
from swa_paddle import models as pd_models
from swa_torch import checkpoint as th_ckpt
from swa_torch import data as th_data
from swa_torch import models as th_models

# ---------------------------------------------------------------- data


def first_batches(loader, epoch: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    loader.batch_sampler.set_epoch(epoch)
    out = []
    for x, y in loader:
        out.append((np.asarray(x.numpy()), np.asarray(y.numpy())))
        if len(out) == count:
            break
    return out


@pytest.fixture(scope="module")
def loaders(archive):
    cfg = tiny_config(archive)
    return pd_data.build_loaders(cfg), th_data.build_loaders(cfg)


def assert_identical(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    (xa, ya), (xb, yb) = a, b
    assert xa.dtype == xb.dtype == np.float32
    assert xa.shape == xb.shape and ya.shape == yb.shape
    assert np.array_equal(xa, xb)
    assert np.array_equal(ya.astype(np.int64), yb.astype(np.int64))
    assert xa.tobytes() == xb.tobytes()


@pytest.mark.parametrize("epoch", [0, 3])
def test_train_batches_identical(loaders, epoch):
    (pd_train, _), (th_train, _) = loaders
    pd_batches = first_batches(pd_train, epoch, 2)
    th_batches = first_batches(th_train, epoch, 2)
    assert len(pd_batches) == len(th_batches) == 2
    assert pd_batches[0][0].shape == (32, 3, 32, 32)
    for a, b in zip(pd_batches, th_batches, strict=True):
        assert_identical(a, b)


def test_test_batch_identical(loaders):
    (_, pd_test), (_, th_test) = loaders
    for epoch in (0, 3):
        a, b = first_batches(pd_test, epoch, 1)[0], first_batches(th_test, epoch, 1)[0]
        assert_identical(a, b)
    # test batches are neither shuffled nor augmented: the same in every epoch
    assert_identical(first_batches(pd_test, 0, 1)[0], first_batches(pd_test, 5, 1)[0])


def test_epochs_differ(loaders):
    (pd_train, _), (th_train, _) = loaders
    for loader in (pd_train, th_train):
        e0, e3 = first_batches(loader, 0, 1)[0], first_batches(loader, 3, 1)[0]
        assert not np.array_equal(e0[0], e3[0])
        assert not np.array_equal(e0[1], e3[1])
        again = first_batches(loader, 0, 1)[0]  # and epoch 0 is reproducible
        assert_identical(e0, again)


def test_short_last_batch_identical(loaders):
    """100 images in batches of 32: the fourth batch holds 4, in both twins."""
    (pd_train, _), (th_train, _) = loaders
    pd_batches, th_batches = first_batches(pd_train, 1, 4), first_batches(th_train, 1, 4)
    assert [len(y) for _, y in pd_batches] == [32, 32, 32, 4]
    assert_identical(pd_batches[-1], th_batches[-1])
    # every image of the epoch once
    labels = np.concatenate([y for _, y in pd_batches])
    assert len(labels) == 100


def test_torch_workers_give_the_same_batches(archive):
    cfg0 = tiny_config(archive)
    cfg2 = tiny_config(archive, Data={"num_workers": 2})
    a = first_batches(pd_data.build_loaders(cfg0)[0], 2, 2)
    b = first_batches(th_data.build_loaders(cfg2)[0], 2, 2)
    for x, y in zip(a, b, strict=True):
        assert_identical(x, y)


# ---------------------------------------------------------------- training steps

LR, MOMENTUM, WD = 0.05, 0.9, 5e-4


def paddle_as_torch(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return convert_state_dict(pd_ckpt.to_numpy(model.state_dict()), "paddle2torch")


def max_weight_diff(th_model: torch.nn.Module, pd_model: paddle.nn.Layer) -> float:
    th = th_ckpt.to_numpy(th_model.state_dict())
    pd = paddle_as_torch(pd_model)
    assert set(th) == set(pd)
    return max(float(np.abs(th[k] - pd[k]).max()) for k in th)


@pytest.fixture(scope="module")
def twin_models():
    torch.manual_seed(0)
    th_model = th_models.VGG(depth=16, width=0.0625, dropout=0.0)
    paddle.seed(0)
    pd_model = pd_models.VGG(depth=16, width=0.0625, dropout=0.0)
    state = convert_state_dict(th_ckpt.to_numpy(th_model.state_dict()), "torch2paddle")
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(state), "<test>")
    return th_model, pd_model


def test_sgd_steps_match(loaders, twin_models):
    (pd_train, _), (th_train, _) = loaders
    th_model, pd_model = twin_models
    th_model.train()
    pd_model.train()
    th_opt = torch.optim.SGD(th_model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    pd_opt = paddle.optimizer.Momentum(learning_rate=LR, momentum=MOMENTUM, weight_decay=WD,
                                       parameters=pd_model.parameters())
    assert max_weight_diff(th_model, pd_model) == 0.0
    init = {k: v.copy() for k, v in th_ckpt.to_numpy(th_model.state_dict()).items()}

    pd_train.batch_sampler.set_epoch(0)
    th_train.batch_sampler.set_epoch(0)
    loss_diffs, weight_diffs = [], []
    for step, ((px, py), (tx, ty)) in enumerate(zip(pd_train, th_train, strict=True)):
        if step == 4:
            break
        assert np.array_equal(px.numpy(), tx.numpy())
        th_loss = tF.cross_entropy(th_model(tx), ty)
        th_opt.zero_grad()
        th_loss.backward()
        th_opt.step()
        pd_loss = pF.cross_entropy(pd_model(px), py)
        pd_opt.clear_grad()
        pd_loss.backward()
        pd_opt.step()
        loss_diffs.append(abs(float(th_loss) - float(pd_loss)))
        weight_diffs.append(max_weight_diff(th_model, pd_model))
    print(f"SGD steps: loss diffs {loss_diffs}, weight diffs {weight_diffs}")
    assert len(loss_diffs) == 4
    assert loss_diffs[0] <= 1e-6
    assert weight_diffs[0] <= 1e-6
    assert max(loss_diffs) <= 1e-5
    assert max(weight_diffs) <= 1e-5
    # the weights really moved (by far more than the tolerance)
    after = th_ckpt.to_numpy(th_model.state_dict())
    moved = max(float(np.abs(after[k] - init[k]).max()) for k in init)
    assert moved > 1e-3


def test_step_without_weight_decay_differs():
    """Sanity check: a Paddle step without weight decay does not match torch's with it."""
    torch.manual_seed(1)
    th_model = th_models.VGG(depth=16, width=0.0625, dropout=0.0)
    pd_model = pd_models.VGG(depth=16, width=0.0625, dropout=0.0)
    state = convert_state_dict(th_ckpt.to_numpy(th_model.state_dict()), "torch2paddle")
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(state), "<test>")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.arange(8, dtype=np.int64)
    th_opt = torch.optim.SGD(th_model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    pd_opt = paddle.optimizer.Momentum(learning_rate=LR, momentum=MOMENTUM,
                                       parameters=pd_model.parameters())
    tF.cross_entropy(th_model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    th_opt.step()
    pF.cross_entropy(pd_model(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
    pd_opt.step()
    assert max_weight_diff(th_model, pd_model) > 1e-5


def bf16_epoch(archive, precision: str) -> dict:
    from swa_torch.trainer import Trainer

    trainer = Trainer(tiny_config(archive, Global={"framework": "torch", "precision": precision}))
    trainer.train_epoch(0)
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_torch_bf16_option_trains_in_bf16_and_keeps_float32_weights(archive):
    fp32 = bf16_epoch(archive, "fp32")
    bf16 = bf16_epoch(archive, "bf16")
    assert all(v.dtype == torch.float32 for v in bf16.values())
    diffs = [float((fp32[k] - bf16[k]).abs().max()) for k in fp32 if fp32[k].is_floating_point()]
    assert 0 < max(diffs) < 0.1  # bf16 changes the numerics (explicit option, off by default)


# ----------------------------------------------------------------- one learning-rate source


def test_trainers_take_every_schedule_from_the_closed_form(archive):
    """Both twins' optimizers hold ``schedules.learning_rate`` at every step, SWALR's anneal
    included (the library ``SWALR`` classes are compared with torch's in test_schedules)."""
    from swa_paddle.trainer import Trainer as PaddleTrainer
    from swa_recipe.schedules import learning_rate
    from swa_torch.trainer import Trainer as TorchTrainer

    cfg = tiny_config(archive, Global={"epochs": 6}, Optimizer={"schedule": "swalr"},
                      SWA={"swa_start": 2, "anneal_epochs": 3})
    pt, tt = PaddleTrainer(cfg), TorchTrainer(cfg)
    seen = []
    for epoch in range(6):
        want = learning_rate(cfg, epoch, 0, pt.iters)
        pt.set_lr(pt.learning_rate(epoch, 0))
        tt.set_lr(tt.learning_rate(epoch, 0))
        assert pt.optimizer.get_lr() == want == tt.optimizer.param_groups[0]["lr"]
        seen.append(want)
    assert len(set(seen)) == 4  # lr_init, two epochs of the anneal, then swa_lr


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_checkpoints_with_the_old_scheduler_and_rng_entries_still_resume(archive, tmp_path,
                                                                         framework):
    """Earlier code wrote a stepped SWALR's state and an ``rng`` note into each checkpoint;
    resuming such a file ignores both and continues bit for bit."""
    from swa_apps.twins import import_twin
    from swa_recipe.checkpoint import EXTENSIONS
    from swa_recipe.loop import fit

    twin, ext = import_twin(framework), EXTENSIONS[framework]
    sections = {"Optimizer": {"schedule": "swalr"}, "SWA": {"swa_start": 2, "anneal_epochs": 2}}

    def run(out, **global_):
        cfg = tiny_config(archive, **sections, Global={"epochs": 3, "dir": str(out),
                                                       "framework": framework, **global_})
        fit(twin.trainer.Trainer(cfg), cfg)
        return twin.checkpoint.load(str(out / f"checkpoint-3{ext}"))

    straight = run(tmp_path / "a")
    old = tmp_path / "a" / f"checkpoint-2{ext}"
    state = twin.checkpoint.load(str(old))
    state["scheduler"] = {"last_epoch": 1, "base_lr": 0.05, "_step_count": 2}
    state["rng"] = {"seed": 1, "dropout": "swa_recipe.dropout.keep_masks(seed, epoch, index)"}
    twin.checkpoint.save(state, str(old))
    resumed = run(tmp_path / "b", resume=str(old))
    for key, value in straight["state_dict"].items():
        assert np.array_equal(np.asarray(value), np.asarray(resumed["state_dict"][key])), key


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_dropout_that_cannot_be_drawn_per_sample_is_refused_in_one_line(archive, framework):
    """WideResNet's dropout would draw from the framework's generator (no bit-exact resume,
    twins with different masks): training it refuses, before building anything."""
    from swa_apps.twins import import_twin
    from swa_recipe.config import ConfigError

    cfg = tiny_config(archive, Arch={"model": "WideResNet28x10", "depth": 10, "dropout": 0.3},
                      Global={"framework": framework})
    with pytest.raises(ConfigError, match=r"^Arch\.dropout=0\.3: WideResNet28x10's dropout") as e:
        import_twin(framework).trainer.Trainer(cfg)
    assert "\n" not in str(e.value)

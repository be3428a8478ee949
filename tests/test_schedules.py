"""Learning-rate schedules (pinned values, torch's SWALR, the Paddle SWALR) and the epoch plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import ROOT
from swa_recipe.config import default_config, load_yaml, merge, validate
from swa_recipe.schedules import (
    anneal,
    cyclic_lr,
    cyclic_start,
    learning_rate,
    original_lr,
    should_collect,
    should_eval,
    should_save,
    swalr_lr,
    swalr_steps,
)

LR, SWA_LR, SWA_START, EPOCHS = 0.05, 0.01, 161, 200


def config(**sections) -> dict:
    return validate(merge(default_config(), sections, "test"))


def paper() -> dict:
    return load_yaml(str(ROOT / "configs" / "vgg16_swa_cifar10.yaml"))


def swa_original(epoch: int) -> float:
    return original_lr(epoch, LR, EPOCHS, True, SWA_START, SWA_LR)


# ------------------------------------------------------------------------------ original


def test_original_lr_with_swa_pinned():
    assert swa_original(0) == 0.05
    assert swa_original(80) == 0.05  # t = 80/161 < 0.5
    t = 100 / 161
    factor = 1 - (1 - 0.2) * (t - 0.5) / 0.4
    assert swa_original(100) == pytest.approx(0.05 * factor, abs=1e-15)
    assert swa_original(100) == pytest.approx(0.0378881987577640, abs=1e-12)
    assert swa_original(144) > 0.01  # t = 0.894
    for epoch in (145, 160, 161, 199):  # t > 0.9
        assert swa_original(epoch) == pytest.approx(0.01, abs=1e-15)


def test_original_lr_with_swa_decreases_linearly_between_50_and_90_percent():
    lrs = [swa_original(e) for e in range(81, 145)]
    assert (np.diff(lrs) < 0).all()
    steps = np.diff(lrs)
    assert np.allclose(steps, -0.05 * 0.8 / 0.4 / 161, atol=1e-15)


def test_original_lr_without_swa_pinned():
    def lr(epoch):
        return original_lr(epoch, LR, EPOCHS, False, SWA_START, SWA_LR)

    assert lr(0) == 0.05 and lr(100) == 0.05  # t = 0.5
    assert lr(140) == pytest.approx(0.05 * (1 - 0.99 * 0.5), abs=1e-15)  # t = 0.7
    assert lr(190) == pytest.approx(0.0005, abs=1e-15)  # t = 0.95: 0.01 * lr_init
    assert lr(199) == pytest.approx(0.0005, abs=1e-15)


def test_learning_rate_uses_the_original_schedule_by_default():
    cfg = paper()
    for epoch in (0, 100, 150, 199):
        for it in (0, 77):
            assert learning_rate(cfg, epoch, it, 391) == swa_original(epoch)


# -------------------------------------------------------------------------------- cyclic


def test_cyclic_lr_one_epoch_cycles():
    iters = 10
    assert cyclic_start(SWA_START, 1) == 160
    for epoch in (160, 161, 199):
        lrs = [cyclic_lr(epoch, it, iters, LR, EPOCHS, SWA_START, SWA_LR, 1)
               for it in range(iters)]
        assert lrs[0] == pytest.approx(0.9 * 0.05 + 0.1 * 0.01, abs=1e-15)  # near lr_init
        assert lrs[-1] == SWA_LR
        assert np.allclose(np.diff(lrs), -(0.05 - 0.01) / iters, atol=1e-15)


def test_cyclic_lr_before_cycles_is_original():
    for c in (1, 2, 3):
        for epoch in list(range(0, cyclic_start(SWA_START, c))):
            for it in (0, 9):
                assert cyclic_lr(epoch, it, 10, LR, EPOCHS, SWA_START, SWA_LR, c) == \
                    swa_original(epoch)


def test_cyclic_lr_two_epoch_cycles_end_on_collection_epochs():
    iters = 8
    cfg = config(SWA={"swa": True, "swa_c_epochs": 2}, Optimizer={"schedule": "cyclic"})
    assert cyclic_start(SWA_START, 2) == 159
    collected = [e for e in range(EPOCHS) if should_collect(cfg, e)]
    assert collected[:3] == [160, 162, 164]
    for epoch in range(159, EPOCHS):
        lrs = [learning_rate(cfg, epoch, it, iters) for it in range(iters)]
        if should_collect(cfg, epoch):
            assert lrs[-1] == pytest.approx(SWA_LR, abs=1e-15)
            # the second half of a cycle: from the midpoint down to swa_lr
            assert lrs[0] == pytest.approx(0.03 - 0.04 / 16, abs=1e-15)
        else:
            assert lrs[0] == pytest.approx(0.05 - 0.04 / 16, abs=1e-15)
            assert lrs[-1] == pytest.approx(0.03, abs=1e-15)  # mid-cycle, not swa_lr
    assert learning_rate(cfg, 158, 3, iters) == swa_original(158)


# ------------------------------------------------------------------------------- SWALR


def torch_swalr_lrs(epochs: int, swa_start: int, anneal_epochs: int, strategy: str,
                    lazy: bool = True) -> list:
    """Each epoch's learning rate under torch's SWALR; ``lazy``: created at the first SWA epoch,
    as the twins once did, else at the start."""
    import torch
    from torch.optim.swa_utils import SWALR

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR, momentum=0.9)
    scheduler = None if lazy else SWALR(optimizer, SWA_LR, anneal_epochs, strategy)
    out = []
    for epoch in range(epochs):
        if swalr_steps(epoch, swa_start):
            if scheduler is None:
                scheduler = SWALR(optimizer, SWA_LR, anneal_epochs, strategy)
            scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def paddle_swalr_lrs(epochs: int, swa_start: int, anneal_epochs: int, strategy: str,
                     lazy: bool = True) -> list:
    from swa_paddle.swa_utils import SWALR

    scheduler = None if lazy else SWALR(LR, SWA_LR, anneal_epochs, strategy)
    out = []
    for epoch in range(epochs):
        if swalr_steps(epoch, swa_start):
            if scheduler is None:
                scheduler = SWALR(LR, SWA_LR, anneal_epochs, strategy)
            scheduler.step()
        out.append(scheduler() if scheduler is not None else LR)
    return out


CASES = [(5, "cos"), (5, "linear"), (1, "cos"), (40, "linear")]


def test_swalr_steps():
    assert [swalr_steps(e, 11) for e in range(8, 14)] == [0, 0, 1, 2, 3, 4]


def test_anneal():
    assert anneal(0.0, "cos") == 0.0 and anneal(1.0, "cos") == 1.0
    assert anneal(0.5, "cos") == pytest.approx(0.5)
    assert anneal(0.25, "cos") == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert anneal(0.25, "linear") == 0.25
    assert anneal(2.0, "linear") == 1.0 and anneal(-1.0, "cos") == 0.0


@pytest.mark.parametrize(("anneal_epochs", "strategy"), CASES)
def test_swalr_lr_equals_torch_swalr(anneal_epochs, strategy):
    want = torch_swalr_lrs(30, 11, anneal_epochs, strategy)
    got = [swalr_lr(e, LR, 11, SWA_LR, anneal_epochs, strategy) for e in range(30)]
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    assert got[:10] == [LR] * 10
    assert got[10] < LR
    if anneal_epochs <= 20:  # annealed within the 20 SWA epochs
        assert got[-1] == pytest.approx(SWA_LR, abs=1e-15)
    else:
        assert got[-1] > SWA_LR


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swalr_lr_without_anneal(strategy):
    """anneal_epochs 0: lr_init before swa_start, swa_lr from it on (torch's SWALR would be at
    swa_lr from construction, which is why the twins create it at the first SWA epoch)."""
    want = torch_swalr_lrs(30, 11, 0, strategy)
    got = [swalr_lr(e, LR, 11, SWA_LR, 0, strategy) for e in range(30)]
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    assert got == [LR] * 10 + [SWA_LR] * 20
    assert torch_swalr_lrs(30, 11, 0, strategy, lazy=False)[0] == pytest.approx(SWA_LR)


@pytest.mark.parametrize(("anneal_epochs", "strategy"), CASES + [(0, "cos"), (0, "linear")])
def test_paddle_swalr_equals_torch_swalr(anneal_epochs, strategy):
    for lazy in (True, False):
        want = torch_swalr_lrs(30, 11, anneal_epochs, strategy, lazy)
        got = paddle_swalr_lrs(30, 11, anneal_epochs, strategy, lazy)
        assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_paddle_swalr_state_round_trip():
    from swa_paddle.swa_utils import SWALR

    a = SWALR(LR, SWA_LR, 5, "cos")
    for _ in range(3):
        a.step()
    b = SWALR(LR, SWA_LR, 5, "cos")
    b.set_state_dict(a.state_dict())
    assert b() == a()
    a.step()
    b.step()
    assert b() == a() == pytest.approx(swalr_lr(13, LR, 11, SWA_LR, 5, "cos"), abs=1e-12)


def test_paddle_swalr_refuses_bad_arguments():
    from swa_paddle.swa_utils import SWALR

    with pytest.raises(ValueError, match="anneal_strategy"):
        SWALR(LR, SWA_LR, 5, "step")
    with pytest.raises(ValueError, match="anneal_epochs"):
        SWALR(LR, SWA_LR, -1, "cos")


def test_learning_rate_swalr_schedule():
    cfg = config(SWA={"swa": True, "swa_start": 11, "anneal_epochs": 5,
                      "anneal_strategy": "linear"},
                 Global={"epochs": 30}, Optimizer={"schedule": "swalr"})
    assert [learning_rate(cfg, e, 3, 10) for e in range(30)] == \
        [swalr_lr(e, LR, 11, SWA_LR, 5, "linear") for e in range(30)]
    assert learning_rate(cfg, 12, 0, 10) == pytest.approx(0.05 - 0.04 * 3 / 5, abs=1e-15)


# --------------------------------------------------------------------------------- the plan


def test_paper_plan_collect():
    cfg = paper()
    assert [e for e in range(EPOCHS) if should_collect(cfg, e)] == list(range(160, 200))


def test_no_collection_without_swa():
    cfg = load_yaml(str(ROOT / "configs" / "vgg16_sgd_cifar10.yaml"))
    assert not any(should_collect(cfg, e) for e in range(EPOCHS))


def test_paper_plan_eval():
    cfg = paper()
    evals = [e for e in range(EPOCHS) if should_eval(cfg, e)]
    assert evals == [0] + list(range(4, 200, 5))
    assert evals[:4] == [0, 4, 9, 14] and evals[-1] == 199


def test_paper_plan_save():
    cfg = paper()
    assert [e for e in range(EPOCHS) if should_save(cfg, e)] == list(range(24, 200, 25))


def test_last_epoch_is_always_evaluated_and_saved():
    cfg = config(Global={"epochs": 32})
    assert [e for e in range(32) if should_save(cfg, e)] == [24, 31]
    assert [e for e in range(32) if should_eval(cfg, e)] == [0, 4, 9, 14, 19, 24, 29, 31]


def test_collect_every_third_epoch():
    cfg = config(SWA={"swa": True, "swa_c_epochs": 3})
    collected = [e for e in range(EPOCHS) if should_collect(cfg, e)]
    assert collected == list(range(160, 200, 3))
    assert collected[:4] == [160, 163, 166, 169]

"""``SWA.avg ema`` in both twins: the trainer keeps the EMA of every step's weights and BN
statistics from ``swa_start`` on (PaddleClas's ``EMA`` block), and skips ``update_bn``."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from conftest import straight_and_resumed, tiny_config
from swa_apps.convert import convert_state_dict
from swa_recipe.config import ConfigError, default_config, merge, validate

DECAY = 0.6


def as_numpy(framework: str, state: dict) -> dict[str, np.ndarray]:
    """A state dict as float64 arrays in torch's layout (Paddle converted)."""
    ckpt = importlib.import_module(f"swa_{framework}.checkpoint")
    arrays = ckpt.to_numpy(state)
    if framework == "paddle":
        arrays = convert_state_dict(arrays, "paddle2torch")
    return {k: np.asarray(v, np.float64) for k, v in arrays.items()
            if not k.endswith("num_batches_tracked")}


def train_recording(framework: str, archive, swa_start: int):
    """Train 2 epochs of VGG16BN with EMA, recording the model after every optimizer step."""
    trainer_mod = importlib.import_module(f"swa_{framework}.trainer")
    cfg = tiny_config(archive, Global={"epochs": 2}, Arch={"model": "VGG16BN"},
                      SWA={"avg": "ema", "ema_decay": DECAY, "swa_start": swa_start})
    trainer = trainer_mod.Trainer(cfg)
    snapshots = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        snapshots.append(as_numpy(framework, trainer.model.state_dict()))
        return out

    trainer.optimizer.step = recording_step
    for epoch in range(2):
        trainer.train_epoch(epoch)
        trainer.collect()  # what the loop does at a collection epoch: nothing more for EMA
    return trainer, snapshots


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_trainer_ema_is_the_moving_average_of_every_step(framework, archive):
    trainer, snapshots = train_recording(framework, archive, swa_start=2)
    per_epoch = len(snapshots) // 2
    averaged = snapshots[per_epoch:]  # epoch 2 = swa_start: every step of it
    expected = dict(averaged[0])
    for state in averaged[1:]:
        expected = {k: v + (1 - DECAY) * (state[k] - v) for k, v in expected.items()}
    got = as_numpy(framework, trainer.swa_model.module.state_dict())
    assert int(trainer.swa_model.n_averaged) == len(averaged) > 1
    assert "features.1.running_var" in expected
    diff = max(float(np.abs(got[k] - expected[k]).max()) for k in expected)
    assert diff <= 1e-6
    last = snapshots[-1]
    assert max(float(np.abs(got[k] - last[k]).max()) for k in expected) > 1e-4  # not the last


def test_ema_needs_swa():
    cfg = merge(default_config(), {"SWA": {"avg": "ema", "swa": False}}, "test")
    with pytest.raises(ConfigError, match="SWA.avg=ema needs"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"SWA.ema_decay must be in \[0, 1\)"):
        merge(default_config(), {"SWA": {"ema_decay": 1.0}}, "test")
    with pytest.raises(ConfigError, match="SWA.avg must be one of swa, ema"):
        merge(default_config(), {"SWA": {"avg": "polyak"}}, "test")


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_ema_run_resumes_exactly_and_evaluates(framework, archive, tmp_path):
    """A whole EMA run (loop, checkpoints, evaluation) equals one restarted from checkpoint-1."""
    from swa_apps.twins import import_twin

    twin = import_twin(framework)
    row, straight, resumed = straight_and_resumed(
        framework, archive, tmp_path, 2, Arch={"model": "VGG16BN"},
        SWA={"avg": "ema", "ema_decay": DECAY})
    assert row["swa_te_acc"] is not None
    assert straight["swa_n"] == resumed["swa_n"] == 2 * 4  # 100 images, batch 32: 4 steps
    a, b = (twin.checkpoint.to_numpy(s["swa_state_dict"]) for s in (straight, resumed))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name

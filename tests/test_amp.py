"""Mixed precision (the ``AMP`` block, ``Global.precision bf16``): one rule in
``swa_recipe.precision``, torch's bfloat16 autocast training on the CPU with float32 weights,
averages and checkpoints, exact resume with the loss scaler's state, and Paddle's AMP refused
on the CPU, where it does nothing."""

from __future__ import annotations

import math
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from swa_apps.twins import import_twin
from swa_recipe.config import ConfigError, default_config, load_yaml, merge, validate
from swa_recipe.logs import IterMeter, read_metrics
from swa_recipe.loop import Interrupted, fit
from swa_recipe.precision import Amp, amp_settings, device_refusal


def config(**sections) -> dict:
    return validate(merge(default_config(), sections, "test"))


# ------------------------------------------------------------------------------- the rule


def test_settings_resolve_the_amp_block_and_the_legacy_key():
    assert amp_settings(config()) == Amp()  # float32: nothing cast, no scaler
    bf16 = amp_settings(config(Global={"framework": "torch"},
                               AMP={"use_amp": True, "dtype": "bfloat16"}))
    assert (bf16.enabled, bf16.dtype, bf16.level, bf16.scaling) == (True, "bfloat16", "O1", False)
    fp16 = amp_settings(config(AMP={"use_amp": True, "scale_loss": 1024.0,
                                    "use_dynamic_loss_scaling": False}))
    assert (fp16.dtype, fp16.scaling, fp16.init_scale, fp16.dynamic) == \
        ("float16", True, 1024.0, False)
    legacy = amp_settings(config(Global={"framework": "torch", "precision": "bf16"}))
    assert legacy == bf16  # Global.precision bf16 is the AMP block's O1 bfloat16
    both = config(Global={"framework": "torch", "precision": "bf16"},
                  AMP={"use_amp": True, "dtype": "bfloat16"})
    assert amp_settings(both) == bf16  # saying it twice, alike, is no conflict
    assert amp_settings(config(Global={"framework": "torch"}, AMP={"tf32": True})).tf32


@pytest.mark.parametrize("sections, complaint", [
    ({"AMP": {"use_amp": True, "level": "O2"}}, "use AMP.level O1"),
    ({"Global": {"framework": "torch", "precision": "bf16"}, "AMP": {"use_amp": True}},
     "Global.precision=bf16 and AMP.dtype=float16 disagree"),
    ({"AMP": {"tf32": True}}, "AMP.tf32 is a torch-twin switch"),
    ({"Global": {"precision": "bf16"}}, "Global.precision=bf16 is a torch-twin option"),
])
def test_config_refusals_are_one_line(sections, complaint):
    with pytest.raises(ConfigError, match=complaint) as info:
        config(**sections)
    assert "\n" not in str(info.value)


def test_device_refusals_follow_the_resolved_device():
    fp16, bf16 = Amp(True, "float16", scaling=True), Amp(True, "bfloat16")
    for framework in ("paddle", "torch"):
        assert "needs a GPU" in device_refusal(fp16, framework, "cpu")
        assert device_refusal(fp16, framework, "gpu") is None
        assert device_refusal(Amp(), framework, "cpu") is None
    assert "Paddle's AMP does nothing on the CPU" in device_refusal(bf16, "paddle", "cpu")
    assert device_refusal(bf16, "paddle", "gpu") is None
    assert device_refusal(bf16, "torch", "cpu") is None


def test_old_configs_without_an_amp_block_load_with_its_defaults(tmp_path):
    """A config.yaml or a checkpoint's config written before the AMP block existed."""
    old = load_yaml(str(ROOT / "configs" / "lite.yaml"))
    del old["AMP"]
    merged = merge(default_config(), old, "an old checkpoint's config")
    assert merged["AMP"] == default_config()["AMP"]
    assert amp_settings(validate(merged)) == Amp()


# --------------------------------------------------------------------------------- Paddle


def test_paddle_auto_cast_does_nothing_on_the_cpu():
    """Why the Paddle twin refuses AMP on the CPU: ``paddle.amp.auto_cast`` switches itself
    off there with a warning (the forward is float32, bit for bit), and Paddle's CPU kernels
    have no bfloat16. If this starts failing, Paddle gained CPU AMP: revisit the refusal."""
    import paddle

    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.ReLU(), paddle.nn.Flatten(),
                                 paddle.nn.Linear(4 * 6 * 6, 10))
    x = paddle.randn([2, 3, 8, 8])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with paddle.amp.auto_cast(level="O1", dtype="bfloat16"):
            cast = layer(x)
    assert any("makes no effect" in str(w.message) for w in caught)
    assert cast.dtype == paddle.float32
    assert np.array_equal(cast.numpy(), layer(x).numpy())
    with pytest.raises(RuntimeError, match="bfloat16"):
        paddle.nn.functional.conv2d(x.astype("bfloat16"), layer[0].weight.astype("bfloat16"))


@pytest.mark.parametrize("framework, amp, complaint", [
    ("paddle", {"use_amp": True, "dtype": "bfloat16"}, "Paddle's AMP does nothing on the CPU"),
    ("torch", {"use_amp": True, "dtype": "float16"}, "AMP.dtype=float16 needs a GPU"),
])
def test_the_twins_refuse_at_the_resolved_device(framework, amp, complaint, archive):
    cfg = tiny_config(archive, Global={"framework": framework}, AMP=amp)  # device auto: CPU
    with pytest.raises(ConfigError, match=complaint):
        import_twin(framework).trainer.Trainer(cfg)


# ---------------------------------------------------------------------------------- torch


class StopAfter(IterMeter):
    """Sends this process SIGTERM once iteration ``STOP_AT`` (0-based, of epoch 2) is
    recorded: ``fit`` stops after the next step, the third of 4 (tiny) or 8 (lite), and writes
    a mid-epoch checkpoint."""

    STOP_AT = 1

    def step(self, it: int, lr: float, loss: float, correct: int, n: int) -> None:
        super().step(it, lr, loss, correct, n)
        if self.epoch == 1 and it == self.STOP_AT:
            signal.raise_signal(signal.SIGTERM)


def lite_bf16(lite_archive, out: Path, **global_) -> dict:
    cfg = load_yaml(str(ROOT / "configs" / "lite.yaml"))
    return validate(merge(cfg, {
        "Global": {"framework": "torch", "dir": str(out), **global_},
        "Data": {"data_path": str(lite_archive)},
        "AMP": {"use_amp": True, "dtype": "bfloat16"}}, "test"))


def interrupted_and_resumed(cfg_of, out: Path, meter=StopAfter) -> Path:
    """Train ``cfg_of(out)`` until ``meter`` stops it mid-epoch, then resume from the
    checkpoint it wrote to the end; the mid-epoch checkpoint's path."""
    trainer_class = import_twin("torch").trainer.Trainer
    cfg = cfg_of(out)
    with pytest.raises(Interrupted) as info:
        fit(trainer_class(cfg, meter_class=meter), cfg)
    assert "-iter" in info.value.path
    cfg = cfg_of(out, resume=info.value.path)
    fit(trainer_class(cfg), cfg)
    return Path(info.value.path)


@pytest.fixture(scope="module")
def bf16_run(lite_archive, tmp_path_factory) -> Path:
    """The lite config in torch with bfloat16 AMP on the CPU, uninterrupted."""
    out = tmp_path_factory.mktemp("bf16") / "run"
    cfg = lite_bf16(lite_archive, out)
    fit(import_twin("torch").trainer.Trainer(cfg), cfg)
    return out


def test_torch_bf16_amp_trains_the_lite_config_on_the_cpu(bf16_run):
    import torch

    from swa_torch.checkpoint import load

    rows = read_metrics(str(bf16_run / "metrics.csv"))
    losses = [r["tr_loss"] for r in rows]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    state = load(str(bf16_run / "checkpoint-3.pt"))
    assert state["scaler"] is None  # bfloat16: no loss scaling
    assert {v.dtype for v in state["state_dict"].values() if v.is_floating_point()} == \
        {torch.float32}
    assert {v.dtype for v in state["swa_state_dict"].values() if v.is_floating_point()} == \
        {torch.float32}
    momenta = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert momenta and {m.dtype for m in momenta} == {torch.float32}
    assert state["config"]["AMP"]["dtype"] == "bfloat16"


def test_torch_bf16_amp_resumed_mid_run_equals_the_uninterrupted_run(bf16_run, lite_archive,
                                                                       tmp_path):
    from swa_torch.checkpoint import load, to_numpy

    interrupted_and_resumed(lambda out, **g: lite_bf16(lite_archive, out, **g),
                            tmp_path / "run")
    a = to_numpy(load(str(bf16_run / "checkpoint-3.pt")))
    b = to_numpy(load(str(tmp_path / "run" / "checkpoint-3.pt")))
    for key in ("state_dict", "swa_state_dict"):
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)
    strip = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # noqa: E731
    assert strip(bf16_run / "metrics.csv") == strip(tmp_path / "run" / "metrics.csv")


def test_the_float16_loss_scaler_state_is_checkpointed_and_restored(archive, tmp_path,
                                                                    monkeypatch):
    """The GradScaler's scale and growth count travel in the checkpoint (``scaler``) and a
    resumed float16 run continues exactly. Users get float16 on a GPU only; torch runs it on
    the CPU too, so the test lifts the device refusal to exercise the scaler here. The scale
    starts at 2^24, too large for these float16 gradients: dynamic scaling halves it (skipping
    those steps), so a fresh scaler after the resume would train differently."""
    from swa_torch import checkpoint, trainer

    monkeypatch.setattr(trainer, "device_refusal", lambda *args: None)

    def cfg_of(out: Path, **global_) -> dict:
        return tiny_config(archive, Global={"framework": "torch", "dir": str(out), **global_},
                           AMP={"use_amp": True, "dtype": "float16", "scale_loss": 2.0 ** 24},
                           SWA={"swa": False})  # the SWA average: the bfloat16 tests

    straight = cfg_of(tmp_path / "a")
    fit(trainer.Trainer(straight), straight)
    mid = interrupted_and_resumed(cfg_of, tmp_path / "b")
    saved = checkpoint.load(str(mid))["scaler"]
    assert saved is not None and saved["scale"] < 2.0 ** 24  # backed off: state worth keeping
    a = checkpoint.to_numpy(checkpoint.load(str(tmp_path / "a" / "checkpoint-2.pt")))
    b = checkpoint.to_numpy(checkpoint.load(str(tmp_path / "b" / "checkpoint-2.pt")))
    assert a["scaler"] == b["scaler"]
    for name in a["state_dict"]:
        assert np.array_equal(a["state_dict"][name], b["state_dict"][name]), name


def test_an_old_checkpoint_without_amp_or_scaler_resumes(archive, tmp_path):
    """A checkpoint written before AMP existed (no ``AMP`` in its config, no ``scaler``) still
    resumes through ``--resume PATH``'s config merge, to the same end as a run that never
    stopped."""
    import torch

    from swa_apps.cli import train_parser
    from swa_recipe.config import continued_config
    from swa_torch import checkpoint, trainer

    straight = tiny_config(archive, Global={"framework": "torch", "dir": str(tmp_path / "a")})
    fit(trainer.Trainer(straight), straight)
    old = checkpoint.load(str(tmp_path / "a" / "checkpoint-1.pt"))
    del old["scaler"], old["config"]["AMP"]
    path = tmp_path / "b" / "checkpoint-1.pt"
    path.parent.mkdir()
    torch.save(old, path)
    cfg = continued_config(train_parser().parse_args(["--resume", str(path)]), old["config"],
                           str(path))
    assert cfg["AMP"] == default_config()["AMP"]
    fit(trainer.Trainer(cfg), cfg)
    a = checkpoint.to_numpy(checkpoint.load(str(tmp_path / "a" / "checkpoint-2.pt")))
    b = checkpoint.to_numpy(checkpoint.load(str(tmp_path / "b" / "checkpoint-2.pt")))
    for name in a["state_dict"]:
        assert np.array_equal(a["state_dict"][name], b["state_dict"][name]), name


def test_tf32_is_set_explicitly_either_way(archive):
    """torch's defaults differ (cuDNN convolutions TF32, matmuls not); the trainer sets both
    switches to ``AMP.tf32``."""
    import torch

    from swa_torch.trainer import Trainer

    Trainer(tiny_config(archive, Global={"framework": "torch"}, AMP={"tf32": True}))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    Trainer(tiny_config(archive, Global={"framework": "torch"}))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_a_converted_checkpoint_drops_the_loss_scaler(archive, tmp_path):
    """A Paddle float16 checkpoint's ``scaler`` (GradScaler.state_dict: a numpy scale) is
    Paddle's own layout, like its optimizer state: ``convert`` drops both, and the torch file
    loads with ``weights_only``."""
    from swa_apps.convert import convert_file
    from swa_paddle import checkpoint as pd_ckpt
    from swa_paddle.models import VGG
    from swa_torch import checkpoint as th_ckpt

    model = VGG(depth=16, width=0.0625, dropout=0.0)
    scaler = {"scale": np.array([1024.0], dtype=np.float32), "incr_ratio": 2.0,
              "decr_ratio": 0.5, "incr_every_n_steps": 1000, "decr_every_n_nan_or_inf": 2,
              "incr_count": 7, "decr_count": 0, "use_dynamic_loss_scaling": True}
    src, dst = tmp_path / "c.pdparams", tmp_path / "c.pt"
    pd_ckpt.save({"epoch": 1, "state_dict": model.state_dict(), "swa_state_dict": None,
                  "swa_n": None, "optimizer": {"lr": 0.1}, "scaler": scaler}, str(src))
    assert pd_ckpt.load(str(src))["scaler"]["incr_count"] == 7
    convert_file(str(src), str(dst), tiny_config(archive))
    loaded = th_ckpt.load(str(dst))
    assert loaded["scaler"] is None and loaded["optimizer"] is None

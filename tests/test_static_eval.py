"""swa_paddle.static_eval: evaluation through one whole-model static program equals the eager
forward (accuracy counts equal, losses within 1e-5), follows the live weights, and falls back."""

from __future__ import annotations

import copy

import numpy as np
import paddle
import pytest

from swa_paddle import onednn, static_eval
from swa_paddle.models import VGG, set_dropout_masks
from swa_paddle.swa_utils import AveragedModel
from swa_paddle.trainer import evaluate

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason="no oneDNN or PIR enabled: evaluation stays eager")

WIDTH = 0.0625


def tiny_vgg(batch_norm: bool, seed: int = 0, fast: bool = True) -> VGG:
    """A 1/16-width VGG16(BN) with random BatchNorm statistics, oneDNN on (or off)."""
    paddle.seed(seed)
    model = VGG(width=WIDTH, batch_norm=batch_norm)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            c = layer._mean.shape[0]
            layer._mean.set_value(paddle.randn([c]) * 0.1)
            layer._variance.set_value(paddle.rand([c]) + 0.5)
    assert onednn.enable(model, fast) == fast
    static_eval.enable(model)
    return model


def batches(seed: int = 0, sizes: tuple = (16, 5)) -> list[tuple[paddle.Tensor, paddle.Tensor]]:
    """A loader's worth of batches, the last one smaller (a second program shape)."""
    rng = np.random.default_rng(seed)
    return [(paddle.to_tensor(rng.standard_normal((n, 3, 32, 32), dtype=np.float32)),
             paddle.to_tensor(rng.integers(0, 10, n))) for n in sizes]


def assert_same_results(model: paddle.nn.Layer, loader: list) -> dict:
    """Static and eager ``evaluate`` agree (the static program did run); return the former."""
    static = evaluate(model, loader)
    assert static_eval._PROGRAMS.get(model) is not None, "the static program ran"
    eager = evaluate(model, loader, static=False)
    assert static["accuracy"] == eager["accuracy"]
    assert abs(static["loss"] - eager["loss"]) <= 1e-5 * max(1.0, abs(eager["loss"]))
    return static


def logits_pair(model: paddle.nn.Layer, x: paddle.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with paddle.no_grad():
        return static_eval.run(model, x).numpy(), model(x).numpy()


def assert_close(static: np.ndarray, eager: np.ndarray) -> None:
    """Equal up to float32 rounding of the largest logit (a small logit left by cancellation
    carries the rounding of the large ones)."""
    assert np.abs(static - eager).max() <= 1e-5 * np.abs(eager).max()


def change_weights(model: paddle.nn.Layer, seed: int) -> None:
    """Perturb every parameter (BatchNorm statistics included) in place, as training does."""
    paddle.seed(seed)
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p * 1.5 + paddle.randn(p.shape) * 0.01)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_static_equals_eager_and_follows_weight_changes(batch_norm):
    model, loader = tiny_vgg(batch_norm), batches()
    x = loader[0][0]
    before, eager = logits_pair(model, x)
    assert_close(before, eager)
    first = assert_same_results(model, loader)
    change_weights(model, seed=1)
    after, eager = logits_pair(model, x)
    assert_close(after, eager)
    assert np.abs(after - before).max() > 1e-3, "the program reads the live weights"
    assert assert_same_results(model, loader)["loss"] != first["loss"]


def test_averaged_model_is_evaluated_with_its_current_average():
    model, loader = tiny_vgg(batch_norm=True), batches(seed=2)
    swa = AveragedModel(model)
    swa.update_parameters(model)
    first = assert_same_results(swa, loader)
    change_weights(model, seed=3)
    swa.update_parameters(model)
    second = assert_same_results(swa, loader)
    assert second["loss"] != first["loss"], "the average's update is seen"


def test_training_after_a_static_evaluation_is_unchanged():
    """A static evaluation leaves the next training step bit-identical to one after an eager
    evaluation (the program shares the weights, it must not disturb them or their kernels)."""
    a = tiny_vgg(batch_norm=True)
    b = copy.deepcopy(a)
    onednn.enable(b)
    loader = batches(seed=4)
    evaluate(a, loader)
    evaluate(b, loader, static=False)
    assert static_eval._PROGRAMS.get(a) is not None and b not in static_eval._PROGRAMS
    x, y = batches(seed=5, sizes=(8,))[0]
    rng = np.random.default_rng(6)  # training's dropout masks are made on the host
    masks = [paddle.to_tensor(2 * rng.integers(0, 2, (8, layer.weight.shape[0])), "float32")
             for layer in (a.classifier[1], a.classifier[4])]
    for model in (a, b):
        model.train()
        set_dropout_masks(model, masks)
        opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters(), momentum=0.9)
        paddle.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert np.array_equal(pa.numpy(), pb.numpy()), name


def test_falls_back_where_the_program_cannot_run():
    x = batches(sizes=(4,))[0][0]
    off = tiny_vgg(batch_norm=False, fast=False)  # Global.onednn false
    static, eager = logits_pair(off, x)
    assert np.array_equal(static, eager) and off not in static_eval._PROGRAMS
    model = tiny_vgg(batch_norm=True)
    model.eval()
    assert static_eval.can_run(model, x) is False  # gradients recorded
    with paddle.no_grad():
        assert static_eval.can_run(model, x)
        assert not static_eval.can_run(model, x.astype("float64"))
        model.features[1].train()  # one sublayer in training mode
        assert not static_eval.can_run(model, x)
        model.eval()
        with paddle.amp.auto_cast(enable=True, level="O1", dtype="bfloat16"):
            static, eager = logits_pair(model, x)  # Paddle's auto_cast is off on the CPU
        assert static.dtype == eager.dtype == np.float32
        assert_close(static, eager)


def test_a_failing_program_falls_back_to_eager_for_good(monkeypatch):
    model, x = tiny_vgg(batch_norm=False), batches(sizes=(4,))[0][0]
    notes = []

    def broken(model):
        def fail(x):
            raise RuntimeError("traceback\n(InvalidArgument) no kernel")
        return fail

    monkeypatch.setattr(static_eval, "build", broken)
    monkeypatch.setattr(static_eval, "note", notes.append)  # stderr or the run's logger
    static, eager = logits_pair(model, x)
    assert np.array_equal(static, eager)
    assert static_eval._PROGRAMS[model] is None and not static_eval.can_run(model, x)
    assert len(notes) == 1 and "evaluating VGG eagerly" in notes[0]
    assert "RuntimeError: (InvalidArgument) no kernel" in notes[0] and "\n" not in notes[0]


def test_models_without_onednn_layers_stay_eager():
    plain = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.Flatten())
    plain.eval()
    with paddle.no_grad():
        assert not static_eval.runs_onednn(plain)
        assert not static_eval.runs_onednn(paddle.nn.Linear(2, 2))


def test_global_static_eval_false_keeps_the_eager_forward():
    """``Global.static_eval false`` (the study's setting: its committed rows were evaluated
    eagerly) builds a model that never uses the program; the default uses it; the SWA average,
    a deep copy, inherits the setting."""
    from swa_paddle.models import build_model
    from swa_recipe.config import default_config, validate

    cfg = default_config()
    cfg["Arch"]["width"] = WIDTH
    x = batches()[0][0]
    for on in (True, False):
        cfg["Global"]["static_eval"] = on
        model = build_model(validate(copy.deepcopy(cfg)))
        model.eval()
        average = AveragedModel(model)
        average.eval()
        with paddle.no_grad():
            assert static_eval.can_run(model, x) is on
            assert static_eval.can_run(average, x) is on
        evaluate(model, batches())
        assert (model in static_eval._PROGRAMS) is on

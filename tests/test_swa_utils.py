"""``swa_paddle.swa_utils`` against ``torch.optim.swa_utils`` itself, on VGG16BN at 1/16 width."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from torch.optim import swa_utils as torch_swa

from swa_apps.convert import convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import models as pd_models
from swa_paddle import swa_utils as pd_swa
from swa_torch import checkpoint as th_ckpt
from swa_torch import models as th_models

WIDTH = 0.0625


def torch_vgg(batch_norm: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return th_models.VGG(depth=16, batch_norm=batch_norm, width=WIDTH)


def paddle_vgg(batch_norm: bool = True) -> paddle.nn.Layer:
    paddle.seed(0)
    return pd_models.VGG(depth=16, batch_norm=batch_norm, width=WIDTH)


def copy_to_paddle(src: torch.nn.Module, dst: paddle.nn.Layer) -> None:
    """Load torch ``src``'s weights (and BN statistics) into Paddle ``dst``."""
    state = convert_state_dict(th_ckpt.to_numpy(src.state_dict()), "torch2paddle")
    pd_ckpt.load_weights(dst, pd_ckpt.from_numpy(state), "<test>")


def paddle_as_torch(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return convert_state_dict(pd_ckpt.to_numpy(model.state_dict()), "paddle2torch")


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def max_param_diff(th_model: torch.nn.Module, pd_model: paddle.nn.Layer) -> float:
    """Max abs difference over trainable parameters, Paddle converted to torch's layout."""
    pd_state = paddle_as_torch(pd_model)
    th_state = th_ckpt.to_numpy(th_model.state_dict())
    names = trainable_names(th_model)
    assert names and set(names) <= set(pd_state)
    return max(float(np.abs(th_state[n].astype(np.float64) - pd_state[n]).max()) for n in names)


def snapshots(base: torch.nn.Module, count: int = 5, scale: float = 0.1):
    """Yield ``base`` perturbed with seeded noise ``count`` times (a copy of each state)."""
    gen = torch.Generator().manual_seed(1234)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    for _ in range(count):
        state = {}
        for k, v in original.items():
            if v.is_floating_point():
                state[k] = v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            else:
                state[k] = v.clone()
        yield state


def average_both(avg_fn_pair=(None, None), count: int = 5, th_kwargs: dict | None = None,
                 pd_kwargs: dict | None = None):
    """Feed the same ``count`` snapshots to torch's and Paddle's ``AveragedModel`` (built with
    ``avg_fn`` and the other keyword arguments given)."""
    th_model, pd_model = torch_vgg(), paddle_vgg()
    copy_to_paddle(th_model, pd_model)
    th_avg = torch_swa.AveragedModel(th_model, avg_fn=avg_fn_pair[0], **(th_kwargs or {}))
    pd_avg = pd_swa.AveragedModel(pd_model, avg_fn=avg_fn_pair[1], **(pd_kwargs or {}))
    initial_mean = {n: m._mean.numpy().copy() for n, m in pd_avg.named_sublayers()
                    if isinstance(m, paddle.nn.BatchNorm2D)}
    for state in snapshots(th_model, count):
        th_model.load_state_dict(state)
        copy_to_paddle(th_model, pd_model)
        th_avg.update_parameters(th_model)
        pd_avg.update_parameters(pd_model)
    return th_avg, pd_avg, initial_mean


# ---------------------------------------------------------------- AveragedModel


def test_averaged_model_equal_average_matches_torch():
    th_avg, pd_avg, initial_mean = average_both()
    diff = max_param_diff(th_avg.module, pd_avg.module)
    print(f"AveragedModel SWA max abs diff: {diff:.3e}")
    assert diff <= 1e-7
    assert int(th_avg.n_averaged) == 5
    assert int(pd_avg.n_averaged) == 5
    state = pd_avg.state_dict()
    assert "n_averaged" in state
    assert int(state["n_averaged"]) == 5


def test_averaged_model_differs_from_last_snapshot():
    """The average is not simply the last model (the comparison above can fail)."""
    th_avg, pd_avg, _ = average_both(count=2)
    th_model = torch_vgg()
    states = list(snapshots(th_model, 2))
    th_model.load_state_dict(states[-1])
    last = th_ckpt.to_numpy(th_model.state_dict())
    avg = paddle_as_torch(pd_avg.module)
    assert np.abs(avg["features.0.weight"] - last["features.0.weight"]).max() > 1e-3


def test_averaged_model_leaves_bn_statistics_alone():
    _, pd_avg, initial_mean = average_both()
    assert initial_mean
    for name, layer in pd_avg.named_sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            np.testing.assert_array_equal(layer._mean.numpy(), initial_mean[name])


def test_averaged_model_use_buffers_averages_bn_statistics():
    th_model, pd_model = torch_vgg(), paddle_vgg()
    copy_to_paddle(th_model, pd_model)
    th_avg = torch_swa.AveragedModel(th_model, use_buffers=True)
    pd_avg = pd_swa.AveragedModel(pd_model, use_buffers=True)
    for state in snapshots(th_model, 3):
        th_model.load_state_dict(state)
        copy_to_paddle(th_model, pd_model)
        th_avg.update_parameters(th_model)
        pd_avg.update_parameters(pd_model)
    th_state = th_ckpt.to_numpy(th_avg.module.state_dict())
    pd_state = paddle_as_torch(pd_avg.module)
    for key in ("features.1.running_mean", "features.1.running_var"):
        assert np.abs(th_state[key] - pd_state[key]).max() <= 1e-6


def test_ema_avg_fn_matches_torch():
    th_avg, pd_avg, _ = average_both((torch_swa.get_ema_avg_fn(0.9), pd_swa.get_ema_avg_fn(0.9)))
    diff = max_param_diff(th_avg.module, pd_avg.module)
    print(f"EMA(0.9) max abs diff: {diff:.3e}")
    assert diff <= 1e-6
    assert int(pd_avg.n_averaged) == 5


def test_custom_avg_fn_matches_torch():
    def th_fn(averaged, current, n):
        return 0.5 * averaged + 0.5 * current

    def pd_fn(averaged, current, n):
        return 0.5 * averaged + 0.5 * current

    th_avg, pd_avg, _ = average_both((th_fn, pd_fn))
    diff = max_param_diff(th_avg.module, pd_avg.module)
    assert diff <= 1e-6
    # and the custom average is not the equal-weight one
    th_eq, _, _ = average_both()
    assert max_param_diff(th_eq.module, pd_avg.module) > 1e-3


# ---------------------------------------------------------------- update_bn

BATCH_SIZES = (16, 16, 16, 5)  # a short last batch


def random_batches(seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, 3, 32, 32)).astype(np.float32) for b in BATCH_SIZES]


def bn_stats_torch(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (m.running_mean.numpy().copy(), m.running_var.numpy().copy())
            for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def bn_stats_paddle(model: paddle.nn.Layer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (m._mean.numpy().copy(), m._variance.numpy().copy())
            for n, m in model.named_sublayers() if isinstance(m, paddle.nn.BatchNorm2D)}


def max_bn_diff(th_model: torch.nn.Module, pd_model: paddle.nn.Layer) -> tuple[float, float]:
    th, pd = bn_stats_torch(th_model), bn_stats_paddle(pd_model)
    assert th and set(th) == set(pd)
    mean = max(float(np.abs(th[n][0] - pd[n][0]).max()) for n in th)
    var = max(float(np.abs(th[n][1] - pd[n][1]).max()) for n in th)
    return mean, var


@pytest.fixture(scope="module")
def bn_pair():
    """torch and Paddle VGG16BN with the same weights, non-trivial (perturbed) BN parameters."""
    th_model = torch_vgg(seed=3)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for m in th_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.add_(0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.add_(0.2 * torch.randn(m.bias.shape, generator=gen))
    pd_model = paddle_vgg()
    copy_to_paddle(th_model, pd_model)
    return th_model, pd_model


def test_update_bn_matches_torch(bn_pair):
    th_model, pd_model = bn_pair
    copy_to_paddle(th_model, pd_model)
    data = random_batches()
    labels = [np.zeros(len(x), dtype=np.int64) for x in data]
    torch_swa.update_bn([(torch.from_numpy(x), torch.from_numpy(y))
                         for x, y in zip(data, labels, strict=True)], th_model)
    pd_swa.update_bn([(paddle.to_tensor(x), paddle.to_tensor(y))
                      for x, y in zip(data, labels, strict=True)], pd_model)
    mean, var = max_bn_diff(th_model, pd_model)
    print(f"update_bn max abs diff: mean {mean:.3e}, var {var:.3e}")
    assert mean <= 1e-5
    assert var <= 1e-5
    # the statistics really moved away from the initial (0, 1)
    stats = bn_stats_paddle(pd_model)
    assert max(float(np.abs(v[1] - 1).max()) for v in stats.values()) > 1e-2


def test_update_bn_accepts_bare_tensors(bn_pair):
    """A loader yielding bare input tensors works like one yielding (x, y) tuples."""
    th_model, pd_model = bn_pair
    copy_to_paddle(th_model, pd_model)
    data = random_batches(seed=11)
    torch_swa.update_bn([torch.from_numpy(x) for x in data], th_model)
    pd_swa.update_bn([paddle.to_tensor(x) for x in data], pd_model)
    mean, var = max_bn_diff(th_model, pd_model)
    assert mean <= 1e-5
    assert var <= 1e-5


@pytest.mark.parametrize("training", [True, False])
def test_update_bn_restores_mode(bn_pair, training):
    _, pd_model = bn_pair
    pd_model.train() if training else pd_model.eval()
    pd_swa.update_bn([paddle.to_tensor(random_batches()[0])], pd_model)
    assert pd_model.training is training
    assert all(m.training is training for m in pd_model.sublayers())


def test_update_bn_without_batch_norm_is_noop():
    model = paddle_vgg(batch_norm=False)
    model.eval()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    pd_swa.update_bn([paddle.to_tensor(x) for x in random_batches()], model)
    after = model.state_dict()
    assert set(before) == set(after)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k].numpy(), v)
    assert model.training is False


def test_update_bn_empty_loader_keeps_statistics(bn_pair):
    _, pd_model = bn_pair
    before = bn_stats_paddle(pd_model)
    pd_swa.update_bn([], pd_model)
    after = bn_stats_paddle(pd_model)
    for n, (mean, var) in before.items():
        np.testing.assert_array_equal(after[n][0], mean)
        np.testing.assert_array_equal(after[n][1], var)


def test_momentum_running_update_does_not_match(bn_pair):
    """Sanity check of the comparison: Paddle's own momentum update is not torch's update_bn."""
    th_model, pd_model = bn_pair
    copy_to_paddle(th_model, pd_model)
    data = random_batches()
    torch_swa.update_bn([torch.from_numpy(x) for x in data], th_model)
    pd_model.train()
    with paddle.no_grad():
        for x in data:
            pd_model(paddle.to_tensor(x))
    mean, var = max_bn_diff(th_model, pd_model)
    print(f"momentum update vs update_bn: mean {mean:.3e}, var {var:.3e}")
    assert max(mean, var) > 1e-3


def test_ema_multi_avg_fn_with_buffers_matches_torch():
    """The EMA of ``SWA.avg ema``: all weights and BN statistics, in place, as torch's."""
    th_avg, pd_avg, _ = average_both(
        count=4, th_kwargs={"multi_avg_fn": torch_swa.get_ema_multi_avg_fn(0.8),
                            "use_buffers": True},
        pd_kwargs={"multi_avg_fn": pd_swa.get_ema_multi_avg_fn(0.8), "use_buffers": True})
    th_state = th_ckpt.to_numpy(th_avg.module.state_dict())
    pd_state = paddle_as_torch(pd_avg.module)
    keys = [k for k in th_state if not k.endswith("num_batches_tracked")]
    assert "features.1.running_var" in keys and set(keys) <= set(pd_state)
    diff = max(float(np.abs(th_state[k] - pd_state[k]).max()) for k in keys)
    print(f"EMA multi_avg_fn (weights and BN statistics) max abs diff: {diff:.3e}")
    assert diff <= 1e-6
    assert int(pd_avg.n_averaged) == 4
    # not the equal-weight average
    th_eq, _, _ = average_both(count=4)
    eq_state = th_ckpt.to_numpy(th_eq.module.state_dict())
    assert np.abs(eq_state["features.0.weight"] - pd_state["features.0.weight"]).max() > 1e-3


def test_swa_multi_avg_fn_is_the_default_average():
    th_avg, pd_multi, _ = average_both(pd_kwargs={"multi_avg_fn": pd_swa.get_swa_multi_avg_fn()})
    assert max_param_diff(th_avg.module, pd_multi.module) <= 1e-7


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_ema_decay_outside_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        pd_swa.get_ema_multi_avg_fn(decay)
    with pytest.raises(ValueError, match="decay"):
        torch_swa.get_ema_multi_avg_fn(decay)

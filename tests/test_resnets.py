"""PreResNet110/164 and WideResNet28x10 in both twins: the original's names, shapes and init,
same weights -> same logits, update_bn, conversion round trips."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
import torch
from torch.optim import swa_utils as torch_swa

from swa_apps.convert import convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import models as pd_models
from swa_paddle import swa_utils as pd_swa
from swa_recipe.config import ConfigError, default_config, merge, validate
from swa_torch import checkpoint as th_ckpt
from swa_torch import models as th_models

# Tiny variants: (model, depth, width). Depth 8 has BasicBlocks, 47 Bottlenecks (the original's
# rule: Bottleneck from depth 44 on), WideResNet depth 10 one block per stage.
TINY = [("PreResNet110", 8, 0.25), ("PreResNet164", 47, 0.125), ("WideResNet28x10", 10, 0.05)]
TINY_IDS = [f"{m}-d{d}" for m, d, _ in TINY]


def config(model: str, depth: int | None = None, width: float = 1.0, **arch) -> dict:
    cfg = merge(default_config(), {"Arch": {"model": model, "depth": depth, "width": width,
                                            **arch}}, "test")
    return validate(cfg)


def twins(model: str, depth: int | None, width: float, seed: int = 0):
    """(torch, paddle) models of one config, each initialised by its own framework."""
    cfg = config(model, depth, width)
    torch.manual_seed(seed)
    paddle.seed(seed)
    return th_models.build_model(cfg), pd_models.build_model(cfg)


def torch_to_paddle(src: torch.nn.Module, dst: paddle.nn.Layer) -> None:
    state = convert_state_dict(th_ckpt.to_numpy(src.state_dict()), "torch2paddle")
    pd_ckpt.load_weights(dst, pd_ckpt.from_numpy(state), "<test>")


def images(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def realistic_bn(model: torch.nn.Module) -> None:
    """BN statistics of real activations (torch's update_bn on two batches), so that eval-mode
    logits stay O(1) through a deep residual stack."""
    torch_swa.update_bn([torch.from_numpy(images(16, s)) for s in (1, 2)], model)


# ---------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("model, params, keys", [
    ("PreResNet110", 1_146_842, {"layer1.0.downsample.0.weight": (64, 16, 1, 1),
                                 "layer3.11.conv3.weight": (256, 64, 1, 1),
                                 "bn.running_var": (256,), "fc.weight": (10, 256)}),
    ("PreResNet164", 1_703_258, {"conv1.weight": (16, 3, 3, 3),
                                 "layer2.0.conv2.weight": (32, 32, 3, 3),
                                 "layer3.17.bn1.num_batches_tracked": (),
                                 "fc.weight": (10, 256), "fc.bias": (10,)}),
    ("WideResNet28x10", 36_489_290, {"conv1.bias": (16,),
                                     "layer1.0.shortcut.0.weight": (160, 16, 1, 1),
                                     "layer3.3.conv2.weight": (640, 640, 3, 3),
                                     "bn1.running_mean": (640,), "linear.weight": (10, 640)}),
])
def test_full_size_models_have_the_original_names_and_sizes(model, params, keys):
    """Parameter counts of the published models (PreResNet164 1.70M, WRN-28-10 36.5M; the
    original's PreResNet110 has Bottleneck blocks, 1.15M) and a few of the original's keys."""
    th_model, pd_model = twins(model, None, 1.0)
    assert sum(p.numel() for p in th_model.parameters()) == params
    th_shapes = {k: tuple(v.shape) for k, v in th_model.state_dict().items()}
    for key, shape in keys.items():
        assert th_shapes[key] == shape, key
    converted = convert_state_dict(th_ckpt.to_numpy(th_model.state_dict()), "torch2paddle")
    assert {k: v.shape for k, v in converted.items()} == pd_ckpt.shapes(pd_model.state_dict())
    assert list(converted) == list(pd_model.state_dict())  # same order too


def test_preresnet_block_follows_the_original_depth_rule():
    assert isinstance(twins("PreResNet110", 8, 0.25)[0].layer1[0], th_models.preresnet.BasicBlock)
    assert isinstance(twins("PreResNet110", 47, 0.25)[1].layer1[0],
                      pd_models.preresnet.Bottleneck)
    assert len(twins("PreResNet164", None, 0.0625)[0].layer2) == 18


@pytest.mark.parametrize("model, depth, message", [
    ("PreResNet164", 50, "needs depth 9n\\+2"), ("PreResNet110", 9, "needs depth 6n\\+2"),
    ("WideResNet28x10", 12, "needs depth 6n\\+4"), ("VGG16", 10, "has a fixed depth")])
def test_impossible_depth_is_refused(model, depth, message):
    with pytest.raises(ConfigError, match=message):
        config(model, depth)


def test_preresnet_refuses_dropout():
    with pytest.raises(ConfigError, match="has no dropout"):
        config("PreResNet164", dropout=0.3)


def test_dropout_defaults_to_the_models_own():
    assert th_models.build_model(config("WideResNet28x10", 10, 0.05)).layer1[0].dropout.p == 0.0
    assert th_models.build_model(config("VGG16", width=0.0625)).classifier[0].p == 0.5
    wrn = pd_models.build_model(config("WideResNet28x10", 10, 0.05, dropout=0.3))
    assert wrn.layer1[0].dropout.p == 0.3


# ---------------------------------------------------------------- initialisation


def test_preresnet_init_is_the_originals():
    """Convs N(0, sqrt(2/(k*k*out))) without bias, BN 1/0, fc torch's default, in both twins."""
    th_model, pd_model = twins("PreResNet164", 47, 0.5)
    for state, fc in ((th_ckpt.to_numpy(th_model.state_dict()), "fc.weight"),
                      (convert_state_dict(pd_ckpt.to_numpy(pd_model.state_dict()),
                                          "paddle2torch"), "fc.weight")):
        convs = [w for k, w in state.items() if w.ndim == 4]
        assert not [k for k in state if "conv" in k and k.endswith("bias")]
        big = [w for w in convs if w.size >= 4096]
        assert big
        for w in big:
            expected = math.sqrt(2.0 / (w.shape[2] * w.shape[3] * w.shape[0]))
            assert abs(w.std() / expected - 1) < 0.15, (w.shape, w.std(), expected)
        assert all(np.all(v == 1) for k, v in state.items() if k.endswith("bn1.weight"))
        assert all(np.all(v == 0) for k, v in state.items() if k.endswith("bn1.bias"))
        bound = 1 / math.sqrt(state[fc].shape[1])
        assert bound * 0.8 < np.abs(state[fc]).max() <= bound


def test_wide_resnet_init_is_torchs_default():
    """The original never applies its ``conv_init``: convs and linear U(+-1/sqrt(fan_in)),
    biases included; the last BN has torch momentum 0.9 (Paddle 0.1)."""
    th_model, pd_model = twins("WideResNet28x10", 10, 0.2)
    pd_state = convert_state_dict(pd_ckpt.to_numpy(pd_model.state_dict()), "paddle2torch")
    for state in (th_ckpt.to_numpy(th_model.state_dict()), pd_state):
        for key in ("layer2.0.conv2.weight", "layer3.0.shortcut.0.weight", "linear.weight"):
            w, b = state[key], state[key.replace("weight", "bias")]
            bound = 1 / math.sqrt(np.prod(w.shape[1:]))
            assert bound * 0.9 < np.abs(w).max() <= bound, key
            assert np.abs(b).max() <= bound, key
    assert th_model.bn1.momentum == 0.9 and pd_model.bn1._momentum == pytest.approx(0.1)
    assert th_model.layer1[0].bn1.momentum == 0.1 and pd_model.layer1[0].bn1._momentum == 0.9


# ---------------------------------------------------------------- same weights, same logits


@pytest.mark.parametrize("model, depth, width", TINY, ids=TINY_IDS)
def test_same_weights_give_the_same_logits(model, depth, width):
    """Eval mode with real BN statistics and train mode (batch statistics): mean |diff|
    <= 1e-6; after one train-mode forward the running means agree (WRN's momentum 0.9 too)."""
    th_model, pd_model = twins(model, depth, width)
    realistic_bn(th_model)
    torch_to_paddle(th_model, pd_model)
    x = images()
    for train in (False, True):
        th_model.train(train)
        pd_model.train(train)
        th_logits = th_model(torch.from_numpy(x)).detach().numpy()
        pd_logits = pd_model(paddle.to_tensor(x)).numpy()
        assert 0.05 < np.abs(th_logits).mean() < 100
        diff = float(np.abs(th_logits - pd_logits).mean())
        print(f"{model} depth {depth} width {width} train={train}: mean |diff| {diff:.2e}")
        assert diff <= 1e-6
    th_stats = th_ckpt.to_numpy(th_model.state_dict())
    pd_stats = convert_state_dict(pd_ckpt.to_numpy(pd_model.state_dict()), "paddle2torch")
    means = [k for k in th_stats if k.endswith("running_mean")]
    assert max(float(np.abs(th_stats[k] - pd_stats[k]).max()) for k in means) < 1e-5


@pytest.mark.parametrize("model, depth, width", TINY, ids=TINY_IDS)
def test_update_bn_matches_torch(model, depth, width):
    """Paddle's update_bn on the residual models equals torch's within 1e-5."""
    th_model, pd_model = twins(model, depth, width)
    torch_to_paddle(th_model, pd_model)
    batches = [images(12, s) for s in (3, 4, 5)]
    torch_swa.update_bn([torch.from_numpy(b) for b in batches], th_model)
    pd_swa.update_bn([paddle.to_tensor(b) for b in batches], pd_model)
    want = th_ckpt.to_numpy(th_model.state_dict())
    got = convert_state_dict(pd_ckpt.to_numpy(pd_model.state_dict()), "paddle2torch")
    stats = [k for k in want if k.endswith(("running_mean", "running_var"))]
    assert stats
    worst = max(float(np.abs(got[k] - want[k]).max()) for k in stats)
    assert worst <= 1e-5, worst


@pytest.mark.parametrize("model, depth, width", TINY, ids=TINY_IDS)
def test_round_trip_is_exact(model, depth, width):
    th_model, pd_model = twins(model, depth, width, seed=1)
    original = th_ckpt.to_numpy(th_model.state_dict())
    torch_to_paddle(th_model, pd_model)
    back_model = twins(model, depth, width, seed=2)[0]
    back = convert_state_dict(pd_ckpt.to_numpy(pd_model.state_dict()), "paddle2torch")
    th_ckpt.load_weights(back_model, th_ckpt.from_numpy(back), "<test>")
    restored = th_ckpt.to_numpy(back_model.state_dict())
    for k, v in original.items():
        if not k.endswith("num_batches_tracked"):
            assert np.array_equal(restored[k], v), k

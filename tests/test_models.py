"""The twins' VGG models: names, initialisation, same weights -> same logits, conversion."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as pF
import pytest
import torch
import torch.nn.functional as tF

from conftest import tiny_config
from swa_apps.convert import BN_NAMES, convert_file, convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import models as pd_models
from swa_recipe.arch import VGG_MODELS
from swa_recipe.checkpoint import CheckpointError
from swa_torch import checkpoint as th_ckpt
from swa_torch import models as th_models

TINY = 0.0625
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def torch_vgg(name: str = "VGG16", width: float = TINY, seed: int = 0, **kw) -> torch.nn.Module:
    depth, bn = VGG_MODELS[name]
    torch.manual_seed(seed)
    return th_models.VGG(depth=depth, batch_norm=bn, width=width, **kw)


def paddle_vgg(name: str = "VGG16", width: float = TINY, seed: int = 0, **kw) -> paddle.nn.Layer:
    depth, bn = VGG_MODELS[name]
    paddle.seed(seed)
    return pd_models.VGG(depth=depth, batch_norm=bn, width=width, **kw)


def torch_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return th_ckpt.to_numpy(model.state_dict())


def paddle_numpy(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return pd_ckpt.to_numpy(model.state_dict())


def torch_to_paddle(src: torch.nn.Module, dst: paddle.nn.Layer) -> None:
    state = convert_state_dict(torch_numpy(src), "torch2paddle")
    pd_ckpt.load_weights(dst, pd_ckpt.from_numpy(state), "<test>")


# ---------------------------------------------------------------- parameter names


def test_vgg16_torch_keys_are_the_original_ones():
    keys = list(torch_vgg("VGG16").state_dict())
    expected = [f"features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]
    assert keys == expected


@pytest.mark.parametrize("name", sorted(VGG_MODELS))
def test_paddle_keys_equal_torch_keys_after_mapping(name):
    th_keys = [k for k in torch_vgg(name).state_dict() if not k.endswith("num_batches_tracked")]
    inverse = {v: k for k, v in BN_NAMES.items()}
    pd_keys = []
    for k in paddle_vgg(name).state_dict():
        head, _, last = k.rpartition(".")
        pd_keys.append(f"{head}.{inverse.get(last, last)}")
    assert pd_keys == th_keys
    n_bn = sum(k.endswith("running_mean") for k in th_keys)
    n_conv = len(layout_convs(name))
    assert n_bn == (n_conv if VGG_MODELS[name][1] else 0)


def layout_convs(name: str) -> list[int]:
    from swa_recipe.arch import LAYOUTS

    return [v for v in LAYOUTS[VGG_MODELS[name][0]] if v != "M"]


@pytest.mark.parametrize("name", sorted(VGG_MODELS))
def test_shapes_agree_after_conversion(name):
    th = torch_numpy(torch_vgg(name))
    pd = paddle_numpy(paddle_vgg(name))
    conv = convert_state_dict(th, "torch2paddle")
    assert {k: v.shape for k, v in conv.items()} == {k: v.shape for k, v in pd.items()}


# ---------------------------------------------------------------- initialisation

INIT_WIDTH = 0.25


def init_checks(convs, linears):
    """``convs``: (weight OIHW, bias); ``linears``: (weight, bias, fan_in)."""
    assert convs and linears
    for w, b in convs:
        expected = math.sqrt(2.0 / (w.shape[2] * w.shape[3] * w.shape[0]))
        assert abs(w.std() / expected - 1) < 0.2, (w.shape, w.std(), expected)
        assert abs(w.mean()) < 0.2 * expected
        assert not np.any(b)
    for w, b, fan_in in linears:
        bound = 1.0 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound + 1e-7
        assert np.abs(w).max() > 0.8 * bound  # uniform over the whole range, not a narrower one
        assert np.abs(b).max() <= bound + 1e-7


@pytest.mark.parametrize("name", ["VGG16", "VGG19BN"])
def test_torch_init_statistics(name):
    model = torch_vgg(name, INIT_WIDTH)
    convs = [(m.weight.detach().numpy(), m.bias.detach().numpy())
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [(m.weight.detach().numpy(), m.bias.detach().numpy(), m.in_features)
               for m in model.modules() if isinstance(m, torch.nn.Linear)]
    init_checks(convs, linears)


@pytest.mark.parametrize("name", ["VGG16", "VGG19BN"])
def test_paddle_init_statistics(name):
    model = paddle_vgg(name, INIT_WIDTH)
    convs = [(m.weight.numpy(), m.bias.numpy())
             for m in model.sublayers() if isinstance(m, paddle.nn.Conv2D)]
    linears = [(m.weight.numpy(), m.bias.numpy(), m.weight.shape[0])
               for m in model.sublayers() if isinstance(m, paddle.nn.Linear)]
    assert [w.shape[0] for w, _, _ in linears] == [128, 128, 128]
    init_checks(convs, linears)


def test_paddle_init_is_seeded():
    a, b = paddle_numpy(paddle_vgg(seed=3)), paddle_numpy(paddle_vgg(seed=3))
    c = paddle_numpy(paddle_vgg(seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.0.weight"], c["features.0.weight"])


# ---------------------------------------------------------------- same weights, same logits


def compare_logits(name: str, width: float, seed: int = 0) -> tuple[float, float]:
    th_model = torch_vgg(name, width, seed=seed)
    pd_model = paddle_vgg(name, width)
    if VGG_MODELS[name][1]:  # non-trivial BN statistics and affine parameters
        gen = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for m in th_model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0.0, 0.1, generator=gen)
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.normal_(0.0, 0.1, generator=gen)
    torch_to_paddle(th_model, pd_model)
    th_model.eval()
    pd_model.eval()
    x = np.random.default_rng(seed).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.arange(8, dtype=np.int64) % 10
    with torch.no_grad():
        th_logits = th_model(torch.from_numpy(x))
        th_loss = float(tF.cross_entropy(th_logits, torch.from_numpy(y)))
    with paddle.no_grad():
        pd_logits = pd_model(paddle.to_tensor(x))
        pd_loss = float(pF.cross_entropy(pd_logits, paddle.to_tensor(y)))
    th_logits, pd_logits = th_logits.numpy(), pd_logits.numpy()
    assert np.abs(th_logits).max() > 1e-3  # not trivially zero
    return float(np.abs(th_logits - pd_logits).mean()), abs(th_loss - pd_loss)


def test_full_width_vgg16_same_logits():
    logit_diff, loss_diff = compare_logits("VGG16", 1.0)
    print(f"VGG16 width 1.0: mean |logit diff| {logit_diff:.3e}, |loss diff| {loss_diff:.3e}")
    assert logit_diff <= 1e-6
    assert loss_diff <= 1e-6


def test_vgg16bn_eval_same_logits():
    logit_diff, loss_diff = compare_logits("VGG16BN", 0.25)
    print(f"VGG16BN width 0.25: mean |logit diff| {logit_diff:.3e}, |loss diff| {loss_diff:.3e}")
    assert logit_diff <= 1e-6
    assert loss_diff <= 1e-6


def test_different_weights_give_different_logits():
    """Sanity check of the comparison: unconverted (independently initialised) twins differ."""
    th_model, pd_model = torch_vgg("VGG16", 0.25), paddle_vgg("VGG16", 0.25)
    th_model.eval()
    pd_model.eval()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        th_logits = th_model(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        pd_logits = pd_model(paddle.to_tensor(x)).numpy()
    assert np.abs(th_logits - pd_logits).mean() > 1e-4


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["VGG16", "VGG16BN"])
def test_round_trip_torch_paddle_torch_is_exact(name):
    th_model = torch_vgg(name)
    original = torch_numpy(th_model)
    pd_model = paddle_vgg(name, seed=5)
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(
        convert_state_dict(original, "torch2paddle")), "<test>")
    back_model = torch_vgg(name, seed=6)
    th_ckpt.load_weights(back_model, th_ckpt.from_numpy(
        convert_state_dict(paddle_numpy(pd_model), "paddle2torch")), "<test>")
    back = torch_numpy(back_model)
    assert set(back) == set(original)
    for k, v in original.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert back[k].dtype == v.dtype, k
        assert np.array_equal(back[k], v), k


@pytest.mark.parametrize("name", ["VGG16", "VGG16BN"])
def test_round_trip_paddle_torch_paddle_is_exact(name):
    original = paddle_numpy(paddle_vgg(name, seed=2))
    th_model = torch_vgg(name, seed=7)
    th_ckpt.load_weights(th_model, th_ckpt.from_numpy(
        convert_state_dict(original, "paddle2torch")), "<test>")
    pd_model = paddle_vgg(name, seed=8)
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(
        convert_state_dict(torch_numpy(th_model), "torch2paddle")), "<test>")
    back = paddle_numpy(pd_model)
    assert set(back) == set(original)
    for k, v in original.items():
        assert back[k].dtype == v.dtype, k
        assert np.array_equal(back[k], v), k


def test_linear_weights_are_transposed():
    state = torch_numpy(torch_vgg())
    conv = convert_state_dict(state, "torch2paddle")
    np.testing.assert_array_equal(conv["classifier.6.weight"], state["classifier.6.weight"].T)
    np.testing.assert_array_equal(conv["features.0.weight"], state["features.0.weight"])


def test_convert_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        convert_state_dict({}, "torch2jax")


# ---------------------------------------------------------------- load_weights refuses mismatches


def test_paddle_load_weights_refuses_other_width():
    wide = paddle_numpy(paddle_vgg(width=0.125))
    with pytest.raises(CheckpointError) as err:
        pd_ckpt.load_weights(paddle_vgg(), pd_ckpt.from_numpy(wide), "wide.pdparams")
    msg = str(err.value)
    assert "wide.pdparams" in msg and "'features.0.weight'" in msg
    assert "(8, 3, 3, 3)" in msg and "(4, 3, 3, 3)" in msg


def test_torch_load_weights_refuses_other_width():
    wide = torch_vgg(width=0.125).state_dict()
    with pytest.raises(CheckpointError) as err:
        th_ckpt.load_weights(torch_vgg(), wide, "wide.pt")
    msg = str(err.value)
    assert "wide.pt" in msg and "'features.0.weight'" in msg
    assert "(8, 3, 3, 3)" in msg and "(4, 3, 3, 3)" in msg


def test_load_weights_refuses_other_model():
    bn_pd = pd_ckpt.from_numpy(paddle_numpy(paddle_vgg("VGG16BN")))
    with pytest.raises(CheckpointError, match=r"lacks 'features\.2\.weight'"):
        pd_ckpt.load_weights(paddle_vgg("VGG16"), bn_pd, "bn.pdparams")
    with pytest.raises(CheckpointError, match=r"lacks 'features\.2\.weight'"):
        th_ckpt.load_weights(torch_vgg("VGG16"), torch_vgg("VGG16BN").state_dict(), "bn.pt")
    # the other way round: VGG16 weights lack VGG16BN's first BN layer
    with pytest.raises(CheckpointError, match=r"lacks 'features\.1\.weight'"):
        th_ckpt.load_weights(torch_vgg("VGG16BN"), torch_vgg("VGG16").state_dict(), "plain.pt")


def test_load_weights_refuses_unexpected_key():
    state = torch_vgg().state_dict()
    state["classifier.7.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"has 'classifier\.7\.weight', which this model"):
        th_ckpt.load_weights(torch_vgg(), state, "extra.pt")
    pd_state = paddle_vgg().state_dict()
    pd_state["classifier.7.weight"] = paddle.zeros([3])
    with pytest.raises(CheckpointError, match=r"has 'classifier\.7\.weight', which this model"):
        pd_ckpt.load_weights(paddle_vgg(), pd_state, "extra.pdparams")


def test_load_weights_accepts_averaged_model_layout():
    """``module.``-prefixed keys and ``n_averaged`` (an AveragedModel's state) load too."""
    from swa_paddle.swa_utils import AveragedModel

    src = paddle_vgg(seed=1)
    avg = AveragedModel(src)
    avg.update_parameters(src)
    dst = paddle_vgg(seed=2)
    pd_ckpt.load_weights(dst, avg.state_dict(), "avg.pdparams")
    want, got = paddle_numpy(src), paddle_numpy(dst)
    assert all(np.array_equal(want[k], got[k]) for k in want)


# ---------------------------------------------------------------- whole-checkpoint conversion


def original_layout_checkpoint(name: str = "VGG16") -> dict:
    """A torch training checkpoint as timgaripov/swa's train.py writes it (no config)."""
    model, swa_model = torch_vgg(name, seed=1), torch_vgg(name, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    return {"epoch": 3, "state_dict": model.state_dict(), "swa_state_dict": swa_model.state_dict(),
            "swa_n": 2, "optimizer": opt.state_dict()}


@pytest.mark.parametrize("name", ["VGG16", "VGG16BN"])
def test_convert_file_torch_to_paddle(tmp_path, archive, name):
    state = original_layout_checkpoint(name)
    src, dst = tmp_path / "c.pt", tmp_path / "c.pdparams"
    torch.save(state, src)
    cfg = tiny_config(archive, Arch={"model": name, "width": TINY})
    convert_file(str(src), str(dst), cfg)
    loaded = pd_ckpt.load(str(dst))
    assert loaded["epoch"] == 3 and loaded["swa_n"] == 2
    assert loaded["optimizer"] is None
    assert loaded.get("scheduler") is None
    for key in ("state_dict", "swa_state_dict"):
        want = convert_state_dict(th_ckpt.to_numpy(state[key]), "torch2paddle")
        got = pd_ckpt.to_numpy(loaded[key])
        assert set(got) == set(want)
        for k, v in want.items():
            assert np.array_equal(np.asarray(got[k]), v), (key, k)
        model = paddle_vgg(name)
        pd_ckpt.load_weights(model, loaded[key], str(dst))  # loads into the Paddle twin


def test_convert_file_paddle_to_torch(tmp_path, archive):
    model, swa_model = paddle_vgg("VGG16BN", seed=1), paddle_vgg("VGG16BN", seed=2)
    state = {"epoch": 5, "state_dict": model.state_dict(),
             "swa_state_dict": swa_model.state_dict(), "swa_n": 4, "optimizer": {"lr": 0.1},
             "scheduler": None}
    src, dst = tmp_path / "c.pdparams", tmp_path / "c.pt"
    pd_ckpt.save(state, str(src))
    cfg = tiny_config(archive, Arch={"model": "VGG16BN", "width": TINY})
    convert_file(str(src), str(dst), cfg)
    loaded = th_ckpt.load(str(dst))
    assert loaded["epoch"] == 5 and loaded["swa_n"] == 4
    assert loaded["optimizer"] is None
    for key in ("state_dict", "swa_state_dict"):
        want = convert_state_dict(pd_ckpt.to_numpy(state[key]), "paddle2torch")
        got = th_ckpt.to_numpy(loaded[key])
        assert set(got) == set(want)
        for k, v in want.items():
            assert np.array_equal(got[k], v), (key, k)
        th_ckpt.load_weights(torch_vgg("VGG16BN"), loaded[key], str(dst))


def test_convert_file_refuses_wrong_width(tmp_path, archive):
    src = tmp_path / "c.pt"
    torch.save(original_layout_checkpoint(), src)
    cfg = tiny_config(archive, Arch={"width": 0.125})
    with pytest.raises(CheckpointError, match=r"holds 60270 weights, but VGG16 at width 0\.125 "
                                              r"has 239538"):  # counted before building
        convert_file(str(src), str(tmp_path / "c.pdparams"), cfg)
    assert not (tmp_path / "c.pdparams").exists()


def test_convert_file_refuses_same_framework(tmp_path, archive):
    src = tmp_path / "c.pt"
    torch.save(original_layout_checkpoint(), src)
    with pytest.raises(CheckpointError, match="one must end in .pt"):
        convert_file(str(src), str(tmp_path / "d.pt"), tiny_config(archive))

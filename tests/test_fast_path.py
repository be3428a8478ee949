"""The torch twin's GPU path, checked on the CPU: ``Data.on_device`` builds byte-identical batches
and bit-identical dropout masks on the device, so a run trains exactly as with the host loader;
``Global.channels_last`` and ``Global.compile`` train, checkpoint plain weights and resume
exactly; Paddle refuses all three in one line."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from swa_recipe.config import ConfigError
from swa_recipe.data.cifar import PAD, augment
from swa_recipe.dropout import keep_masks
from swa_recipe.logs import read_metrics
from swa_torch import data, device_data, device_dropout, swa_utils
from swa_torch.models import build_model

# ------------------------------------------------------------------------------ batches


def torch_config(archive, sections: dict, **global_) -> dict:
    """``tiny_config`` of the torch twin: ``sections``, with ``global_`` added to Global."""
    merged = {section: dict(values) for section, values in sections.items()}
    merged.setdefault("Global", {}).update(framework="torch", **global_)
    return tiny_config(archive, **merged)


# Where the device path is checked: the CPU always, and a CUDA GPU when this machine has one
# (there CUDA's own kernels must give the same bytes and bits).
DEVICES = ["cpu", *(["gpu"] if torch.cuda.is_available() else [])]


def host_and_device(archive, rank: int = 0, world_size: int = 1, device: str = "cpu",
                    **data_keys):
    """(host train, host test), (device train, device test) loaders of one config, the
    device ones on ``device`` ("cpu" or "gpu")."""
    cfg = torch_config(archive, {"Data": data_keys})
    device_cfg = torch_config(archive, {"Data": {**data_keys, "on_device": True}})
    return (data.build_loaders(cfg, rank, world_size),
            data.build_loaders(device_cfg, rank, world_size, device=device))


def epoch_batches(loader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.batch_sampler.set_epoch(epoch, start)
    return list(loader)


def assert_same_batches(host: list, device: list) -> None:
    assert len(host) == len(device) > 0
    for (hx, hy), (dx, dy) in zip(host, device, strict=True):
        assert dx.dtype == hx.dtype == torch.float32 and dy.dtype == hy.dtype == torch.int64
        assert dx.shape == hx.shape and torch.equal(dy.cpu(), hy)
        assert dx.cpu().numpy().tobytes() == hx.numpy().tobytes()  # -0.0 and 0.0 differ here


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank, world_size, subsets", [
    (0, 1, {}), (0, 2, {}), (1, 2, {}), (0, 1, {"train_subset": 70, "test_subset": 30})])
def test_device_batches_are_byte_identical_to_the_host_loaders(archive, rank, world_size,
                                                               subsets, device):
    """Shuffled, augmented training batches of several epochs (the short last one included)
    and the unshuffled test batches, whole and as either rank's shard, whole sets and subsets."""
    (host_train, host_test), (dev_train, dev_test) = host_and_device(archive, rank, world_size,
                                                                     device, **subsets)
    assert isinstance(dev_train, device_data.DeviceLoader)
    for epoch in (0, 1, 5):
        batches = epoch_batches(dev_train, epoch)
        assert_same_batches(epoch_batches(host_train, epoch), batches)
        assert len(dev_train) == len(host_train)
    sizes = [len(y) for _, y in batches]
    assert sizes[-1] < sizes[0]  # the short last batch
    assert_same_batches(epoch_batches(host_test, 3), epoch_batches(dev_test, 3))


def test_device_loader_resumes_mid_epoch_and_repeats_an_epoch(archive):
    (host_train, _), (dev_train, _) = host_and_device(archive)
    whole = epoch_batches(dev_train, 2)
    assert_same_batches(epoch_batches(host_train, 2, start=2), epoch_batches(dev_train, 2, 2))
    assert_same_batches(whole[2:], epoch_batches(dev_train, 2, start=2))
    assert_same_batches(whole, epoch_batches(dev_train, 2))  # the cached epoch, from 0 again
    assert not torch.equal(whole[0][0], epoch_batches(dev_train, 3)[0][0])


def test_crop_and_flip_is_cifar_augment_at_every_offset():
    """All (2 * PAD + 1)**2 crops, flipped and not, of random images: the index gather equals
    numpy's pad-crop-flip, padding zeros included."""
    rng = np.random.default_rng(3)
    offsets = np.array(list(itertools.product(range(2 * PAD + 1), repeat=2)) * 2)
    flips = np.repeat([False, True], len(offsets) // 2)
    images = rng.integers(0, 256, (len(offsets), 3, 32, 32), dtype=np.uint8)
    want = np.stack([augment(im, o, f) for im, o, f in zip(images, offsets, flips, strict=True)])
    got = device_data.crop_and_flip(torch.from_numpy(images), torch.from_numpy(offsets),
                                    torch.from_numpy(flips))
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), want)


def test_update_bn_over_device_batches_equals_the_host_loaders(archive):
    """``update_bn`` (SWA's BN recompute) reads a device loader as it reads the host one."""
    (host_train, _), (dev_train, _) = host_and_device(archive)
    cfg = tiny_config(archive, Arch={"model": "VGG16BN"})
    models = [build_model(cfg) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model, loader in zip(models, (host_train, dev_train), strict=True):
        loader.batch_sampler.set_epoch(1)
        swa_utils.update_bn(loader, model)
    stats = [{k: v for k, v in m.state_dict().items() if "running" in k} for m in models]
    assert stats[0] and all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])


def test_update_bn_runs_channels_last_on_the_cpu_and_gives_the_weights_back(archive):
    """The trainer's ``update_bn`` runs its forward in ``channels_last`` on the CPU (issue 25:
    oneDNN's NHWC kernels, 0.6 of the NCHW time): the statistics are NCHW's within float32
    rounding and the weights come back bit for bit, in NCHW."""
    from swa_torch.fast import channels_last_on_cpu
    from swa_torch.trainer import Trainer

    trainer = Trainer(torch_config(archive, {"Arch": {"model": "VGG16BN"}}))
    model = trainer.swa_model.module
    reference = build_model(trainer.cfg)
    reference.load_state_dict(model.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    layouts = []
    model.features[1].register_forward_pre_hook(lambda _, args: layouts.append(  # the first BN
        args[0].is_contiguous(memory_format=torch.channels_last)))
    trainer.update_bn()
    assert layouts and all(layouts), layouts
    assert all(torch.equal(p, w) and p.is_contiguous()
               for p, w in zip(model.parameters(), weights, strict=True))
    trainer.train_loader.batch_sampler.set_epoch(0)
    swa_utils.update_bn(trainer.train_loader, reference)
    for key, value in reference.state_dict().items():
        if "running" in key:
            error = (model.state_dict()[key] - value).abs().max() / value.abs().max()
            assert error < 1e-4, (key, float(error))  # rounding: about 1e-5
    model.to(memory_format=torch.channels_last)  # Global.channels_last: already there, stays
    with channels_last_on_cpu(model):
        pass
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.features[0].weight.is_contiguous()


# ------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**64 - 1])
def test_device_masks_are_bit_identical_to_keep_masks(seed, device):
    """Every bit of the int64 hash: seeds at the word edges (2**64 - 1 wraps to 0 on +1),
    epochs, sample indices up to CIFAR's last, three layers, p at and near its edges."""
    indices = np.concatenate([[0, 49999], np.random.default_rng(seed % 97).permutation(50000)
                              [:61]])
    on_device = torch.from_numpy(indices).to(device_data.training_device(device))
    for epoch, p in itertools.product((0, 7, 10**6), (0.0, 0.5, 0.3, 2.0**-60, 0.999999)):
        host = keep_masks(seed, epoch, indices, p, [8, 40, 3])
        masks = device_dropout.keep_masks(seed, epoch, on_device, p, [8, 40, 3])
        for h, d in zip(host, masks, strict=True):
            assert d.device == on_device.device and d.dtype == torch.float32
            assert torch.equal(torch.from_numpy(h), d.cpu())
        dropped = float((masks[1] == 0).double().mean())
        assert abs(dropped - p) < 0.05  # masks, not all ones or all zeros


def test_as_int64_keeps_the_low_64_bits():
    for value in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64 + 5, -1):
        signed = device_dropout.as_int64(value)
        assert -2**63 <= signed < 2**63 and signed % 2**64 == value % 2**64


# ------------------------------------------------------------------------------ runs


def train(archive, out: Path, epochs: int, sections: dict, **global_
          ) -> tuple[list[dict], dict]:
    """A torch run of ``epochs`` in ``out``: its metrics rows and its last checkpoint."""
    from swa_recipe.loop import fit
    from swa_torch.trainer import Trainer

    cfg = torch_config(archive, sections, epochs=epochs, dir=str(out), **global_)
    fit(Trainer(cfg), cfg)
    return last_results(out, epochs)


def last_results(out: Path, epochs: int) -> tuple[list[dict], dict]:
    from swa_torch import checkpoint

    return (read_metrics(str(out / "metrics.csv")),
            checkpoint.load(str(out / f"checkpoint-{epochs}.pt")))


def interrupted_and_resumed(archive, out: Path, epochs: int, stop_at: tuple[int, int],
                            sections: dict) -> tuple[list[dict], dict]:
    """A torch run stopped by SIGTERM after step ``stop_at[1]`` of epoch ``stop_at[0]`` (a
    mid-epoch checkpoint), then resumed from it in a new trainer: metrics rows, last checkpoint."""
    from swa_recipe.loop import Interrupted, fit
    from swa_torch.trainer import Trainer

    cfg = torch_config(archive, sections, epochs=epochs, dir=str(out))
    trainer, steps = Trainer(cfg), []
    step = trainer.step

    def counted_step(*args):
        steps.append(len(steps))
        if len(steps) == stop_at[0] * trainer.iters + stop_at[1]:
            signal.raise_signal(signal.SIGTERM)  # fit's handler: stop after this step
        return step(*args)

    trainer.step = counted_step
    with pytest.raises(Interrupted) as stopped:
        fit(trainer, cfg)
    assert stopped.value.path.endswith(f"checkpoint-{stop_at[0] + 1}-iter{stop_at[1]}.pt")
    return train(archive, out, epochs, sections, resume=stopped.value.path)


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("state_dict", "swa_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_on_device_run_equals_the_host_run_bit_for_bit(archive, tmp_path):
    """Dropout 0.5 (device masks), SWA, a short last batch; the device run also stops
    mid-epoch and resumes. Its metrics rows and final weights equal the host run's."""
    host_rows, host_state = train(archive, tmp_path / "host", 2, {"Arch": {"dropout": 0.5}})
    rows, state = interrupted_and_resumed(archive, tmp_path / "device", 2, (1, 2),
                                          {"Arch": {"dropout": 0.5}, "Data": {"on_device": True}})
    assert state["config"]["Data"]["on_device"] is True
    assert without_time(rows) == without_time(host_rows) and len(rows) == 2
    assert_same_weights(state, host_state)
    switched = continued_on_device(tmp_path / "host" / "checkpoint-1.pt", tmp_path / "switched")
    assert_same_weights(switched, host_state)


def continued_on_device(path: Path, out: Path) -> dict:
    """A host run's checkpoint continued with ``-o Data.on_device=true`` (a key that may change
    on resume: the batches are the same) as ``train.py --resume`` configures it; the last
    checkpoint."""
    from swa_apps.cli import train_parser
    from swa_recipe.config import continued_config
    from swa_recipe.loop import fit
    from swa_torch import checkpoint
    from swa_torch.trainer import Trainer

    out.mkdir()
    copy = out / path.name
    copy.write_bytes(path.read_bytes())
    args = train_parser().parse_args(["--resume", str(copy), "-o", "Data.on_device=true"])
    cfg = continued_config(args, checkpoint.load(str(copy))["config"], str(copy))
    assert cfg["Data"]["on_device"] is True and cfg["Global"]["dir"] == str(out)
    fit(Trainer(cfg), cfg)
    return checkpoint.load(str(out / f"checkpoint-{cfg['Global']['epochs']}.pt"))


def assert_trains_and_resumes(archive, tmp_path, epochs: int, sections: dict) -> list[dict]:
    """A run with the options in ``sections``: its loss finite and falling, its checkpoint the
    plain module's keys, and the run resumed from its mid-run checkpoint equal to it."""
    rows, straight = train(archive, tmp_path / "a", epochs, sections)
    _, resumed = train(archive, tmp_path / "b", epochs, sections,
                       resume=str(tmp_path / "a" / "checkpoint-1.pt"))
    losses = [r["tr_loss"] for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    plain = build_model(torch_config(archive, sections)).state_dict().keys()
    assert straight["state_dict"].keys() == plain
    assert_same_weights(straight, resumed)
    return rows


def test_channels_last_trains_and_resumes_exactly(archive, tmp_path):
    from swa_torch.trainer import Trainer

    sections = {"Global": {"channels_last": True}, "Arch": {"dropout": 0.5}}
    trainer = Trainer(torch_config(archive, sections))
    for model in (trainer.model, trainer.swa_model.module):
        conv = model.features[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert_trains_and_resumes(archive, tmp_path, 2, sections)


def test_compiled_run_trains_and_resumes_exactly(archive, tmp_path):
    """The GPU recipe's three options together, at batch 25 (four equal batches: one compiled
    graph); the checkpoints hold no ``_orig_mod.`` keys. Prints the compile time."""
    from swa_torch.trainer import Trainer

    sections = {"Global": {"compile": True, "channels_last": True},
                "Data": {"on_device": True, "batch_size": 25}, "Arch": {"dropout": 0.5}}
    trainer = Trainer(torch_config(archive, sections))
    assert isinstance(trainer.net, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.net._orig_mod is trainer.model
    begin = time.perf_counter()
    rows = assert_trains_and_resumes(archive, tmp_path, 2, sections)
    print(f"compiled run and resumed run: {time.perf_counter() - begin:.1f} s (the first "
          f"run's epochs {rows[0]['time']:.1f} s and {rows[1]['time']:.1f} s)")


# ------------------------------------------------------------------------------ Paddle


@pytest.mark.parametrize("section, key", [("Global", "compile"), ("Global", "channels_last"),
                                          ("Data", "on_device")])
def test_paddle_refuses_the_torch_speed_options_in_one_line(archive, section, key):
    def config(framework: str) -> dict:
        sections = {"Global": {"framework": framework}}
        sections.setdefault(section, {})[key] = True
        return tiny_config(archive, **sections)

    with pytest.raises(ConfigError) as refused:
        config("paddle")
    message = str(refused.value)
    assert f"{section}.{key}=true" in message and "framework torch" in message
    assert "\n" not in message
    assert config("torch")[section][key] is True

"""Hardening, round 2, second part (issue 21): checkpoints that are not regular files, the
exported config against the program, atomic config writes, one-line errors for any path,
model sizes bounded before they are built, the TIPC scripts and images.

Each test crafts its own hostile input and fails without the fix it names.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture
def alarm():
    """A hang fails the test after 20 s instead of blocking the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- 1. checkpoints that are FIFOs or devices -------------------------------------------------

def special_checkpoints(tmp_path: Path) -> dict[str, str]:
    """Paths a --resume or --model_path could name that are no regular file."""
    fifo = tmp_path / "checkpoint-3.pdparams"
    os.mkfifo(fifo)
    tfifo = tmp_path / "checkpoint-3.pt"
    os.mkfifo(tfifo)
    link = tmp_path / "link.pt"
    link.symlink_to(tfifo)
    return {"fifo": str(fifo), "torch_fifo": str(tfifo), "symlink_to_fifo": str(link),
            "urandom": "/dev/urandom", "zero": "/dev/zero", "folder": str(tmp_path)}


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_a_checkpoint_that_is_a_fifo_or_a_device_is_refused_without_reading(tmp_path, alarm,
                                                                           framework):
    from swa_apps.twins import import_twin
    from swa_recipe.checkpoint import CheckpointError

    twin = import_twin(framework)
    for name, path in special_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError, match="not a regular file|cannot read") as info:
            twin.checkpoint.load(path)
        assert "\n" not in str(info.value), name


@pytest.mark.parametrize("argv", [
    ["train", "--resume", "{fifo}"], ["train", "--resume", "/dev/urandom"],
    ["train", "--framework", "torch", "--resume", "/dev/urandom"],
    ["eval", "--model_path", "{torch_fifo}"], ["eval", "--model_path", "/dev/urandom"],
])
def test_resume_or_eval_of_a_fifo_or_a_device_is_one_line(tmp_path, alarm, capsys, argv):
    from swa_apps import cli

    paths = special_checkpoints(tmp_path)
    main, *rest = [a.format(**paths) for a in argv]
    parser, run = {"train": (cli.train_parser, cli.train_main),
                   "eval": (cli.eval_parser, cli.eval_main)}[main]
    args = parser().parse_args(rest)
    assert cli.run(lambda: run(args), False) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a regular file" in err, err


# --- 2. the exported config.yaml against the program ------------------------------------------

def small_export(framework: str, save_dir: Path) -> Path:
    """The project's own export of a small 10-class VGG16."""
    from conftest import tiny_config
    from swa_apps.twins import import_export, import_twin
    from swa_recipe.predict import export_config

    cfg = export_config(tiny_config("/nonexistent", Global={"framework": framework}))
    save_dir.mkdir(parents=True, exist_ok=True)
    module = import_twin(framework).models.build_model(cfg)
    import_export(framework).export(module, str(save_dir))
    return save_dir


def a_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    return path


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_a_config_of_another_class_count_beside_an_export_is_refused(tmp_path, capsys,
                                                                     framework):
    from swa_apps.cli import run
    from swa_apps.inference import infer_main, infer_parser
    from swa_recipe.config import default_config, save_config, validate

    folder = small_export(framework, tmp_path / "export")
    cfg = default_config()
    cfg["Data"]["dataset"] = "CIFAR100"
    save_config(validate(cfg), str(folder / "config.yaml"))
    args = infer_parser().parse_args(["--model_dir", str(folder), "--img_path",
                                      str(a_png(tmp_path / "x.png"))])
    assert run(lambda: infer_main(args), False) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "declares 100 classes" in captured.err, captured
    assert "scores 10" in captured.err and captured.out == ""


# --- 3. config.yaml written atomically ---------------------------------------------------------

def test_save_config_replaces_a_symlink_and_never_writes_through_it(tmp_path):
    from swa_recipe.config import default_config, load_yaml, save_config

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "config.yaml").symlink_to(victim)
    save_config(default_config(), str(tmp_path / "config.yaml"))
    assert victim.read_text() == "precious"
    assert not (tmp_path / "config.yaml").is_symlink()
    assert load_yaml(str(tmp_path / "config.yaml")) == default_config()
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_config_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path,
                                                                          monkeypatch):
    import errno

    from swa_recipe.config import ConfigError, default_config, save_config

    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ConfigError, match="No space left") as info:
        save_config(default_config(), str(path))
    assert "\n" not in str(info.value)
    assert path.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


def test_a_folder_named_config_yaml_is_one_line(tmp_path):
    from swa_recipe.config import ConfigError, default_config, save_config

    (tmp_path / "config.yaml").mkdir()
    (tmp_path / "config.yaml" / "keep").write_text("x")
    with pytest.raises(ConfigError, match="is a folder") as info:
        save_config(default_config(), str(tmp_path / "config.yaml"))
    assert "\n" not in str(info.value)
    assert (tmp_path / "config.yaml" / "keep").read_text() == "x"
    with pytest.raises(ConfigError, match="cannot write"):
        save_config(default_config(), str(tmp_path / "missing" / "config.yaml"))


# --- 4. one line whatever a path holds ----------------------------------------------------------

@pytest.mark.parametrize("name", ["two\nlines.pt", "cr\rreturn.pdparams", "esc\x1b[2Jclear.pt",
                                  "sep\u2028line.pt", "nel\x85x.pt"])
def test_an_error_naming_a_path_with_control_characters_is_one_line(tmp_path, capsys, name):
    from swa_apps import cli

    for argv, exists in ((["--model_path", str(tmp_path / name)], False),
                         (["--model_path", str(tmp_path / name)], True)):
        if exists:
            (tmp_path / name).write_bytes(b"not a checkpoint")
        args = cli.eval_parser().parse_args(argv)
        assert cli.run(lambda a=args: cli.eval_main(a), False) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.endswith("\n"), repr(err)
        assert "\x1b" not in err and err.startswith("error: ")


# --- 5. model sizes bounded before a model is built ---------------------------------------------

def oversized_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    """Small .pdparams files whose config asks for a huge model: name -> (file, key named)."""
    import pickle

    from swa_recipe.config import default_config

    def with_arch(**arch) -> dict:
        cfg = default_config()
        cfg["Arch"].update(arch)
        return cfg

    asks = {"width_4": (with_arch(width=4.0), "Arch.width"),
            "width_1e6": (with_arch(width=1e6), "Arch.width"),
            "depth_9002": (with_arch(model="PreResNet110", depth=9002), "Arch.depth"),
            "classes_10_9": (with_arch(num_classes=10**9), "Arch.num_classes")}
    out = {}
    for name, (cfg, key) in asks.items():
        path = root / f"{name}.pdparams"
        path.write_bytes(pickle.dumps({"epoch": 1, "state_dict": {}, "optimizer": {},
                                       "config": cfg}, protocol=4))
        assert path.stat().st_size < 2000
        out[name] = (path, key)
    return out


def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_building(tmp_path, archive):
    """Under the hostile suite's memory cap and time limit: eval and --resume of each."""
    from test_hostile import assert_all_refused, run_worker

    cases, expect = [], {}
    for name, (path, key) in oversized_checkpoints(tmp_path).items():
        for main, argv in (("eval", ["--model_path", str(path), "--data_path", str(archive)]),
                           ("train", ["--resume", str(path), "--data_path", str(archive)])):
            cases.append({"id": f"{main}-{name}", "main": main, "argv": argv})
            expect[f"{main}-{name}"] = [key, "must be in"]
    assert_all_refused(run_worker(cases, tmp_path), expect)


def largest_model_checkpoints(root: Path) -> dict[str, Path]:
    """Checkpoints of a few KB, both twins, whose config is within every bound but names the
    largest model the bounds allow (WideResNet28x10 at width 2: 146 million weights, 600 MB)."""
    import pickle

    import numpy as np
    import torch

    from swa_recipe.config import default_config

    cfg = default_config()
    cfg["Arch"].update(model="WideResNet28x10", width=2.0, num_classes=10)
    state = {"epoch": 1, "optimizer": {}, "config": cfg}
    paddle_file, torch_file = root / "wrn.pdparams", root / "wrn.pt"
    paddle_file.write_bytes(pickle.dumps(
        {**state, "state_dict": {"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)}}))
    torch.save({**state, "state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, torch_file)
    assert paddle_file.stat().st_size < 4000 and torch_file.stat().st_size < 4000
    return {"paddle": paddle_file, "torch": torch_file}


def test_a_small_checkpoint_naming_the_largest_model_is_refused_before_building(
        tmp_path, archive, monkeypatch):
    """Under a 300 MB cap above what Paddle and torch take (the model alone would need 600),
    eval, --resume and convert of each twin's file: one line, before any model is built."""
    from test_hostile import assert_all_refused, run_worker

    monkeypatch.setenv("HOSTILE_LIMIT_MB", "300")
    cases, expect = [], {}
    for framework, path in largest_model_checkpoints(tmp_path).items():
        other = tmp_path / ("out.pt" if framework == "paddle" else "out.pdparams")
        for main, argv in (("eval", ["--model_path", str(path), "--data_path", str(archive)]),
                           ("train", ["--resume", str(path), "--data_path", str(archive)]),
                           ("convert", [str(path), str(other)])):
            cases.append({"id": f"{main}-{framework}", "main": main, "argv": argv})
            expect[f"{main}-{framework}"] = ["holds 108 weights", "WideResNet28x10 at width 2",
                                             "has 145887370"]
    assert_all_refused(run_worker(cases, tmp_path), expect)
    assert not list(tmp_path.glob("out.*"))


@pytest.mark.parametrize("model, depth", [("VGG16", None), ("VGG19BN", None),
                                          ("PreResNet110", None), ("PreResNet164", None),
                                          ("PreResNet110", 20), ("WideResNet28x10", 10)])
def test_the_weight_count_is_what_both_twins_build(model, depth):
    """``modelsize.weight_count`` is the check's lower bound: exactly the trainable weights of
    each twin's model (an overcount would refuse good checkpoints)."""
    import torch

    from swa_paddle.models import build_model as paddle_model
    from swa_recipe.config import default_config, merge, validate
    from swa_recipe.modelsize import weight_count
    from swa_torch.models import build_model as torch_model

    for width in (0.0625, 0.3, 1.0):
        cfg = validate(merge(default_config(), {"Arch": {"model": model, "depth": depth,
                                                         "width": width}}, "test"))
        with torch.device("meta"):
            in_torch = sum(p.numel() for p in torch_model(cfg).parameters())
        in_paddle = sum(int(p.size) for p in paddle_model(cfg).parameters()
                        if not p.stop_gradient)
        assert weight_count(cfg) == in_torch == in_paddle, (model, depth, width)


def test_every_shipped_config_is_within_the_model_bounds():
    from swa_recipe.config import load_yaml

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_yaml(str(path))  # coerces every key against the schema: raises when out of bounds


# --- 6. TIPC scripts: config values are data ------------------------------------------------

def tipc_config(tmp_path: Path, edit=None) -> Path:
    """The committed VGG16 config, output and data under ``tmp_path``, then ``edit``ed."""
    text = (ROOT / "test_tipc" / "configs" / "VGG16" / "train_infer_python.txt").read_text()
    text = text.replace("./test_tipc/output", str(tmp_path / "output"))
    text = text.replace("./test_tipc/data", str(tmp_path / "data"))
    path = tmp_path / "train_infer_python.txt"
    path.write_text(edit(text) if edit else text)
    return path


def tipc(config: Path, mode: str, cwd: Path = ROOT):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": os.path.dirname(sys.executable)
           + os.pathsep + os.environ["PATH"]}
    return subprocess.run(["bash", str(ROOT / "test_tipc" / "test_train_inference_python.sh"),
                           str(config), mode], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_tipc_config_values_are_never_run_as_shell(tmp_path):
    """``--img_path:./test_images; touch X``, a ``$(...)`` and backticks in other values: the
    chain passes them as arguments (the stage fails), and X is never created."""
    marker = tmp_path / "X"
    ckpt = tmp_path / "model.pdparams"
    ckpt.write_bytes(b"")
    config = tipc_config(tmp_path, lambda t: t.replace(
        "--img_path:./test_images", f"--img_path:./test_images; touch {marker}").replace(
        "train_model:null", f"train_model:{ckpt}$(touch {marker})").replace(
        "--device:cpu", f"--device:cpu`touch {marker}`"))
    proc = tipc(config, "whole_infer")
    assert proc.returncode == 1 and "Run failed with command - export" in proc.stdout, proc
    assert not marker.exists()
    config = tipc_config(tmp_path, lambda t: t.replace(
        "--img_path:./test_images", f"--img_path:./test_images; touch {marker}").replace(
        "python:python", f"python:python;touch {marker}"))
    assert tipc(config, "whole_infer").returncode != 0 and not marker.exists()


@pytest.mark.parametrize(("key", "words"), [
    ("inference:deploy/inference_python/infer.py", "'inference'"),
    ("--img_path:./test_images", "'--img_path'"),
    ("python:python", "'python'"),
    ("--dir:{out}/VGG16", "'--dir'"),
    ("--save_dir:{out}/VGG16/inference", "'--save_dir'"),
])
def test_tipc_refuses_a_config_without_a_required_key(tmp_path, key, words):
    out = tmp_path / "output"
    name = key.format(out=out).split(":")[0]
    config = tipc_config(tmp_path, lambda t: t.replace(key.format(out=out), f"{name}:"))
    proc = tipc(config, "lite_train_lite_infer", cwd=tmp_path)
    assert proc.returncode == 2 and words in proc.stderr, proc
    assert "Run successfully" not in proc.stdout
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").rglob("*.log"))


def test_tipc_an_empty_config_runs_nothing_and_writes_no_logs_at_the_root(tmp_path):
    config = tmp_path / "empty.txt"
    config.write_text("")
    proc = tipc(config, "lite_train_lite_infer", cwd=tmp_path)
    assert proc.returncode == 2 and "Run successfully" not in proc.stdout, proc
    config = tipc_config(tmp_path, lambda t: t.replace(f"--dir:{tmp_path}/output/VGG16",
                                                       "--dir:/"))
    proc = tipc(config, "lite_train_lite_infer", cwd=tmp_path)
    assert proc.returncode == 2 and "file-system root" in proc.stderr, proc


def test_tipc_a_stage_with_an_empty_command_fails(tmp_path):
    config = tipc_config(tmp_path, lambda t: t.replace(
        "norm_train:lite_train_lite_infer=train.py --config configs/lite.yaml|",
        "norm_train:lite_train_lite_infer=|"))
    proc = tipc(config, "lite_train_lite_infer", cwd=tmp_path)
    assert proc.returncode == 2 and "'norm_train'" in proc.stderr, proc
    assert "Run successfully" not in proc.stdout


# --- 7. images -------------------------------------------------------------------------------

def png_bomb(side: int) -> bytes:
    """A valid PNG of ``side`` x ``side`` black RGB pixels, compressed to a few hundred KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\0" * (1 + 3 * side)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0,
                                                              0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def hostile_images(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words of the one-line refusal)."""
    import io

    from PIL import Image

    def saved(fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt, **kw)
        return buf.getvalue()

    files = {
        "bomb_13300.png": (png_bomb(13300), "13300 x 13300 pixels"),
        "wide_header.bmp": (saved("BMP")[:18] + (10**6).to_bytes(4, "little")
                            + (10**6).to_bytes(4, "little") + saved("BMP")[26:],
                            "DecompressionBombError"),  # PIL's own check, in the header
        "photoshop.png": (b"8BPS\x00\x01" + b"\0" * 40, "cannot be read as an image"),
        "postscript.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
                           "cannot be read as an image"),
        "gif.png": (saved("GIF"), "cannot be read as an image"),
        "tiff.jpg": (saved("TIFF"), "cannot be read as an image"),
        "truncated.jpg": (saved("JPEG")[:40], "cannot be read as an image"),
        "bad_huffman.jpg": (saved("JPEG")[:200] + b"\xff" * 64 + b"\xff\xd9",
                            "cannot be read as an image"),
        "png_bad_crc.png": (saved("PNG")[:30] + b"\0\0\0\0" + saved("PNG")[34:],
                            "cannot be read as an image"),
    }
    out = {}
    for name, (raw, words) in files.items():
        (root / name).write_bytes(raw)
        out[name] = (root / name, words)
    os.mkfifo(root / "fifo.png")
    out["fifo.png"] = (root / "fifo.png", "not a regular file")
    return out


def hostile_model_folders(root: Path) -> dict[str, tuple[Path, str]]:
    """Folders handed to infer.py as an exported model: name -> (folder, words refused)."""
    import zipfile

    folders = {"empty": {}, "garbage_program": {"inference.pdmodel": b"\x08" * 64,
                                                "inference.pdiparams": b"\0" * 64},
               "text_pt2": {"inference.pt2": b"not a zip"},
               "pickle_in_pt2": {"inference.pt2": None}}
    words = {"empty": "holds no exported model", "garbage_program": "not a Paddle program",
             "text_pt2": "inference.pt2: refusing to load: not a zip archive",
             "pickle_in_pt2": "inference.pt2: refusing to load"}
    out = {}
    for name, files in folders.items():
        folder = root / f"model_{name}"
        folder.mkdir()
        for file, raw in files.items():
            if raw is None:  # a zip whose weights are a pickle that would run code
                with zipfile.ZipFile(folder / file, "w") as archive:
                    archive.writestr("model/data/weights/weight_0", b"\x80\x02cposix\n"
                                     b"system\nq\x00X\x04\x00\x00\x00trueq\x01\x85R.")
            else:
                (folder / file).write_bytes(raw)
        out[name] = (folder, words[name])
    return out


def test_hostile_images_are_one_line_under_the_memory_cap(tmp_path):
    """predict.py, and infer.py on both twins' exports, on each image, and infer.py on
    hostile model folders, under the hostile suite's memory cap and time limit; the
    13300 x 13300 PNG (a few hundred KB) would decode to 530 MB before the check."""
    import paddle
    from test_hostile import assert_all_refused, run_worker

    from conftest import tiny_config
    from swa_paddle import checkpoint
    from swa_paddle.models import build_model

    ckpt = tmp_path / "w.pdparams"
    cfg = tiny_config("/nonexistent")
    checkpoint.save(build_model(cfg).state_dict(), str(ckpt))
    del paddle
    exports = {fw: small_export(fw, tmp_path / f"export_{fw}") for fw in ("paddle", "torch")}
    cases, expect = [], {}
    for name, (path, words) in hostile_images(tmp_path).items():
        assert path.is_fifo() or path.stat().st_size < 1 << 20
        cases.append({"id": name, "main": "predict",
                      "argv": ["--model_path", str(ckpt), "--img_path", str(path),
                               "--model", "VGG16", "-o", "Arch.width=0.0625"]})
        expect[name] = [words]
        for framework in ("paddle", "torch"):
            cases.append({"id": f"infer-{framework}-{name}", "main": "infer",
                          "argv": ["--model_dir", str(exports[framework]), "--img_path",
                                   str(path)]})
            expect[f"infer-{framework}-{name}"] = [words]
    png = a_png(tmp_path / "ok.png")
    for name, (folder, words) in hostile_model_folders(tmp_path).items():
        cases.append({"id": f"model-{name}", "main": "infer",
                      "argv": ["--model_dir", str(folder), "--img_path", str(png)]})
        expect[f"model-{name}"] = [words]
    results = run_worker(cases, tmp_path)
    assert_all_refused(results, expect)
    assert all("Warning" not in r["stderr"] for r in results.values())


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from swa_recipe.predict import read_image

    grey = np.full((32, 32), 32896, np.uint16)  # 128 * 257
    grey[0, 0], grey[0, 1] = 0, 65535
    Image.fromarray(grey).save(tmp_path / "g.png")  # PNG, 16-bit greyscale
    with Image.open(tmp_path / "g.png") as check:
        assert check.mode == "I;16"
    out = read_image(str(tmp_path / "g.png"))
    assert out.shape == (3, 32, 32) and int(out[0, 5, 5]) == 128
    assert int(out[0, 0, 0]) == 0 and int(out[1, 0, 1]) == 255


def test_palette_image_with_transparency_keeps_its_colours_without_warnings(tmp_path, recwarn):
    import numpy as np
    from PIL import Image

    from swa_recipe.predict import read_image

    img = Image.new("P", (32, 32), 1)
    img.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    img.save(tmp_path / "p.png", transparency=b"\x80\xc0")  # partial alpha: kept as bytes,
    # which PIL's convert("RGB") warns about
    out = read_image(str(tmp_path / "p.png"))
    assert tuple(int(v) for v in out[:, 3, 3]) == (200, 30, 40)
    assert np.all(out[0] == 200)
    assert not [w for w in recwarn if "Palette images" in str(w.message)]


# --- 8. the promises are written down ---------------------------------------------------------

def test_reliability_doc_states_the_promises_for_each_kind_of_input():
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text[text.index("### What is promised for each kind of input"):]
    for words in ("**Exported models are data, not programs.**", "allow-list",
                  "one twin's files", "**Images**", "4096 x 4096", "**Study files**",
                  "**TIPC scripts**", "never through `eval`", "no logs under `/logs`",
                  "**Numbers**", "`swa_recipe.numbers`", "**Writes**", "`swa_recipe.modelsize`"):
        assert words in section, words


# --- 8. one number reader (swa_recipe.numbers) --------------------------------------------------

HUGE = "9" * 5000  # over Python's 4300-digit int/str limit


def test_the_number_reader_refuses_huge_nan_and_long_values_in_short_messages():
    from swa_recipe.numbers import NumberError, to_float, to_int

    refusals = [(lambda: to_int(HUGE, "x"), "x is a value of 5000 characters"),
                (lambda: to_int(10**5000, "x"), "got <an integer of 16610 bits>"),
                (lambda: to_int(True, "x"), "x must be an integer, got True"),
                (lambda: to_int("3", "x", text=False), "x must be an integer, got '3'"),
                (lambda: to_int("-1", "x", 0), "x must be an integer in [0, 2**63 - 1]"),
                (lambda: to_float("nan", "x"), "x must be a finite number, got nan"),
                (lambda: to_float(10**5000, "x"), "x must be a finite number"),
                (lambda: to_float("1" * 10**6, "x"), "x is a value of 1000000 characters"),
                (lambda: to_float("x" * 60, "x"), "x must be a number, got 'xxxx")]
    for call, words in refusals:
        with pytest.raises(NumberError) as info:
            call()
        assert words in str(info.value) and len(str(info.value)) < 200, str(info.value)
    assert to_float("5e-4", "x") == 5e-4 and to_float(2**62, "x") == 2.0**62
    assert to_int(" 12 ", "x", 0, 12) == 12


@pytest.mark.parametrize("make_parser, argv, words", [
    ("infer", ["--batch_size", "0"], "--batch_size: the value must be an integer in [1, "),
    ("infer", ["--batch_size", HUGE], "--batch_size: the value is a value of 5000 characters"),
    ("infer", ["--top_k", "-3"], "--top_k: the value must be an integer in [1, "),
    ("predict", ["--index", "0", "-1"], "--index: the value must be an integer in [0, "),
    ("train", ["--progress", "nan"], "--progress: the value must be a finite number"),
    ("study", ["--epoch_time", "0"], "--epoch_time: the value must be a number > 0"),
    ("study", ["--max_runs", HUGE], "--max_runs: the value is a value of 5000 characters"),
])
def test_numeric_flags_are_read_by_the_number_reader(capsys, make_parser, argv, words):
    """argparse quotes a ``type=int`` failure in full (5,000 digits) and let 0 through to
    ``range(0, n, 0)``; each flag is now one short argparse error, exit 2."""
    from swa_apps import cli, inference
    from swa_study import study

    parser = {"infer": inference.infer_parser, "predict": inference.predict_parser,
              "train": cli.train_parser, "study": study.study_parser}[make_parser]()
    required = {"infer": ["--model_dir", "m", "--img_path", "x.png"],
                "predict": ["--model_path", "m.pdparams"], "train": [],
                "study": ["configs/study/cpu.yaml"]}[make_parser]
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*required, *argv])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # argparse printed its whole usage above the error
    last = lines[0]
    assert info.value.code == 2 and words in last and len(last) < 300, last[-600:]
    assert last.endswith("--help")  # the fix: where the flags are listed


def test_labels_txt_with_a_huge_or_unicode_label_is_one_line(tmp_path):
    from swa_recipe.data.cifar import DataError
    from swa_recipe.predict import read_labels

    for text in (f"a.png {HUGE}\n", "a.png \u00b2\n", "a.png 100\n", "a.png 1 2\n"):
        (tmp_path / "labels.txt").write_text(text)
        with pytest.raises(DataError, match="line 1 is not 'FILE LABEL'") as info:
            read_labels(str(tmp_path))
        assert len(str(info.value)) < 300


@pytest.mark.parametrize("grid, words", [
    (f"seed: {HUGE}", "the integer at line 7 is a value of 5000 characters"),
    ("seed: 1\n  swa_budgets: .inf", "grid.swa_budgets must be a finite number, got inf"),
    ("seed: 1\n  swa_budgets: 1.5\nswa_start_fraction: .nan",
     "swa_start_fraction must be a finite number, got nan"),
])
def test_a_study_file_with_a_huge_or_infinite_number_is_one_line(tmp_path, grid, words):
    from swa_recipe.config import ConfigError
    from swa_study.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ngrid:\n  model: VGG16\n  method: swa\n  budget: 2\n"
                    "  framework: paddle\n  " + grid + "\n")
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_launcher_variable_of_5000_digits_is_one_line():
    from swa_recipe.numbers import NumberError
    from swa_recipe.runtime import launched_rank, launched_world_size

    with pytest.raises(NumberError, match="WORLD_SIZE is a value of 5000 characters"):
        launched_world_size({"WORLD_SIZE": HUGE})
    with pytest.raises(NumberError, match=r"RANK must be an integer in \[0, "):
        launched_rank({"RANK": "-4"})


# --- 9. SIGTERM / SIGINT at any moment: the project's line, never Paddle's C++ handler ------------

def test_importing_the_paddle_twin_keeps_pythons_sigterm_handler():
    """Paddle's import installs glog's C++ handler for SIGTERM ("FatalError: Termination
    signal", 14 lines, abort); ``swa_paddle`` puts the Python handler back."""
    import subprocess
    import sys

    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda s, f: (print('ours'), sys.exit(143)))\n"
            "import swa_paddle, paddle\n"
            "paddle.ones([2]).numpy()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 143 and proc.stdout == "ours\n", proc.stderr[-2000:]
    assert "FatalError" not in proc.stderr


@pytest.mark.parametrize("framework, delay", [("paddle", 0.8), ("paddle", 1.4), ("paddle", 2.0),
                                              ("paddle", 6.0), ("torch", 3.0)])
def test_sigterm_at_any_moment_of_a_start_is_the_projects_line(tmp_path, archive, framework,
                                                                delay):
    """A SIGTERM during start-up, the import, data loading or the first steps: exit 143 and
    the project's ``interrupted:`` line, never Paddle's C++ traceback or Python's."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/lite.yaml", "--framework", framework,
         "-o", "Data.train_subset=null", "-o", "Data.test_subset=null", "-o",
         "Data.batch_size=32", "--epochs", "50", "--data_path", str(archive), "--dir",
         str(tmp_path / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (delay, err[-2000:])
    assert "FatalError" not in err and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: stopped by SIGTERM"), err


def test_ctrl_c_outside_training_is_one_line_not_a_keyboardinterrupt():
    """eval, predict, export and infer have nothing to save: SIGINT during their work ends
    them with one line and 130 (``cli.run``), not a KeyboardInterrupt traceback."""
    import subprocess
    import sys

    code = ("import sys, time\n"
            "from swa_apps import cli\n"
            "sys.exit(cli.run(lambda: (print('ready', flush=True), time.sleep(60)), False))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "interrupted: stopped by SIGINT\n", err[-2000:]


# --- 10. a HOME that cannot hold ~/.cache ---------------------------------------------------------

def test_a_home_that_cannot_hold_a_cache_is_no_traceback(tmp_path, archive):
    """HOME a file (as root, a read-only folder is writable): Paddle's import (its dataset
    folder) and its dy2static conversion (eval's oneDNN convolutions, export) wrote under
    ~/.cache and ended in a traceback. They now run, in a private temporary HOME removed at
    exit; the project's download cache keeps the real HOME and is one line."""
    import subprocess
    import sys

    from conftest import tiny_config
    from swa_recipe.checkpoint import atomic_save

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "HOME": "/dev/null", "TMPDIR": str(temp)}
    env.pop("XDG_CACHE_HOME", None)
    cfg = tiny_config(str(archive))
    ckpt = tmp_path / "w.pdparams"
    import paddle

    from swa_paddle.models import build_model

    model = build_model(cfg)
    atomic_save(lambda p: paddle.save({"epoch": 1, "state_dict": model.state_dict(),
                                       "config": cfg}, p), str(ckpt))

    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    for argv in (["eval.py", "--model_path", str(ckpt), "--data_path", str(archive)],
                 ["tools/export_model.py", "--model_path", str(ckpt), "--save_dir",
                  str(tmp_path / "export")]):
        proc = run(*argv)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not list(temp.iterdir())  # the temporary HOME is gone
    proc = run("train.py", "--config", "configs/lite.yaml", "--dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: cannot write the download cache /dev/null/.cache/swa_paddle"), proc.stderr


# --- 11. markdown written by tools/summarize.py -------------------------------------------------

HOSTILE_RUN = "r|x\n[a](javascript:b) <img src=y onerror=z> `c` *d* \\"


def test_summarize_escapes_run_names_and_file_text_in_its_tables(tmp_path):
    """A run folder's name (any characters but '/', a newline included) reaches the runs
    table: it must stay one literal cell, adding no cell, row, link, image or HTML."""
    import re
    import subprocess
    import sys

    from test_study import write_run

    study = tmp_path / "st`udy"
    write_run(study, HOSTILE_RUN, "sgd", 1, "paddle", 2, [40.0, 41.0])
    write_run(study, "vgg16-sgd2-s2-paddle", "sgd", 2, "paddle", 2, [42.0, 43.0])
    proc = subprocess.run([sys.executable, "tools/summarize.py", str(study)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (study / "README.md").read_text()
    rows = text[text.index("## Runs"):].split("\n\n")[1].splitlines()
    assert len(rows) == 4  # header, rule, two runs
    cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
    assert cells == [5] * 4, rows
    hostile = next(r for r in rows if "javascript" in r)
    for raw in ("[a]", "<img", "`c`", "*d*", "](javascript"):
        assert not re.search(r"(?<!\\)" + re.escape(raw), hostile), (raw, hostile)
    assert "| vgg16-sgd2-s2-paddle |" in text  # plain names stay readable
    assert text.startswith("# Study `` st`udy ``\n")


def test_run_logs_never_write_through_a_planted_symlink(tmp_path):
    """metrics.csv, train_log.txt and curves.png go through ``atomic_save``: a symlink planted
    at a file or at the old fixed temporary name (``metrics.csv.tmp``) is never written
    through; the link itself is replaced."""
    from swa_recipe.logs import RunLog

    run = tmp_path / "run"
    run.mkdir()
    targets = {}
    for name in ("metrics.csv.tmp", "curves.png.tmp", "train_log.txt"):
        targets[name] = tmp_path / f"victim-{name}"
        targets[name].write_text("precious")
        (run / name).symlink_to(targets[name])
    log = RunLog(str(run), swa=False)
    log.add({"ep": 1, "lr": 0.1, "tr_loss": 1.0, "tr_acc": 50.0, "te_loss": 1.0,
             "te_acc": 40.0, "time": 1.0})
    log.plot()
    assert all(t.read_text() == "precious" for t in targets.values())
    assert not (run / "train_log.txt").is_symlink() and (run / "metrics.csv").is_file()


def test_appended_logs_never_write_through_a_link_or_fifo_planted_during_a_run(tmp_path, alarm):
    """``train_log.txt`` and ``train.log`` are appended to while a run goes on: a symlink or
    FIFO put at their path after the start is refused (an OSError the run turns into its one
    line), not written through or waited on."""
    from swa_recipe.checkpoint import open_append
    from swa_recipe.logs import RunLog, get_logger, open_log_file
    from swa_recipe.rundir import RunDirError

    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    log = RunLog(str(run), swa=False)
    (run / "train_log.txt").unlink()
    (run / "train_log.txt").symlink_to(victim)
    with pytest.raises(RunDirError, match="train_log.txt"):
        log.add({"ep": 1, "lr": 0.1, "tr_loss": 1.0, "tr_acc": 50.0, "te_loss": 1.0,
                 "te_acc": 40.0, "time": 1.0})
    (run / "train.log").symlink_to(victim)
    logger = get_logger(str(run), defer=True)
    with pytest.raises(RunDirError, match=r"train.log \(Too many levels"):
        open_log_file(logger, str(run))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):  # no reader: ENXIO at once (a reader: not a regular file)
        open_append(str(tmp_path / "fifo"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):
        open_append(str(tmp_path / "folder"))
    assert victim.read_text() == "precious"
    with open_append(str(tmp_path / "plain.txt")) as fh:  # a plain file is appended to
        fh.write("a\n")
    with open_append(str(tmp_path / "plain.txt")) as fh:
        fh.write("b\n")
    assert (tmp_path / "plain.txt").read_text() == "a\nb\n"


def test_the_swa_callback_saves_atomically_and_never_through_a_link(tmp_path):
    """``SWA(save_path=...)`` writes through ``atomic_save``: a symlink at the path is replaced
    by the averaged state dict, its target untouched."""
    import paddle

    from swa_paddle.callbacks import SWA

    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "swa.pdparams"
    path.symlink_to(victim)
    paddle.seed(0)
    net = paddle.nn.Linear(3, 2)
    x = paddle.randn([8, 3])
    y = paddle.randint(0, 2, [8, 1])
    loader = [(x, y)]
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()),
                  paddle.nn.CrossEntropyLoss())
    model.fit(loader, epochs=2, verbose=0,
              callbacks=[SWA(swa_start=1, swa_lr=0.05, save_path=str(path))])
    assert victim.read_text() == "precious"
    assert not path.is_symlink()
    saved = paddle.load(str(path))
    assert set(saved) == set(net.state_dict())


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py", "tools/convert.py",
                                    "tools/export_model.py", "deploy/inference_python/infer.py",
                                    "tools/study.py", "tools/summarize.py", "tools/landscape.py",
                                    "bench/throughput.py"])
def test_every_command_refuses_an_unknown_flag_in_one_line(script):
    """A mistyped flag is a user error like any other: one line naming it and where the flags
    are listed, exit 2, not argparse's usage block above it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, os.path.join(ROOT, script), "--no_such_flag"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-800:]
    named = ("--no_such_flag", "arguments are required")  # or a required one missing first
    assert any(n in lines[0] for n in named) and lines[0].endswith("--help"), lines


def test_export_refuses_a_folder_named_config_yaml_before_writing_the_program(archive, tmp_path):
    """``config.yaml`` is checked before the program is written: a folder under that name
    used to be refused only after the new program had landed, leaving it beside no config."""
    import paddle

    from conftest import tiny_config
    from swa_apps import inference
    from swa_paddle.models import build_model
    from swa_recipe.checkpoint import atomic_save
    from swa_recipe.config import ConfigError

    cfg = tiny_config(str(archive))
    ckpt = tmp_path / "w.pdparams"
    model = build_model(cfg)
    atomic_save(lambda p: paddle.save({"epoch": 1, "state_dict": model.state_dict(),
                                       "config": cfg}, p), str(ckpt))
    out = tmp_path / "export"
    (out / "config.yaml").mkdir(parents=True)
    args = inference.export_parser().parse_args(["--model_path", str(ckpt), "--save_dir",
                                                 str(out)])
    with pytest.raises(ConfigError, match="config.yaml'?: it is a folder"):
        inference.export_main(args)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_result_lines_escape_what_file_names_hold(tmp_path, capsys):
    """An image named with a newline and a terminal escape: predict.py's lines name it escaped,
    one line per image, nothing that would rewrite the user's terminal; the same for the
    checkpoint path in its header."""
    from conftest import tiny_config
    from swa_apps.cli import run
    from swa_apps.inference import predict_main, predict_parser
    from swa_paddle import checkpoint
    from swa_paddle.models import build_model

    folder = tmp_path / "run\nx"
    folder.mkdir()
    ckpt = folder / "w.pdparams"
    checkpoint.save(build_model(tiny_config("/nonexistent")).state_dict(), str(ckpt))
    images = tmp_path / "images"
    images.mkdir()
    a_png(images / "cat\n\x1b[2Jdog.png")
    args = predict_parser().parse_args(["--model_path", str(ckpt), "--img_path", str(images),
                                        "--model", "VGG16", "-o", "Arch.width=0.0625"])
    assert run(lambda: predict_main(args), False) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 2, out
    assert "run\\nx" in out and "cat\\n\\x1b[2Jdog.png:" in out


@pytest.mark.parametrize("change", [
    {"censored_swa": "abc"}, {"directions_sgd": 2.5}, {"censored_sgd": -1},
    {"directions_swa": 10**9}, {"width_swa": "wide"}, {"pair": 3}, {"rise": True}])
def test_a_landscape_summary_holds_what_landscape_writes(tmp_path, change):
    """tools/summarize.py read a count that is text as ``int("abc")`` (a traceback): every
    value of a summary is checked as ``Landscape.summary`` writes it."""
    import json

    from swa_study.landscape import summary_of

    good = json.loads((ROOT / "results/cpu/landscape/vgg16-s1-torch-swa35-sgd35.json")
                      .read_text())
    path = tmp_path / "x.json"
    path.write_text(json.dumps(good))
    assert summary_of(str(path)) == good
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(ValueError, match="is not a landscape summary"):
        summary_of(str(path))


def test_a_landscape_summary_that_is_a_fifo_does_not_block(tmp_path, alarm):
    from swa_recipe.data.regular import NotRegularFile
    from swa_study.landscape import summary_of

    os.mkfifo(tmp_path / "x.json")
    with pytest.raises(NotRegularFile):
        summary_of(str(tmp_path / "x.json"))


def test_every_committed_landscape_summary_reads():
    from swa_study.landscape import summary_of

    found = sorted((ROOT / "results/cpu/landscape").glob("*.json"))
    assert found and all(summary_of(str(p))["pair"] == p.stem for p in found)


def test_study_files_that_are_fifos_do_not_block(tmp_path, alarm):
    """A study file, a study folder's README.md (read for the grid it names) and a run's
    command.txt (read for its machine) that are FIFOs: one line or "not recorded", no hang."""
    from swa_recipe.config import ConfigError
    from swa_study.provenance import recorded_machine
    from swa_study.study import load_study
    from swa_study.summary import recorded_study

    for name in ("study.yaml", "README.md", "command.txt"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(ConfigError, match="study.yaml is not a regular file"):
        load_study(str(tmp_path / "study.yaml"))
    assert recorded_study(str(tmp_path)) is None
    assert recorded_machine(str(tmp_path / "command.txt")) is None


def test_the_runner_never_appends_through_a_link_at_command_txt(tmp_path):
    """A run folder travels between machines: its command.txt may be a link to a file outside
    it, which the runner's record of a start must not write through."""
    from swa_recipe.rundir import RunDirError
    from swa_study.provenance import Machine
    from swa_study.study import record

    target = tmp_path / "outside.txt"
    target.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "command.txt").symlink_to(target)
    with pytest.raises(RunDirError, match="could not write .*command.txt"):
        record(str(run_dir), ["python", "train.py"], "todo", "", Machine.here())
    assert target.read_text() == "precious\n"
    (run_dir / "command.txt").unlink()
    record(str(run_dir), ["python", "train.py"], "todo", "", Machine.here())
    assert (run_dir / "command.txt").read_text().endswith("python train.py\n")

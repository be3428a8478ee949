"""The config schema, YAML files, the original flags, ``-o`` overrides and their error messages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_config
from swa_apps.cli import train_parser
from swa_recipe.config import (
    ConfigError,
    default_config,
    load_yaml,
    resolve,
    run_dir,
    save_config,
    validate,
)

CONFIGS = ROOT / "configs"
SWA_YAML = str(CONFIGS / "vgg16_swa_cifar10.yaml")
SGD_YAML = str(CONFIGS / "vgg16_sgd_cifar10.yaml")
LITE_YAML = str(CONFIGS / "lite.yaml")


def parse(*argv: str) -> dict:
    """``resolve`` exactly as ``train.py`` calls it."""
    return resolve(train_parser().parse_args(list(argv)))


def refused(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    return str(info.value)


# --------------------------------------------------------------------------- defaults and files


def test_default_config_is_the_paper_recipe():
    cfg = default_config()
    assert cfg["Optimizer"]["lr_init"] == 0.05
    assert cfg["Optimizer"]["momentum"] == 0.9
    assert cfg["Optimizer"]["wd"] == 5e-4
    assert cfg["Optimizer"]["schedule"] == "original"
    assert cfg["Data"]["batch_size"] == 128
    assert cfg["Global"]["epochs"] == 200
    assert cfg["Global"]["eval_freq"] == 5
    assert cfg["Global"]["save_freq"] == 25
    assert cfg["Global"]["seed"] == 1
    assert cfg["SWA"]["swa_start"] == 161
    assert cfg["SWA"]["swa_lr"] == 0.01
    assert cfg["SWA"]["swa_c_epochs"] == 1
    assert cfg["SWA"]["swa"] is False
    assert cfg["Arch"]["model"] == "VGG16"
    assert cfg["Arch"]["width"] == 1.0
    assert cfg["Data"]["data_path"] is None
    assert cfg["Data"]["md5"] == "auto"
    assert set(cfg) == {"Global", "AMP", "Arch", "Optimizer", "SWA", "Data"}


def test_default_config_is_a_fresh_copy():
    a = default_config()
    a["SWA"]["swa_lr"] = 0.5
    assert default_config()["SWA"]["swa_lr"] == 0.01


def test_swa_yaml_is_the_defaults_with_swa_on():
    cfg = load_yaml(SWA_YAML)
    expected = default_config()
    expected["SWA"]["swa"] = True
    expected["Arch"]["dropout"] = 0.5  # VGG's own (the default null means the same), spelled out
    assert cfg == expected


def test_sgd_yaml_has_swa_off():
    cfg = load_yaml(SGD_YAML)
    assert cfg["SWA"]["swa"] is False
    expected = default_config()
    expected["Arch"]["dropout"] = 0.5
    assert cfg == expected


def test_lite_yaml():
    cfg = load_yaml(LITE_YAML)
    assert cfg["Arch"]["width"] == 0.0625
    assert cfg["Data"]["train_subset"] == 1000
    assert cfg["Data"]["test_subset"] == 500
    assert cfg["Global"]["epochs"] == 3
    assert cfg["SWA"]["swa_start"] == 2
    assert cfg["SWA"]["swa"] is True
    assert cfg["Global"]["log_freq"] == 4


def test_yaml_values_get_the_declared_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("Optimizer:\n  lr_init: 1\nArch:\n  width: 2\n")
    cfg = load_yaml(str(path))
    assert cfg["Optimizer"]["lr_init"] == 1.0 and isinstance(cfg["Optimizer"]["lr_init"], float)
    assert isinstance(cfg["Arch"]["width"], float)


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_yaml(str(path)) == default_config()


# ------------------------------------------------------------------------ flags and overrides


def test_no_arguments_gives_defaults():
    expected = default_config()
    expected["Arch"]["num_classes"] = 10  # null: the dataset's, filled in when resolved
    assert parse() == expected


def test_flags_override_yaml():
    cfg = parse("--config", SGD_YAML, "--epochs", "7", "--lr_init", "0.1", "--swa",
                "--swa_start", "5", "--model", "VGG16BN")
    assert cfg["Global"]["epochs"] == 7
    assert isinstance(cfg["Global"]["epochs"], int)
    assert cfg["Optimizer"]["lr_init"] == 0.1
    assert cfg["SWA"]["swa"] is True
    assert cfg["SWA"]["swa_start"] == 5
    assert cfg["Arch"]["model"] == "VGG16BN"
    # untouched keys keep the YAML's values
    assert cfg["Optimizer"]["wd"] == 5e-4
    assert cfg["Data"]["batch_size"] == 128


def test_flags_keep_yaml_when_absent():
    cfg = parse("--config", LITE_YAML)
    assert cfg == validate(load_yaml(LITE_YAML))
    # --swa is store_true with default None: leaving it out must not turn SWA off
    assert cfg["SWA"]["swa"] is True


def test_dash_o_overrides():
    cfg = parse("--config", LITE_YAML, "-o", "SWA.swa_lr=0.02", "-o", "Arch.width=0.25",
                "-o", "Data.train_subset=null", "--override", "Optimizer.schedule=cyclic")
    assert cfg["SWA"]["swa_lr"] == 0.02
    assert cfg["Arch"]["width"] == 0.25
    assert cfg["Data"]["train_subset"] is None
    assert cfg["Data"]["test_subset"] == 500
    assert cfg["Optimizer"]["schedule"] == "cyclic"


def test_dash_o_wins_over_a_flag_for_the_same_key():
    cfg = parse("--epochs", "7", "-o", "Global.epochs=9")
    assert cfg["Global"]["epochs"] == 9
    cfg = parse("-o", "Global.epochs=9", "--epochs", "7")  # order on the line does not matter
    assert cfg["Global"]["epochs"] == 9


def test_string_flags_are_kept_verbatim():
    cfg = parse("--dir", "0777", "--data_path", "on")
    assert cfg["Global"]["dir"] == "0777"
    assert cfg["Data"]["data_path"] == "on"


def test_resolve_from_a_checkpoint_config():
    base = tiny_config("/nowhere/cifar.tar.gz")
    cfg = resolve(train_parser().parse_args(["--epochs", "4"]), base=base)
    assert cfg["Global"]["epochs"] == 4
    assert cfg["Arch"]["width"] == 0.0625
    assert cfg["Data"]["data_path"] == "/nowhere/cifar.tar.gz"


# ----------------------------------------------------------------------------------- errors


def test_unknown_section():
    msg = refused("-o", "Foo.bar=1")
    assert "Foo" in msg
    for section in ("Global", "AMP", "Arch", "Optimizer", "SWA", "Data"):
        assert section in msg


def test_unknown_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("Optimiser:\n  lr_init: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config section 'Optimiser'"):
        load_yaml(str(path))


def test_unknown_key_lists_valid_keys():
    msg = refused("-o", "SWA.swa_lrr=0.1")
    assert "SWA.swa_lrr" in msg
    for key in ("swa", "swa_start", "swa_lr", "swa_c_epochs", "anneal_epochs",
                "anneal_strategy"):
        assert key in msg


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("Global:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"Global\.epoch\b.*valid keys of Global: framework, "
                                          r"epochs"):
        load_yaml(str(path))


@pytest.mark.parametrize(("argv", "key", "words"), [
    (("-o", "Optimizer.lr_init=abc"), "Optimizer.lr_init", "number"),
    (("--lr_init", "abc"), "Optimizer.lr_init", "number"),
    (("-o", "Global.epochs=1.5"), "Global.epochs", "integer"),
    (("--epochs", "2.0"), "Global.epochs", "integer"),
    (("-o", "Global.epochs=true"), "Global.epochs", "integer"),
    (("-o", "SWA.swa=1"), "SWA.swa", "true or false"),
    (("-o", "Optimizer.lr_init=true"), "Optimizer.lr_init", "number"),
    (("-o", "Arch.model=[VGG16]"), "Arch.model", "one of"),
    (("-o", "Global.epochs=null"), "Global.epochs", "cannot be null"),
])
def test_wrong_type(argv, key, words):
    msg = refused(*argv)
    assert key in msg
    assert words in msg


def test_exponent_without_dot_is_a_number(tmp_path):
    assert parse("--lr_init", "1e-3", "-o", "Optimizer.wd=5e-4")["Optimizer"]["lr_init"] == 1e-3
    path = tmp_path / "c.yaml"
    path.write_text("Optimizer:\n  wd: 5e-4\n")
    assert load_yaml(str(path))["Optimizer"]["wd"] == 5e-4


@pytest.mark.parametrize("value", ["0777", "on", "1.10", "[a, b]"])
def test_text_values_stay_verbatim(value):
    assert parse("-o", f"Global.dir={value}")["Global"]["dir"] == value
    assert parse("-o", "Global.dir=null")["Global"]["dir"] is None


@pytest.mark.parametrize("value", ["0", "-3"])
def test_epochs_must_be_positive(value):
    msg = refused(f"--epochs={value}")
    assert "Global.epochs" in msg and "> 0" in msg


@pytest.mark.parametrize("value", ["0", "-0.1"])
def test_lr_init_must_be_positive(value):
    msg = refused("--lr_init", value)
    assert "Optimizer.lr_init" in msg and "> 0" in msg


def test_momentum_and_dropout_ranges():
    assert "Optimizer.momentum" in refused("--momentum", "1.0")
    assert "in [0, 1)" in refused("-o", "Arch.dropout=-0.1")
    assert "Optimizer.wd" in refused("--wd=-1e-4")


def test_swa_start_after_last_epoch_needs_swa():
    msg = refused("--swa", "--epochs", "10", "--swa_start", "11")
    assert "SWA.swa_start" in msg and "Global.epochs" in msg
    cfg = parse("--epochs", "10", "--swa_start", "11")  # no SWA: swa_start is unused
    assert cfg["SWA"]["swa_start"] == 11 and cfg["SWA"]["swa"] is False
    assert parse("--swa", "--epochs", "10", "--swa_start", "10")["SWA"]["swa_start"] == 10


def test_non_original_schedule_needs_swa():
    msg = refused("-o", "Optimizer.schedule=swalr")
    assert "Optimizer.schedule=swalr" in msg and "--swa" in msg


def test_unknown_model_lists_models():
    msg = refused("--model", "ResNet18")
    assert "Arch.model" in msg
    assert "VGG16, VGG16BN, VGG19, VGG19BN" in msg
    assert "ResNet18" in msg


def test_unknown_choice_of_other_keys():
    assert "paddle, torch" in refused("--framework", "jax")
    assert "cos, linear" in refused("--swa", "-o", "SWA.anneal_strategy=step")
    assert "original, cyclic, swalr" in refused("-o", "Optimizer.schedule=step")


@pytest.mark.parametrize("text", ["SWA.swa_lr", "swa_lr=0.02", "SWA.swa_lr 0.02"])
def test_malformed_override(text):
    msg = refused("-o", text)
    assert text in msg
    assert "Section.key=value" in msg


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("Global:\n  epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        parse("--config", str(path))
    assert str(path) in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_yaml(str(path))


def test_yaml_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("Global: 3\n")
    with pytest.raises(ConfigError, match="section 'Global'.*mapping of keys"):
        load_yaml(str(path))


def test_yaml_section_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("Global: 3\n")
    with pytest.raises(ConfigError, match="Global"):
        load_yaml(str(path))
    path.write_text("Globl: 3\n")
    with pytest.raises(ConfigError, match="unknown config section 'Globl'"):
        load_yaml(str(path))


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = refused("--config", str(path))
    assert str(path) in msg and "not found" in msg


@pytest.mark.parametrize("value", ["xyz", "C58F30108F718F92721AF3B95E74349A",
                                   "c58f30108f718f92721af3b95e74349", "12345"])
def test_md5_must_be_hex(value):
    msg = refused("-o", f"Data.md5={value}")
    assert "Data.md5" in msg and "32 lowercase hex digits" in msg


def test_md5_accepts_auto_hex_and_null():
    assert parse("-o", "Data.md5=null")["Data"]["md5"] is None
    assert parse("-o", "Data.md5=auto")["Data"]["md5"] == "auto"
    digest = "c58f30108f718f92721af3b95e74349a"
    assert parse("-o", f"Data.md5={digest}")["Data"]["md5"] == digest


def test_batch_size_larger_than_train_subset():
    msg = refused("--batch_size", "128", "-o", "Data.train_subset=100")
    assert "Data.batch_size" in msg and "128" in msg and "100" in msg
    assert parse("--batch_size", "100", "-o", "Data.train_subset=100")["Data"]["batch_size"] == 100


# ------------------------------------------------------------------------- saving and naming


def test_save_config_round_trips(tmp_path):
    cfg = parse("--config", LITE_YAML, "--model", "VGG19BN", "-o", "Data.md5=null",
                "-o", "Global.dir=runs/x", "-o", "SWA.anneal_strategy=linear")
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    assert load_yaml(str(path)) == cfg
    # plain YAML, sections in schema order
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["Global", "AMP", "Arch", "Optimizer", "SWA", "Data"]
    assert raw["Data"]["md5"] is None


def test_run_dir_default_naming():
    assert run_dir(default_config()) == os.path.join("output", "vgg16_sgd_paddle")
    cfg = parse("--swa", "--model", "VGG16BN", "--framework", "torch")
    assert run_dir(cfg) == os.path.join("output", "vgg16bn_swa_torch")
    assert run_dir(parse("--swa", "--dir", "runs/mine")) == "runs/mine"


# ----------------------------------------------------------------------------------- the CLI


def test_train_cli_config_error_is_one_line():
    proc = subprocess.run([sys.executable, "train.py", "-o", "Foo.bar=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "unknown config section 'Foo'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bf16_is_a_torch_option():
    assert parse("-o", "Global.precision=bf16", "--framework", "torch")["Global"]["precision"] == \
        "bf16"
    assert "torch-twin option" in refused("-o", "Global.precision=bf16")
    assert "must be one of fp32, bf16" in refused("-o", "Global.precision=fp16")


def test_onednn_is_on_by_default_and_can_be_switched_off():
    assert parse()["Global"]["onednn"] is True
    assert parse("-o", "Global.onednn=false")["Global"]["onednn"] is False


# The original README's recipes (timgaripov/swa): lr, wd, SGD budget, swa_start, SWA lr on
# CIFAR-10 / CIFAR-100.
PAPER_RECIPES = {
    "VGG16": (0.05, 5e-4, 200, 161, 0.01, 0.01),
    "PreResNet110": (0.1, 3e-4, 150, 126, 0.01, 0.05),
    "PreResNet164": (0.1, 3e-4, 150, 126, 0.01, 0.05),
    "WideResNet28x10": (0.1, 5e-4, 200, 161, 0.05, 0.05),
}


@pytest.mark.parametrize("dataset", ["CIFAR10", "CIFAR100"])
@pytest.mark.parametrize("model", list(PAPER_RECIPES))
def test_a_config_for_every_row_of_the_papers_table(model, dataset):
    lr, wd, budget, start, swa_lr10, swa_lr100 = PAPER_RECIPES[model]
    for method in ("sgd", "swa"):
        cfg = parse("--config", str(CONFIGS / f"{model.lower()}_{method}_{dataset.lower()}.yaml"))
        assert (cfg["Arch"]["model"], cfg["Data"]["dataset"]) == (model, dataset)
        assert cfg["Arch"]["num_classes"] == (10 if dataset == "CIFAR10" else 100)
        assert cfg["Arch"]["width"] == 1.0 and cfg["Data"]["batch_size"] == 128
        opt = cfg["Optimizer"]
        assert (opt["lr_init"], opt["wd"], opt["momentum"], opt["schedule"]) == (
            lr, wd, 0.9, "original")
        assert cfg["Global"]["epochs"] == budget
        assert cfg["SWA"]["swa"] is (method == "swa")
        if method == "swa":
            assert cfg["SWA"]["swa_start"] == start
            assert cfg["SWA"]["swa_lr"] == (swa_lr10 if dataset == "CIFAR10" else swa_lr100)

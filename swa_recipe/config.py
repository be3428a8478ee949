"""The run configuration: one schema, YAML files, the original repo's flags and ``-o`` overrides.

A config is a plain ``{section: {key: value}}`` dict (PaddleClas style: ``-o SWA.swa_lr=0.02``).
Every key has a declared type and range, so a typo or an impossible value is refused before any
work starts, with a message naming the key and what it accepts.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from swa_recipe.arch import MODELS, check_arch
from swa_recipe.checkpoint import atomic_save
from swa_recipe.data.datasets import DATASETS
from swa_recipe.numbers import NumberError, short, to_float, to_int
from swa_recipe.numbers import load_yaml as load_numbers_yaml
from swa_recipe.precision import amp_refusal
from swa_recipe.runtime import launched_world_size

FRAMEWORKS = ("paddle", "torch")
SCHEDULES = ("original", "cyclic", "swalr")
AVERAGES = ("swa", "ema")


class ConfigError(ValueError):
    """A config key, type or value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Field:
    default: Any
    type: type
    help: str
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    nullable: bool = False


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _workers(v: str) -> bool:
    """``Data.num_workers``: kept as text (``auto``), read as a count through ``to_int`` so
    that a 5,000-digit or a ten-digit value is refused here, not where loaders start."""
    try:
        return v == "auto" or to_int(v, "Data.num_workers", 0, MAX_WORKERS) >= 0
    except NumberError:
        return False


def _seed(v: Any) -> bool:
    return 0 <= v < SEED_LIMIT


# Model sizes a config may ask for, checked before any model is built: a shared checkpoint's
# config saying width 4 or depth 9002 would otherwise allocate gigabytes first. The widest
# config the project uses is width 1 (2 leaves room), the deepest the original's PreResNet164,
# the most classes CIFAR-100's.
MAX_WIDTH = 2.0
MAX_DEPTH = 164
MAX_CLASSES = 100


def _width(v: Any) -> bool:
    """A width multiplier in (0, MAX_WIDTH]: parameters grow with its square."""
    return 0 < v <= MAX_WIDTH


def _depth(v: Any) -> bool:
    """A depth in [1, MAX_DEPTH]: layers grow with it (PreResNet164 is the deepest model)."""
    return 1 <= v <= MAX_DEPTH


def _classes(v: Any) -> bool:
    """A class count in [1, MAX_CLASSES]: the classifier grows with it (CIFAR-100's 100)."""
    return 1 <= v <= MAX_CLASSES


SEED_LIMIT = 2**32  # numpy's SeedSequence words; Paddle and torch seeds take them too
MAX_CONFIG_BYTES = 1 << 20
MAX_WORKERS = 256  # loader processes: far above any machine's cores


SCHEMA: dict[str, dict[str, Field]] = {
    "Global": {
        "framework": Field("paddle", str, "training framework", FRAMEWORKS),
        "epochs": Field(200, int, "number of epochs", check=_positive, rule="> 0"),
        "seed": Field(1, int, "seed for init, data order, augmentation and dropout",
                      check=_seed, rule=f"in [0, {SEED_LIMIT})"),
        "dir": Field(None, str, "run directory (default output/<model>_<swa|sgd>_<framework>)",
                     nullable=True),
        "resume": Field(None, str, "PATH: continue that checkpoint's run with its config, "
                        "folder and data path (train.py --help ends with the keys that may "
                        "change); auto: the newest checkpoint in --dir, with the config of "
                        "this command line", nullable=True),
        "save_freq": Field(25, int, "checkpoint every N epochs", check=_positive, rule="> 0"),
        "eval_freq": Field(5, int, "evaluate every N epochs", check=_positive, rule="> 0"),
        "log_freq": Field(50, int, "training line every N iterations", check=_positive,
                          rule="> 0"),
        "device": Field("auto", str, "where to train", ("auto", "cpu", "gpu")),
        "precision": Field("fp32", str, "training forward precision; bf16 (torch autocast) "
                           "changes numerics", ("fp32", "bf16")),
        "onednn": Field(True, bool, "oneDNN convolutions on CPU (Paddle: swa_paddle.onednn; "
                        "torch: torch.backends.mkldnn)"),
        "static_eval": Field(True, bool, "Paddle: evaluate through one whole-model static "
                             "program (oneDNN on CPU: accuracy equal to eager, losses within "
                             "1e-8); false: the eager forward, as the committed study rows "
                             "were evaluated (torch always evaluates eagerly)"),
        "use_visualdl": Field(False, bool, "scalars for VisualDL (Paddle) / TensorBoard "
                              "(torch) under <dir>/vdl, rank 0 (pip install visualdl / "
                              "tensorboard)"),
        "compile": Field(False, bool, "torch.compile the training model (torch twin)"),
        "channels_last": Field(False, bool, "channels_last memory format for the model and "
                               "its inputs (torch twin)"),
    },
    "AMP": {
        "use_amp": Field(False, bool, "automatic mixed precision of the training forward "
                         "(PaddleClas's AMP block; paddle.amp / torch.autocast); weights, "
                         "optimizer, SWA average and update_bn stay float32"),
        "level": Field("O1", str, "O1: per-op casts (O2, low-precision weights with float32 "
                       "master copies, is refused: the SWA average reads the weights)",
                       ("O1", "O2")),
        "dtype": Field("float16", str, "low-precision type: float16 (GPU, with loss "
                       "scaling) or bfloat16 (CPU or GPU, no scaling)",
                       ("float16", "bfloat16")),
        "scale_loss": Field(65536.0, float, "initial loss scale (float16)", check=_positive,
                            rule="> 0"),
        "use_dynamic_loss_scaling": Field(True, bool, "adapt the loss scale (float16)"),
        "tf32": Field(False, bool, "TF32 matmuls and convolutions on NVIDIA GPUs (torch twin; "
                      "off keeps float32 exact)"),
    },
    "Arch": {
        "model": Field("VGG16", str, "model name", MODELS),
        "width": Field(1.0, float, "channel width multiplier", check=_width,
                       rule=f"in (0, {MAX_WIDTH:g}]"),
        "depth": Field(None, int, "depth of a PreResNet/WideResNet (tests: small); null = "
                       "the model's", check=_depth, rule=f"in [1, {MAX_DEPTH}]",
                       nullable=True),
        "dropout": Field(None, float, "dropout probability; null = the model's (VGG 0.5, "
                         "WideResNet 0)", check=lambda v: 0 <= v < 1, rule="in [0, 1)",
                         nullable=True),
        "num_classes": Field(None, int, "number of classes; null = the dataset's",
                             check=_classes, rule=f"in [1, {MAX_CLASSES}]", nullable=True),
    },
    "Optimizer": {
        "lr_init": Field(0.05, float, "initial learning rate", check=_positive, rule="> 0"),
        "momentum": Field(0.9, float, "SGD momentum", check=lambda v: 0 <= v < 1,
                          rule="in [0, 1)"),
        "wd": Field(5e-4, float, "weight decay", check=_non_negative, rule=">= 0"),
        "schedule": Field("original", str, "learning-rate schedule", SCHEDULES),
    },
    "SWA": {
        "swa": Field(False, bool, "collect the SWA average"),
        "swa_start": Field(161, int, "first epoch (1-based) whose weights are averaged",
                           check=_positive, rule="> 0"),
        "swa_lr": Field(0.01, float, "SWA learning rate", check=_positive, rule="> 0"),
        "swa_c_epochs": Field(1, int, "collect every N epochs (cycle length)", check=_positive,
                              rule="> 0"),
        "anneal_epochs": Field(10, int, "epochs of the SWALR anneal (schedule swalr)",
                               check=_non_negative, rule=">= 0"),
        "anneal_strategy": Field("cos", str, "SWALR anneal shape (schedule swalr)",
                                 ("cos", "linear")),
        "avg": Field("swa", str, "swa: equal-weight average of the collected epochs; ema: "
                     "exponential moving average of every step from swa_start", AVERAGES),
        "ema_decay": Field(0.9999, float, "EMA decay per step (SWA.avg ema)",
                           check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
    },
    "Data": {
        "dataset": Field("CIFAR10", str, "dataset name", tuple(DATASETS)),
        "data_path": Field(None, str, "the dataset's archive or folder (default: user cache)",
                           nullable=True),
        "md5": Field("auto", str, "archive MD5: auto (official for the download, none for a "
                     "given data_path), a hex digest, or null (no check)", nullable=True,
                     check=lambda v: v == "auto" or re.fullmatch(r"[0-9a-f]{32}", v) is not None,
                     rule="'auto' or 32 lowercase hex digits"),
        "batch_size": Field(128, int, "global batch size", check=_positive, rule="> 0"),
        "num_workers": Field("auto", str, "loader worker processes; auto: 0 on the CPU, "
                             "from the free cores on a GPU (swa_recipe.device)",
                             check=_workers, rule=f"'auto' or an integer in [0, {MAX_WORKERS}]"),
        "train_subset": Field(None, int, "use only the first N training images",
                              check=_positive, rule="> 0", nullable=True),
        "test_subset": Field(None, int, "use only the first N test images", check=_positive,
                             rule="> 0", nullable=True),
        "on_device": Field(False, bool, "hold the images on the training device as uint8 and "
                           "crop, flip and normalise there (torch twin; byte-identical batches)"),
    },
}

# The original repo's flags, each the key of the same name in its section.
FLAGS = ("epochs", "lr_init", "wd", "momentum", "batch_size", "swa", "swa_start", "swa_lr",
         "swa_c_epochs", "model", "dataset", "data_path", "dir", "resume", "save_freq",
         "eval_freq", "seed", "framework")


def section_of(key: str) -> str:
    """The section that holds ``key`` (flag names are unique across sections)."""
    for section, fields in SCHEMA.items():
        if key in fields:
            return section
    raise KeyError(key)


def default_config() -> dict[str, dict[str, Any]]:
    return {s: {k: f.default for k, f in fields.items()} for s, fields in SCHEMA.items()}


def _field(section: str, key: str) -> Field:
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section {short(section)}; valid sections: "
                          f"{', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ConfigError(f"unknown config key '{section}.{str(key)[:60]}'; valid keys of "
                          f"{section}: {', '.join(SCHEMA[section])}")
    return SCHEMA[section][key]


def coerce(section: str, key: str, value: Any) -> Any:
    """Check ``value`` against the schema and return it in the declared type."""
    f = _field(section, key)
    name = f"{section}.{key}"
    if value is None:
        if f.nullable:
            return None
        raise ConfigError(f"{name} cannot be null; give a {f.type.__name__}")
    if f.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {short(value)}")
    elif f.type in (int, float):
        value = _number(f.type, value, name)
    elif f.type is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name} must be a string, got {short(value)}")
        value = str(value)
    if f.choices is not None and value not in f.choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, f.choices))}; "
                          f"got {short(value)}")
    if f.check is not None and not f.check(value):
        raise ConfigError(f"{name} must be {f.rule}, got {short(value)}")
    return value


def _number(kind: type, value: Any, name: str) -> int | float:
    """An int key as an int (a string is refused: YAML reads ``'3'`` as text), a float key as
    a finite float (YAML 1.1 reads ``5e-4``, without a dot, as a string), through the project's
    one number reader."""
    try:
        return to_int(value, name, text=False) if kind is int else to_float(value, name)
    except NumberError as exc:
        raise ConfigError(str(exc)) from None


def merge(cfg: dict, update: dict, origin: str) -> dict:
    """Return ``cfg`` with the sections of ``update`` applied, each value checked."""
    out = copy.deepcopy(cfg)
    if not isinstance(update, dict):
        raise ConfigError(f"{origin} must be a mapping of sections, got {type(update).__name__}")
    for section, values in update.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown config section '{section}'; valid sections: "
                              f"{', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' in {origin} must be a mapping of keys")
        if not all(isinstance(k, str) for k in values):
            raise ConfigError(f"section '{section}' in {origin} has a key that is not a name")
        for key, value in values.items():
            out[section][key] = coerce(section, key, value)
    return out


def load_yaml(path: str) -> dict:
    """A YAML config file: a regular UTF-8 file of at most 1 MiB (a config is a few lines)."""
    try:
        if not os.path.isfile(path) and os.path.exists(path):
            raise ConfigError(f"config file {path} is not a regular file; pass a YAML file to "
                              f"--config (see configs/)")
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than 1 MiB; it is not a config")
        data = load_numbers_yaml(text)
    except NumberError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing --config "
                          f"(see configs/)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; pass a YAML file to "
                          f"--config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc}); pass a "
                          f"readable --config") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deep; it is not a config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({exc.__class__.__name__}); "
                          f"fix its syntax") from None
    return merge(default_config(), data or {}, path)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``Section.key=value`` and read the value for that key (see ``parse_value``)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' must look like Section.key=value, "
                          f"e.g. -o SWA.swa_lr=0.02")
    name, raw = text.split("=", 1)
    section, key = name.strip().split(".", 1)
    return section, key, parse_value(section, key, raw)


def parse_value(section: str, key: str, raw: str) -> Any:
    """A command-line value: verbatim for text keys (``null`` clears them), else YAML
    (``3``, ``0.1``, ``true``, ``null``), so that ``-o Global.dir=0777`` stays a path."""
    if _field(section, key).type is str:
        return None if raw.strip() in ("", "null", "~") else raw
    try:
        return load_numbers_yaml(raw) if raw.strip() else None
    except NumberError as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from None
    except yaml.YAMLError:
        return raw


def _num_classes(cfg: dict) -> None:
    """Fill ``Arch.num_classes`` from the dataset; refuse one that disagrees with it."""
    arch, dataset = cfg["Arch"], cfg["Data"]["dataset"]
    classes = DATASETS[dataset].num_classes
    if arch["num_classes"] is None:
        arch["num_classes"] = classes
    elif arch["num_classes"] != classes:
        raise ConfigError(f"Arch.num_classes is {arch['num_classes']} but Data.dataset "
                          f"{dataset} has {classes} classes; leave Arch.num_classes unset (or "
                          f"{classes}), or use a checkpoint of {dataset}")


# Speed options only the torch twin implements (swa_torch.fast, swa_torch.device_data).
TORCH_ONLY = (("Global", "compile"), ("Global", "channels_last"), ("Data", "on_device"))


def validate(cfg: dict, world_size: int = 1) -> dict:
    """Checks across keys (and against the number of processes), after each key on its own."""
    g, swa, data = cfg["Global"], cfg["SWA"], cfg["Data"]
    try:
        check_arch(cfg["Arch"])
    except ValueError as exc:
        raise ConfigError(f"Arch.model={cfg['Arch']['model']}: {exc}") from None
    _num_classes(cfg)
    batch, n = data["batch_size"], data["train_subset"] or DATASETS[data["dataset"]].train_size
    if batch % world_size:
        raise ConfigError(f"Data.batch_size ({batch}) is the global batch and must divide "
                          f"evenly over {world_size} processes; use a multiple of {world_size}")
    if 0 < n % batch < world_size:
        raise ConfigError(f"the last batch of an epoch holds {n % batch} images, fewer than the "
                          f"{world_size} processes; change Data.batch_size or Data.train_subset")
    if swa["swa"] and swa["swa_start"] > g["epochs"]:
        raise ConfigError(f"SWA.swa_start ({swa['swa_start']}) is after the last epoch "
                          f"({g['epochs']}); lower swa_start or raise Global.epochs")
    if cfg["Optimizer"]["schedule"] != "original" and not swa["swa"]:
        raise ConfigError(f"Optimizer.schedule={cfg['Optimizer']['schedule']} needs SWA; "
                          f"pass --swa or use schedule original")
    if swa["avg"] == "ema" and not swa["swa"]:
        raise ConfigError("SWA.avg=ema needs averaging on; pass --swa (SWA.swa_start is the "
                          "first epoch of the moving average)")
    if batch > n:
        raise ConfigError(f"Data.batch_size ({batch}) is larger than the training set "
                          f"({n} images); lower it")
    if g["precision"] == "bf16" and g["framework"] != "torch":
        raise ConfigError("Global.precision=bf16 is a torch-twin option (Paddle's auto_cast "
                          "leaves CPU ops in float32); use precision fp32 or framework torch")
    if (amp_problem := amp_refusal(cfg)) is not None:
        raise ConfigError(amp_problem)
    for section, key in TORCH_ONLY:
        if cfg[section][key] and g["framework"] != "torch":
            raise ConfigError(f"{section}.{key}=true is a torch-twin option (swa_torch's GPU "
                              f"path); set {section}.{key} false, or use framework torch")
    return cfg


def run_dir(cfg: dict) -> str:
    g = cfg["Global"]
    if g["dir"]:
        return g["dir"]
    kind = "swa" if cfg["SWA"]["swa"] else "sgd"
    return os.path.join("output", f"{cfg['Arch']['model'].lower()}_{kind}_{g['framework']}")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config``, the original repo's flags and ``-o``; flags default to None (= keep YAML)."""
    parser.add_argument("--config", "-c", default=None, help="YAML config (configs/*.yaml)")
    for flag in FLAGS:
        section = section_of(flag)
        f = SCHEMA[section][flag]
        if f.type is bool:
            parser.add_argument(f"--{flag}", action="store_true", default=None,
                                help=f"{f.help} ({section}.{flag})")
        else:
            parser.add_argument(f"--{flag}", default=None, type=str,
                                help=f"{f.help} ({section}.{flag})")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="S.KEY=VALUE",
                        help="override any key, e.g. -o Arch.width=0.25 (repeatable)")


def needs_legacy_ir(settings: dict) -> bool:
    """Whether a command must start Paddle with its legacy IR: only ``swa_paddle.onednn``'s
    convolutions need it, and they run for Paddle on the CPU with ``Global.onednn`` true.
    ``settings`` is the ``Global`` section as far as it is known before Paddle is imported
    (a checkpoint's own config needs Paddle to read it); a key not known takes its default,
    and ``auto`` counts as the CPU: whether a GPU is visible is known only after the import."""
    g = {**default_config()["Global"], **settings}
    return g["framework"] == "paddle" and g["onednn"] is not False and g["device"] != "gpu"


def command_line_update(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags and ``-o`` overrides of ``args`` as ``{section: {key: value}}`` (read, not yet
    checked against the schema's ranges)."""
    update: dict[str, dict[str, Any]] = {}
    for flag in FLAGS:
        raw = getattr(args, flag, None)
        if raw is None:
            continue
        section = section_of(flag)
        value = raw if isinstance(raw, bool) else parse_value(section, flag, raw)
        update.setdefault(section, {})[flag] = value
    for text in args.override:
        section, key, value = parse_override(text)
        update.setdefault(section, {})[key] = value
    return update


def resolve(args: argparse.Namespace, base: dict | None = None) -> dict:
    """``base`` (a checkpoint's config) or the YAML or the defaults, then flags, then ``-o``."""
    if base is not None:
        cfg = merge(default_config(), base, "the checkpoint's config")
    else:
        cfg = load_yaml(args.config) if args.config else default_config()
    update = command_line_update(args)
    return validate(merge(cfg, update, "the command line"), launched_world_size())


# Keys a run continued from ``--resume PATH`` may change: where it writes and reads, how long it
# runs (an extension), how often it logs and saves, where it computes (``Data.on_device`` builds
# byte-identical batches). Every other key decided what was trained, so a different value there
# would silently make another run.
RESUME_SAFE_KEYS = frozenset({
    ("Global", "epochs"), ("Global", "dir"), ("Global", "resume"), ("Global", "device"),
    ("Global", "log_freq"), ("Global", "save_freq"), ("Data", "data_path"), ("Data", "md5"),
    ("Data", "num_workers"), ("Data", "on_device"), ("Global", "static_eval")})


def resume_request(args: argparse.Namespace) -> str | None:
    """``Global.resume`` as this command line sets it (flag, ``-o`` or the ``--config`` file):
    ``auto``, a path, or None."""
    update = command_line_update(args).get("Global", {})
    if "resume" in update:
        return update["resume"]
    return load_yaml(args.config)["Global"]["resume"] if args.config else None


def explicit_values(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """Every key this command line sets (the ``--config`` file's, the flags', ``-o``'s), with
    the value it resolves to. ``Arch.num_classes: null`` means "the dataset's": not a choice."""
    update = command_line_update(args)
    named = {(s, k) for s, values in update.items() for k in values}
    cfg = default_config()
    if args.config:
        cfg = load_yaml(args.config)
        named |= yaml_keys(args.config)
    cfg = merge(cfg, update, "the command line")
    return {(s, k): cfg[s][k] for s, k in named
            if not ((s, k) == ("Arch", "num_classes") and cfg[s][k] is None)}


def yaml_keys(path: str) -> set[tuple[str, str]]:
    """The (section, key) pairs a YAML config file names (``load_yaml`` has checked it)."""
    with open(path, encoding="utf-8") as fh:
        data = load_numbers_yaml(fh.read()) or {}
    return {(s, k) for s, values in data.items() for k in values}


def shown(value: Any) -> str:
    """A value as a user would type it after ``-o KEY=`` (strings unquoted and cut at 80,
    booleans and None as YAML writes them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value[:80] if isinstance(value, str) else short(value)


def continued_config(args: argparse.Namespace, saved: dict, path: str) -> dict:
    """The config of the run that ``--resume PATH`` continues: the checkpoint's, in the
    checkpoint's folder, with what the command line sets on top. A key outside
    ``RESUME_SAFE_KEYS`` set to another value than the checkpoint's is refused, naming it."""
    base = merge(default_config(), saved, f"the config of {path}")
    explicit = explicit_values(args)
    for (section, key), value in sorted(explicit.items()):
        if (section, key) not in RESUME_SAFE_KEYS and value != base[section][key]:
            raise ConfigError(
                f"{section}.{key}={shown(value)} would change what {path} trained "
                f"({section}.{key}={shown(base[section][key])}); drop it to continue that run, "
                f"or start a new run without --resume (may change on resume: "
                f"{', '.join(sorted('.'.join(k) for k in RESUME_SAFE_KEYS))})")
    update: dict[str, dict[str, Any]] = {"Global": {"dir": os.path.dirname(path) or "."}}
    for (section, key), value in explicit.items():
        update.setdefault(section, {})[key] = value
    update["Global"]["resume"] = path
    return validate(merge(base, update, "the command line"), launched_world_size())


def check_config_destination(path: str) -> None:
    """Refuse a folder where ``config.yaml`` goes, before anything is written: an export
    checks this first, so a folder named ``config.yaml`` no longer leaves a new program beside
    no config (``infer.py`` would read it with the defaults)."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise ConfigError(f"cannot write {short(path, 200)}: it is a folder; remove or rename it")


def save_config(cfg: dict, path: str) -> None:
    """Write ``cfg`` as YAML atomically: through a new file beside ``path``, flushed, then
    renamed, so a failed write never truncates the previous config and a symlink planted at
    ``path`` is replaced, never written through. Any failure (a folder named ``config.yaml``,
    a full disk) is one ``ConfigError`` line naming the file."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    check_config_destination(path)
    try:
        atomic_save(lambda tmp: _write_text(tmp, text), path)
    except OSError as exc:
        raise ConfigError(f"cannot write {short(path, 200)} ({exc.strerror or exc}); free disk "
                          f"space or fix permissions") from None


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)

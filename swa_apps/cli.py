"""What ``train.py`` and ``eval.py`` do after parsing: pick the twin, build, call, report errors.

Nothing here imports a framework at module level: CPU settings must reach the environment
before Paddle is imported (see ``runtime.tune_cpu_env``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import textwrap
import unicodedata
from collections.abc import Callable
from types import SimpleNamespace

from swa_apps.convert import convert_file
from swa_apps.twins import import_twin
from swa_recipe.arguments import ArgumentParser
from swa_recipe.checkpoint import (
    CheckpointError,
    check_identity,
    check_state_dict,
    check_weight_count,
    framework_of,
)
from swa_recipe.config import (
    RESUME_SAFE_KEYS,
    ConfigError,
    add_config_args,
    command_line_update,
    continued_config,
    needs_legacy_ir,
    resolve,
    resume_request,
    run_dir,
)
from swa_recipe.data.cifar import DataError
from swa_recipe.logs import PROGRESS_SECONDS, get_logger, to_run_log
from swa_recipe.loop import Interrupted, TrainingDiverged
from swa_recipe.numbers import NumberError, float_argument
from swa_recipe.rundir import RunDir, RunDirError
from swa_recipe.runtime import (
    STOP_SIGNALS,
    launched_rank,
    launched_world_size,
    quiet_console,
    show_paddle_output,
    tune_cpu_env,
)

# A NumberError that no caller turned into its own error is still one line: the net under
# every number the project reads (``swa_recipe.numbers``).
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged, RunDirError,
               NumberError)


def run(main: Callable[[], int | None], debug: bool) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit 2 (traceback: --debug).
    Paddle's start-up noise is hidden unless --debug."""
    if debug:
        show_paddle_output()
    else:
        quiet_console()
    previous = {sig: signal.signal(sig, exit_on_signal) for sig in STOP_SIGNALS}
    try:
        return main() or 0
    except Interrupted as exc:
        report(f"interrupted: {exc}")
        return 128 + exc.signum
    except USER_ERRORS as exc:
        if debug:
            raise
        report(f"error: {exc}")
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(line: str) -> None:
    """The last word of a run: on stderr, and in ``train.log`` when there is one; always one
    line, whatever the paths and values quoted in it hold (``one_line``)."""
    line = one_line(line)
    print(line, file=sys.stderr)
    to_run_log(line)


def say(line: str) -> None:
    """A result line on stdout, one line whatever the paths, image names and values quoted in it
    hold (``one_line``): what ``report`` is to errors."""
    print(one_line(line))


LINE_BREAKING = ("Cc", "Cf", "Zl", "Zp")  # control, format (bidi overrides), line/paragraph


def one_line(text: str) -> str:
    """``text`` with control characters escaped as Python writes them (``\\n``, ``\\x1b``,
    ``\\u2028``): a file name holding a newline or a terminal escape would otherwise split the
    error in two or rewrite the user's terminal."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in LINE_BREAKING else c for c in text)


SAFE_KEYS_TEXT = textwrap.fill(", ".join(sorted(".".join(k) for k in RESUME_SAFE_KEYS)),
                               width=92, initial_indent=" " * 18, subsequent_indent=" " * 18)
TRAIN_EPILOG = f"""continuing a run (Ctrl-C prints the command):
  --resume PATH   continue the run of checkpoint PATH: its config, its folder and its data path
                  come from the checkpoint. Only these keys may change (any other set to
                  another value is refused, naming the key):
{SAFE_KEYS_TEXT}
  --resume auto   the newest checkpoint in --dir (default output/<model>_<swa|sgd>_<framework>),
                  with the config of this command line, which must match the run's
"""


def train_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="SGD/SWA training on CIFAR-10/100 "
                                     "(Paddle; --framework torch for the PyTorch twin)",
                                     epilog=TRAIN_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of "
                        "another run in --dir (a fresh run refuses them otherwise)")
    parser.add_argument("--progress", type=float_argument(0, strict=True), default=PROGRESS_SECONDS,
                        metavar="SECONDS", help="without a terminal (nohup, > log), a progress "
                        f"line every SECONDS (default {PROGRESS_SECONDS:g}), in train.log too")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def ensure_writable(out: str) -> None:
    """Fail before any work when the run directory cannot be created or written. The probe
    is created exclusively (``mkstemp``): a symlink planted under a predictable name would
    otherwise create or truncate its target."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to the run directory {out} ({exc.strerror or exc}); "
                          f"pass a writable --dir") from None


def exit_on_signal(signum: int, frame) -> None:
    """SIGINT/SIGTERM outside training (start-up, data loading, eval, predict, export, infer)
    have nothing to save: the command ends at once with one line and the shell's code
    (130/143), not a KeyboardInterrupt traceback; every write is atomic, so nothing is left
    half-written. ``loop.fit`` takes over with graceful handling while it trains."""
    report(f"interrupted: stopped by {signal.Signals(signum).name}")
    sys.exit(128 + signum)


def train_main(args: argparse.Namespace) -> int:
    applied = tune_cpu_env(legacy_ir=needs_legacy_ir(settings_before_import(args)))
    cfg = training_config(args)
    out, world = run_dir(cfg), launched_world_size()
    with RunDir(out, bool(cfg["Global"]["resume"]), args.overwrite) as claim:
        return _train(cfg, out, world, applied, claim, args.progress)


def settings_before_import(args: argparse.Namespace) -> dict:
    """The run's ``Global`` settings as far as they are known before a framework is imported:
    the whole config, except with ``--resume PATH``, whose checkpoint holds the config (reading
    it takes the framework): then what the command line sets."""
    path = resume_request(args)
    if not path or path == "auto":
        return resolve(args)["Global"]
    return command_line_update(args).get("Global", {})


def training_config(args: argparse.Namespace) -> dict:
    """The command line's config, or with ``--resume PATH`` the config of the run that
    checkpoint belongs to (``config.continued_config``). A file that is not a training
    checkpoint with a config falls through to the command line's; ``loop.restore`` then says
    what it is."""
    path = resume_request(args)
    if not path or path == "auto":
        return resolve(args)
    framework = command_line_update(args).get("Global", {}).get("framework")
    state = saved_state(path, framework)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        return resolve(args)
    cfg = continued_config(args, saved, path)
    if isinstance(state.get("state_dict"), dict):  # else ``loop.restore`` says what it is
        check_before_building(cfg, state["state_dict"], path,
                              import_twin(framework_of(path) or cfg["Global"]["framework"]))
    return cfg


def check_before_building(cfg: dict, weights: dict, path: str, twin: SimpleNamespace) -> None:
    """A checkpoint's weights against the model its config names, before that model is built
    (``checkpoint.check_weight_count``): a tiny file cannot make the run allocate a huge one."""
    weights = check_state_dict(weights, path, twin.checkpoint.is_tensor)
    check_weight_count(cfg, twin.checkpoint.shapes(weights), path)


def saved_state(path: str, framework: str | None) -> dict | None:
    """The training checkpoint ``path``, loaded (its config decides the run). A checkpoint
    of the other framework than ``--framework`` asks is refused here, as ``loop.restore``
    would."""
    if not os.path.exists(path):  # a FIFO or a device: the twin's load says what it is
        raise CheckpointError(f"checkpoint {path} not found; pass an existing file to --resume")
    found = framework_of(path)
    if found and framework and found != framework:
        raise CheckpointError(f"{path} is a {found} checkpoint and this run trains with "
                              f"{framework}; resume with --framework {found}, or start "
                              f"from converted weights")
    return import_twin(found or framework or "paddle").checkpoint.load(path)


def _train(cfg: dict, out: str, world: int, applied: dict, claim: RunDir,
           progress_every: float = PROGRESS_SECONDS) -> int:
    """Rank 0 claims the run directory; its log reaches ``train.log`` once ``fit`` begins
    writing, so a refused start (config, data, checkpoint) leaves the directory as it was."""
    from swa_recipe.loop import fit

    logger = None
    if launched_rank() == 0:
        claim.claim(ensure_writable)
        logger = get_logger(out, defer=True)
        if applied:
            logger.info("CPU settings applied: " + " ".join(f"{k}={v}" for k, v in applied.items()))
        logger.info(f"{cfg['Global']['framework']}: {cfg['Arch']['model']} width "
                    f"{cfg['Arch']['width']}, {'SWA' if cfg['SWA']['swa'] else 'SGD'} training "
                    f"for {cfg['Global']['epochs']} epochs on {world} process"
                    f"{'es' if world > 1 else ''} into {out}")
    twin = import_twin(cfg["Global"]["framework"])
    trainer = twin.trainer.Trainer(cfg)
    fit(trainer, cfg, logger, begin=claim.begin, progress_every=progress_every)
    twin.dist.shutdown(trainer.world_size)
    return 0


def checkpoint_parser(description: str) -> argparse.ArgumentParser:
    """``--model_path`` and ``--which`` (eval.py, predict.py, tools/export_model.py)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--model_path", required=True, help="checkpoint-N.pdparams/.pt or a "
                        "plain state dict")
    parser.add_argument("--which", choices=("auto", "swa", "sgd"), default="auto",
                        help="weights of a training checkpoint (auto: SWA when present)")
    return parser


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_config_args(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def eval_parser() -> argparse.ArgumentParser:
    return add_common_args(checkpoint_parser("Evaluate a checkpoint on its CIFAR test set"))


def _framework(args: argparse.Namespace) -> str:
    from_file = framework_of(args.model_path)
    if args.framework and from_file and args.framework != from_file:
        raise CheckpointError(f"{args.model_path} is a {from_file} file but --framework is "
                              f"{args.framework}; drop --framework or convert the file with "
                              f"tools/convert.py")
    return args.framework or from_file or "paddle"


def pick_weights(state: dict, which: str, path: str) -> tuple[str, dict]:
    """(label, state dict) of a training checkpoint or a plain state dict."""
    if "state_dict" not in state:
        if which == "swa":
            raise CheckpointError(f"{path} is a plain state dict without SWA weights; "
                                  f"use --which sgd or auto")
        return "weights", state
    swa = state.get("swa_state_dict") if state.get("swa_n") != 0 else None  # 0: never averaged
    if which == "swa" and swa is None:
        raise CheckpointError(f"{path} holds no SWA weights (trained without --swa, or before "
                              f"swa_start); use --which sgd")
    if which == "sgd" or swa is None:
        return "SGD weights", state["state_dict"]
    return "SWA weights", swa


def without_device(saved: dict | None) -> dict | None:
    """A checkpoint's config without ``Global.device``: where the run trained says nothing
    about this host; eval.py and predict.py take the device from their command line (default
    auto)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("Global"), dict):
        return saved
    return {**saved, "Global": {k: v for k, v in saved["Global"].items() if k != "device"}}


def load_checkpoint(args: argparse.Namespace) -> tuple[SimpleNamespace, dict, str, dict]:
    """(twin, config, label, weights) of ``--model_path``: a training checkpoint (its config,
    ``-o`` on top, must match) or a plain state dict (the model from the flags)."""
    if not os.path.exists(args.model_path):  # a FIFO or a device: the twin's load says so
        raise CheckpointError(f"{args.model_path} not found; pass an existing checkpoint to "
                              f"--model_path")
    framework = _framework(args)
    tune_cpu_env(legacy_ir=needs_legacy_ir(
        {**command_line_update(args).get("Global", {}), "framework": framework}))
    twin = import_twin(framework)
    state = twin.checkpoint.load(args.model_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{args.model_path} holds no state dict; it is not a checkpoint")
    saved = state.get("config")
    cfg = resolve(args, base=without_device(saved))
    check_identity(saved, cfg, args.model_path)
    cfg["Global"]["framework"] = framework  # a plain state dict's config has the default
    cfg["Global"]["device"] = twin.trainer.set_device(cfg["Global"]["device"])
    label, weights = pick_weights(state, args.which, args.model_path)
    check_before_building(cfg, weights, args.model_path, twin)
    return twin, cfg, label, weights


def eval_main(args: argparse.Namespace) -> int:
    twin, cfg, label, weights = load_checkpoint(args)
    device = cfg["Global"]["device"]
    model = twin.models.build_model(cfg)
    twin.checkpoint.load_weights(model, weights, args.model_path)
    if cfg["Global"]["framework"] == "torch":
        model.to(twin.trainer.torch_device(device))
    _, test_loader = twin.data.build_loaders(cfg, training=False, device=device)
    res = twin.trainer.evaluate(model, test_loader)
    n = test_loader.batch_sampler.batches.n
    say(f"{label} of {args.model_path}: test loss {res['loss']:.4f}, "
          f"accuracy {res['accuracy']:.4f} % ({n} images)")
    return 0


def convert_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Convert a checkpoint between PyTorch (.pt) "
                                     "and Paddle (.pdparams)")
    parser.add_argument("src", help="checkpoint or state dict to read")
    parser.add_argument("dst", help="file to write, the other framework's extension")
    add_config_args(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def check_destination(src: str, dst: str) -> None:
    """Refuse before reading anything: a destination that is a directory, in a missing
    directory, or the source itself."""
    folder = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise CheckpointError(f"{dst} is a directory; pass a file name ending in .pt or "
                              f".pdparams")
    if not os.path.isdir(folder):
        raise CheckpointError(f"cannot write {dst}: the directory {folder} does not exist; "
                              f"create it or pass another destination")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst} is the source itself; pass another destination")


def convert_main(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.src):
        raise CheckpointError(f"{args.src} not found; pass an existing checkpoint")
    check_destination(args.src, args.dst)
    tune_cpu_env(legacy_ir=False)  # converting computes nothing
    src_fw = framework_of(args.src)
    state = import_twin(src_fw).checkpoint.load(args.src) if src_fw else None
    saved = state.get("config") if isinstance(state, dict) else None
    cfg = resolve(args, base=saved)
    check_identity(saved, cfg, args.src)
    convert_file(args.src, args.dst, cfg)
    say(f"wrote {args.dst}")
    return 0

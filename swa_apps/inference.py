"""What ``predict.py``, ``tools/export_model.py`` and ``deploy/inference_python/infer.py`` do
after parsing.

Like ``cli.py``, nothing here imports a framework at module level (``tune_cpu_env`` first).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

from swa_apps.cli import (
    add_common_args,
    checkpoint_parser,
    ensure_writable,
    import_twin,
    load_checkpoint,
    say,
)
from swa_apps.twins import import_export
from swa_recipe.arguments import ArgumentParser
from swa_recipe.checkpoint import CheckpointError
from swa_recipe.config import check_config_destination, save_config
from swa_recipe.numbers import int_argument
from swa_recipe.predict import (
    CONFIG_FILE,
    Inputs,
    class_names,
    export_config,
    exported_config,
    exported_framework,
    format_top_k,
    preprocess,
    read_images,
    test_images,
)
from swa_recipe.runtime import tune_cpu_env

Predict = Callable[[np.ndarray], np.ndarray]


def add_input_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--img_path", help="an image file (resized to 32x32 if another size) or "
                       "a folder of images")
    group.add_argument("--index", type=int_argument(0), nargs="+", help="CIFAR test image(s) "
                       "by index, read from the archive (--data_path)")
    parser.add_argument("--top_k", type=int_argument(1), default=3,
                        help="classes shown per image")


def read_inputs(args: argparse.Namespace, cfg: dict) -> Inputs:
    return read_images(args.img_path) if args.img_path else test_images(cfg, args.index)


def batched(predict: Predict, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def print_predictions(inputs: Inputs, logits: np.ndarray, cfg: dict, k: int) -> None:
    names = class_names(cfg)
    for line in format_top_k(inputs, logits, names, max(1, min(k, len(names)))):
        say(line)


def load_model(args: argparse.Namespace, for_export: bool = False):
    """(twin, config, label, model) of ``--model_path``, checked as ``eval.py`` checks it;
    built with framework convolutions when ``for_export``."""
    twin, cfg, label, weights = load_checkpoint(args)
    model = twin.models.build_model(export_config(cfg) if for_export else cfg)
    twin.checkpoint.load_weights(model, weights, args.model_path)
    return twin, cfg, label, model


def predict_parser() -> argparse.ArgumentParser:
    parser = checkpoint_parser("Classify images with a checkpoint (the dynamic model)")
    add_input_args(parser)
    return add_common_args(parser)


def predict_main(args: argparse.Namespace) -> int:
    twin, cfg, label, model = load_model(args)
    inputs = read_inputs(args, cfg)
    export = import_export(cfg["Global"]["framework"])
    logits = batched(lambda x: export.run_model(model, x), preprocess(inputs.images, cfg),
                     cfg["Data"]["batch_size"])
    say(f"{label} of {args.model_path} ({cfg['Arch']['model']}, {cfg['Global']['framework']})")
    print_predictions(inputs, logits, cfg, args.top_k)
    return 0


def export_parser() -> argparse.ArgumentParser:
    parser = checkpoint_parser("Export a checkpoint for inference (Paddle: paddle.jit.save for "
                               "Paddle Inference; torch: torch.export .pt2)")
    parser.add_argument("--save_dir", required=True, help="folder for inference.* and "
                        "config.yaml")
    return add_common_args(parser)


def export_main(args: argparse.Namespace) -> int:
    twin, cfg, label, model = load_model(args, for_export=True)
    ensure_writable(args.save_dir)
    config_path = os.path.join(args.save_dir, CONFIG_FILE)
    check_config_destination(config_path)  # before the program lands beside no config
    export = import_export(cfg["Global"]["framework"])
    files = export.export(model, args.save_dir)
    save_config(cfg, config_path)
    say(f"exported the {label} of {args.model_path} ({cfg['Arch']['model']}) to "
          f"{args.save_dir}: {', '.join(files + [CONFIG_FILE])}")
    return 0


def infer_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Classify images with an exported model "
                                     "(Paddle Inference, or torch.export for a .pt2)")
    parser.add_argument("--model_dir", required=True, help="folder written by "
                        "tools/export_model.py")
    add_input_args(parser)
    parser.add_argument("--batch_size", type=int_argument(1), default=128,
                        help="images per forward pass")
    parser.add_argument("--data_path", help="CIFAR archive for --index (default: the one the "
                        "model was trained on)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--benchmark", action="store_true", help="also time the exported and "
                        "the dynamic model: latency at batch 1, throughput at batch 128")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def infer_main(args: argparse.Namespace) -> int:
    framework = exported_framework(args.model_dir)
    cfg = exported_config(args.model_dir)
    if args.data_path:
        cfg["Data"]["data_path"] = args.data_path
    tune_cpu_env(legacy_ir=False)  # Paddle Inference reads either IR
    export = import_export(framework)
    predictor = export.Predictor(args.model_dir, args.device)
    check_class_count(predictor.num_classes, cfg, args.model_dir)
    inputs = read_inputs(args, cfg)
    logits = batched(predictor, preprocess(inputs.images, cfg), args.batch_size)
    say(f"exported model {args.model_dir} ({cfg['Arch']['model']}, {framework}, "
          f"{predictor.device})")
    print_predictions(inputs, logits, cfg, args.top_k)
    if args.benchmark:
        print_benchmark(predictor, export, cfg, framework)
    return 0


def check_class_count(scored: int, cfg: dict, model_dir: str) -> None:
    """The exported ``config.yaml`` names the classes the program's scores stand for: one of
    another class count (a CIFAR-100 config beside a 10-class export) would print wrong class
    names with no error, so it is refused before any image is read."""
    declared = cfg["Arch"]["num_classes"]
    if scored != declared:
        raise CheckpointError(f"{os.path.join(model_dir, CONFIG_FILE)} declares {declared} "
                              f"classes ({cfg['Data']['dataset']}) but the exported program "
                              f"scores {scored}; export the model again with its own config")


def timed(predict: Predict, x: np.ndarray, runs: int) -> float:
    """Median seconds of ``runs`` calls, after two warm-up calls."""
    for _ in range(2):
        predict(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def print_benchmark(predictor: Predict, export: ModuleType, cfg: dict, framework: str,
                    runs: tuple[int, int] = (50, 5)) -> None:
    """Exported program against the dynamic model of the same config (random weights: speed
    does not depend on them; the dynamic model uses the config's CPU settings)."""
    model = export.dynamic_model(cfg, predictor.device)
    rng = np.random.default_rng(0)
    one, full = (rng.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (1, 128))
    engine = "Paddle Inference" if framework == "paddle" else "torch.export"
    print(f"benchmark ({predictor.device}, {os.environ.get('OMP_NUM_THREADS', '?')} threads; "
          f"median of {runs[0]} / {runs[1]} runs)")
    print(f"{'':28} {'latency, batch 1':>18} {'throughput, batch 128':>24}")
    for name, fn in ((f"exported ({engine})", predictor),
                     ("dynamic model", lambda x: export.run_model(model, x))):
        latency, batch = timed(fn, one, runs[0]), timed(fn, full, runs[1])
        print(f"{name:28} {latency * 1e3:15.2f} ms {128 / batch:18.1f} img/s")


def check_export(framework: str, cfg: dict, weights: dict | None, images: np.ndarray,
                 save_dir: str) -> dict:
    """Export ``weights`` (random ones with BatchNorm statistics of ``images`` when None) and
    compare the exported program's logits with the dynamic model's on ``images``."""
    tune_cpu_env()
    twin = import_twin(framework)
    export = import_export(framework)
    x = preprocess(images, cfg)
    if weights is None:
        weights = random_weights(framework, cfg, x)
    exportable = twin.models.build_model(export_config(cfg))  # framework convolutions
    twin.checkpoint.load_weights(exportable, weights, "the weights")
    files = export.export(exportable, save_dir)
    model = twin.models.build_model(cfg)
    twin.checkpoint.load_weights(model, weights, "the weights")
    dynamic = export.run_model(model, x)
    exported = export.Predictor(save_dir, "cpu")(x)
    return {"files": files, "n": len(x), "max_abs_diff": float(np.abs(dynamic - exported).max()),
            "top1_same": int((dynamic.argmax(1) == exported.argmax(1)).sum())}


def random_weights(framework: str, cfg: dict, x: np.ndarray) -> dict:
    """A fresh model's weights, BatchNorm statistics recomputed on ``x`` (``update_bn``) so that
    BN layers do more than the identity."""
    twin = import_twin(framework)
    model = twin.models.build_model(cfg)
    batch = twin.checkpoint.from_numpy({"x": x})["x"]
    twin.dist.update_bn([(batch,)], model, 1)
    return model.state_dict()

"""Console entry points of the installed package (``swa-train``, ``swa-eval``,
``swa-convert``, ``swa-predict``, ``swa-export``, ``swa-infer``); ``train.py``, ``eval.py``,
``tools/convert.py``, ``predict.py``, ``tools/export_model.py`` and
``deploy/inference_python/infer.py`` call the same functions."""

from __future__ import annotations

from .cli import (
    convert_main,
    convert_parser,
    eval_main,
    eval_parser,
    run,
    train_main,
    train_parser,
)
from .inference import (
    export_main,
    export_parser,
    infer_main,
    infer_parser,
    predict_main,
    predict_parser,
)


def train(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    return run(lambda: train_main(args), args.debug)


def evaluate(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    return run(lambda: eval_main(args), args.debug)


def convert(argv: list[str] | None = None) -> int:
    args = convert_parser().parse_args(argv)
    return run(lambda: convert_main(args), args.debug)


def predict(argv: list[str] | None = None) -> int:
    args = predict_parser().parse_args(argv)
    return run(lambda: predict_main(args), args.debug)


def export(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    return run(lambda: export_main(args), args.debug)


def infer(argv: list[str] | None = None) -> int:
    args = infer_parser().parse_args(argv)
    return run(lambda: infer_main(args), args.debug)

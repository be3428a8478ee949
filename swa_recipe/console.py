"""Console entry points of the installed package (``swa-train``, ``swa-eval``,
``swa-convert``); ``train.py``, ``eval.py`` and ``tools/convert.py`` call the same functions."""

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


def train(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    return run(lambda: train_main(args), args.debug)


def evaluate(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    return run(lambda: eval_main(args), args.debug)


def convert(argv: list[str] | None = None) -> int:
    args = convert_parser().parse_args(argv)
    return run(lambda: convert_main(args), args.debug)

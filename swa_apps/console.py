"""Console entry points of the installed package (``swa-train``, ``swa-eval``,
``swa-convert``, ``swa-predict``, ``swa-export``, ``swa-infer``); ``train.py``, ``eval.py``,
``tools/convert.py``, ``predict.py``, ``tools/export_model.py`` and
``deploy/inference_python/infer.py`` call the same functions (``tools/study.py`` and
``tools/summarize.py`` wrap the study commands with :func:`command` too)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from swa_apps.cli import (
    convert_main,
    convert_parser,
    eval_main,
    eval_parser,
    run,
    train_main,
    train_parser,
)
from swa_apps.inference import (
    export_main,
    export_parser,
    infer_main,
    infer_parser,
    predict_main,
    predict_parser,
)


def command(make_parser: Callable[[], argparse.ArgumentParser],
            main: Callable[[argparse.Namespace], int]) -> Callable[[list[str] | None], int]:
    """An entry point: parse ``argv`` (default: the command line), run ``main`` through
    ``cli.run`` (user errors become one line and exit 2)."""
    def entry(argv: list[str] | None = None) -> int:
        args = make_parser().parse_args(argv)
        return run(lambda: main(args), args.debug)
    return entry


train = command(train_parser, train_main)
evaluate = command(eval_parser, eval_main)
convert = command(convert_parser, convert_main)
predict = command(predict_parser, predict_main)
export = command(export_parser, export_main)
infer = command(infer_parser, infer_main)

"""One reader for every number the project reads: flags and ``-o`` overrides, YAML configs and
study files, checkpoint configs, ``metrics.csv`` and ``labels.txt``.

Python refuses to turn a numeral of more than 4,300 digits into an ``int`` with a ``ValueError``
that names ``sys.set_int_max_str_digits`` (a traceback for a user), ``float`` reads ``nan`` and
``inf`` as numbers, and ``repr`` of such an integer raises too. Every number therefore passes
through here: numerals longer than any setting needs are refused by their length before they
are converted, integers must fit a C int64 (where every integer key ends up), floats must be
finite unless the caller says otherwise, and messages quote at most a few dozen characters of
the value (``short``).
"""

from __future__ import annotations

import argparse
import math
import reprlib
from collections.abc import Callable
from typing import Any

import yaml

MAX_CHARS = 64  # the longest numeral read: a float such as -1.2345678901234567e-308 is 24
INT_LIMIT = 2**63  # every integer key ends up in a C int64
SHOWN = 40  # characters of a refused value quoted in a message


class NumberError(ValueError):
    """A value that is not a usable number; the message names it and says what is accepted."""


class _Brief(reprlib.Repr):
    """``reprlib.Repr`` that also cuts integers: ``repr`` of an integer over 4300 digits raises
    ValueError (Python's int/str limit), and a file or flag can hold one."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxother:  # more digits than could be shown anyway
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


def short(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, in time bounded whatever the value's size or
    nesting: error messages quote values taken from files and the command line."""
    brief = _Brief()
    brief.maxlevel, brief.maxstring, brief.maxother = 3, limit, limit
    text = brief.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _numeral(text: str, name: str) -> str:
    """``text`` stripped, refused by its length before any conversion (a 5,000-digit integer
    would be Python's traceback, a megabyte of digits seconds of work)."""
    text = text.strip()
    if len(text) > MAX_CHARS:
        raise NumberError(f"{name} is a value of {len(text)} characters, longer than any number "
                          f"here needs (at most {MAX_CHARS}); pass a plain number")
    return text


def to_int(value: Any, name: str, low: int | None = None, high: int | None = None,
           text: bool = True) -> int:
    """``value`` (an int, or with ``text`` a decimal numeral) as an int in ``[low, high]``
    (default: a C int64). Booleans and floats are refused: ``true`` or ``2.5`` is no count;
    so are numerals where a typed value belongs (a YAML or pickled ``'3'``: ``text=False``)."""
    if isinstance(value, str) and text:
        numeral = _numeral(value, name)
        try:
            value = int(numeral, 10)
        except ValueError:
            raise NumberError(f"{name} must be an integer, got {short(numeral, SHOWN)}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberError(f"{name} must be an integer, got {short(value, SHOWN)}")
    lowest = -INT_LIMIT + 1 if low is None else low
    highest = INT_LIMIT - 1 if high is None else high
    if not lowest <= value <= highest:
        raise NumberError(f"{name} must be an integer in [{_bound(lowest)}, {_bound(highest)}], "
                          f"got {short(value, SHOWN)}")
    return value


def _bound(limit: int) -> str:
    """A range end as a user reads it: ``2**63 - 1``, not nineteen digits."""
    return {INT_LIMIT - 1: "2**63 - 1", -INT_LIMIT + 1: "-2**63 + 1"}.get(limit, str(limit))


def to_float(value: Any, name: str, text: bool = True) -> float:
    """``value`` (an int, a float, or with ``text`` a numeral such as ``5e-4``, which YAML 1.1
    reads as a string) as a finite float: no number the project reads means anything as NaN
    or an infinity (a learning rate, a budget, an accuracy). An integer of 2**63 or more
    counts as infinite (no setting needs one; ``float()`` of a 400-digit one would raise
    OverflowError)."""
    if isinstance(value, str) and text:
        numeral = _numeral(value, name)
        try:
            value = float(numeral)
        except ValueError:
            raise NumberError(f"{name} must be a number, got {short(numeral, SHOWN)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberError(f"{name} must be a number, got {short(value, SHOWN)}")
    number = float(value) if isinstance(value, float) or abs(value) < INT_LIMIT else math.inf
    if not math.isfinite(number):
        raise NumberError(f"{name} must be a finite number, got {short(value, SHOWN)}")
    return number


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose integers go through ``_numeral``: PyYAML calls ``int()`` on
    any run of digits, so a 5,000-digit value in a config, a study file or ``-o`` would end
    in Python's traceback instead of one line."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _numeral(self.construct_scalar(node), f"the integer at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _numeral(self.construct_scalar(node), f"the number at line {node.start_mark.line + 1}")
        return super().construct_yaml_float(node)


NumberLoader.add_constructor("tag:yaml.org,2002:int", NumberLoader.construct_yaml_int)
NumberLoader.add_constructor("tag:yaml.org,2002:float", NumberLoader.construct_yaml_float)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with every number read through this module (``NumberError`` for a
    numeral longer than ``MAX_CHARS``)."""
    return yaml.load(text, Loader=NumberLoader)  # a SafeLoader subclass


def int_argument(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` reading an integer in ``[low, high]`` through ``to_int``. argparse
    prints an ``ArgumentTypeError``'s message as it is, but a ``ValueError``'s value in full
    (``type=int`` quotes all 5,000 digits), and ``type=int`` lets 0 reach ``range(0, n, 0)``."""
    def integer(text: str) -> int:
        try:
            return to_int(text, "the value", low, high)
        except NumberError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return integer


def float_argument(low: float, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` reading a finite number >= ``low`` (> ``low`` when ``strict``):
    ``nan`` would make every comparison false and ``inf`` never end a wait."""
    def number(text: str) -> float:
        try:
            value = to_float(text, "the value")
        except NumberError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"the value must be a number {'>' if strict else '>='}"
                                             f" {low:g}, got {short(text, SHOWN)}")
        return value
    return number

"""The project's command-line parser: argparse with one-line errors.

``argparse.ArgumentParser.error`` prints the whole usage (nine lines for ``train.py``) above its
message. Every other user error here is one line naming the problem and the fix, exit 2
(``docs/reliability.md``), so a mistyped flag is too: the message, then where the flags are
listed. ``--help`` still prints the usage.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        text = message.replace("\r", "\\r").replace("\n", "\\n")  # a value with a newline
        self.exit(2, f"{self.prog}: error: {text}; see {self.prog} --help\n")

"""Files that may be hostile: read only regular files, replace only regular files or links.

One rule for every reader (CIFAR archives and batches, checkpoints, images) and every export:
a FIFO named where a file is expected blocks ``open`` until a writer comes, a device never ends,
and a folder or special file at a destination cannot be replaced by a rename. Callers turn the
errors into their own one-line messages.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path names a FIFO, a device, a socket or a folder, not a regular file."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` that cannot block or read without end: opened non-blocking (a FIFO
    opens at once), checked on the descriptor it then reads (no window between check and open),
    then switched back to blocking reads. Raises ``NotRegularFile``, or ``OSError`` when the
    path cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def irreplaceable(folder: str, names: tuple[str, ...]) -> str | None:
    """The first of ``folder/name`` that a rename cannot replace (a folder or a special file;
    regular files and links are replaced, never written through), or None."""
    for name in names:
        path = os.path.join(folder, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return path
    return None

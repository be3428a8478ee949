"""One run per run directory, and nothing written there by a start that is refused.

A fresh run into a directory that holds another run's outputs would overwrite its checkpoints,
tables and plot and leave a mix of both runs; two runs in one directory at once would interleave
them. ``RunDir`` refuses both before anything is written: the outputs check reads only, the lock
is an ``flock`` on ``RUN/.run.lock`` (the kernel drops it when its process dies, so the lock of
a killed run is taken over), and the run's own files are written only from ``begin`` on, once
every refusal (config, data, checkpoint) has had its chance.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
from collections.abc import Callable, Iterator

LOCK_NAME = ".run.lock"
# ``NAME.tmp*``: what a write interrupted inside ``checkpoint.atomic_save`` leaves behind.
OUTPUTS = ("checkpoint-*.pdparams", "checkpoint-*.pt", "checkpoint-*.tmp*", "metrics.csv",
           "metrics.csv.tmp*", "train_log.txt", "train_log.txt.tmp*", "config.yaml",
           "config.yaml.tmp*", "curves.png", "curves.png.tmp*", "train.log")


class RunDirError(RuntimeError):
    """The run directory is in use, holds another run, or cannot be written."""


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn a failed write (disk full, permission) into a one-line user error naming the file."""
    try:
        yield
    except OSError as exc:
        raise RunDirError(f"could not write {path} ({exc.strerror or exc}); free disk space or "
                          f"fix permissions, then continue with --resume auto (checkpoints "
                          f"already written are intact)") from None


def run_outputs(out: str) -> list[str]:
    """Names in ``out`` that a run writes (none when ``out`` is not a directory)."""
    try:
        names = sorted(os.listdir(out))
    except OSError:
        return []
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in OUTPUTS)]


class RunDir:
    """Claims ``out`` for one run: ``claim`` checks and locks, ``begin`` starts writing,
    ``release`` unlocks (and removes a directory the refused start created, if still empty)."""

    def __init__(self, out: str, resuming: bool, overwrite: bool):
        self.out, self.resuming, self.overwrite = out, resuming, overwrite
        self.lock_path = os.path.join(out, LOCK_NAME)
        self._fd: int | None = None
        self._created: list[str] = []  # directories this start made, innermost first
        self._begun = False

    def check_fresh(self) -> None:
        """A fresh run refuses a directory holding another run's outputs (read only)."""
        found = run_outputs(self.out)
        if found and not self.resuming and not self.overwrite:
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise RunDirError(f"{self.out} holds another run's outputs ({', '.join(found[:3])}"
                              f"{more}); continue it with --resume auto, pass a new --dir, or "
                              f"--overwrite to replace them")

    def claim(self, make_dir: Callable[[str], None]) -> None:
        """Check, create the directory with ``make_dir``, and lock it against a second run."""
        self.check_fresh()
        path = os.path.abspath(self.out)
        while not os.path.exists(path):
            self._created.append(path)
            path = os.path.dirname(path)
        make_dir(self.out)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                self.release()
                raise RunDirError(f"another run (pid {holder}) is writing to {self.out}; wait "
                                  f"for it to finish or pass another --dir") from None
            if self._same_file(fd):
                break
            os.close(fd)  # its holder removed the file between our open and our lock
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def begin(self) -> None:
        """From here on the run writes: ``--overwrite`` removes the previous run's outputs."""
        if self.overwrite and not self.resuming:
            for name in run_outputs(self.out):
                with writing(os.path.join(self.out, name)):
                    os.remove(os.path.join(self.out, name))
        self._begun = True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.lock_path)
            os.close(self._fd)
            self._fd = None
        if not self._begun:
            with contextlib.suppress(OSError):  # only empty ones: nothing of a refused start
                for path in self._created:
                    os.rmdir(path)
            self._created = []

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

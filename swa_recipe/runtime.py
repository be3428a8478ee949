"""CPU settings that must be in the environment before Paddle (or its MKL) is imported."""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import io
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from swa_recipe.numbers import to_int


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def tune_cpu_env(environ: dict | None = None, legacy_ir: bool = True) -> dict[str, str]:
    """Set what the user left unset; return what was set.

    Paddle runs one OpenMP thread when ``OMP_NUM_THREADS`` is unset, and its bundled MKL takes a
    slow generic path on AMD processors unless ``MKL_DEBUG_CPU_TYPE=5``. Measured on a 2-core AMD
    machine, the two made VGG16 training about 4x faster with identical losses.
    ``FLAGS_enable_pir_api=0`` lets ``swa_paddle.onednn`` run oneDNN convolutions (2.4x faster
    VGG16 training on a 2-core Intel machine); eager training does not otherwise use the IR.
    Paddle reads it once, at import, so it is set only where those convolutions may run
    (``legacy_ir``: ``swa_recipe.config.needs_legacy_ir``); elsewhere Paddle keeps PIR.
    ``MALLOC_ARENA_MAX=2``: with glibc's default of 8 arenas per core, the resident memory of a
    Paddle run kept growing for 20 epochs (fragmentation across the oneDNN and OpenMP threads'
    arenas); with 2 it is flat from the second epoch, at the same speed.
    """
    env = os.environ if environ is None else environ
    applied = {}
    if "OMP_NUM_THREADS" not in env:
        applied["OMP_NUM_THREADS"] = str(usable_cpus())
    if cpu_vendor() == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in env:
        applied["MKL_DEBUG_CPU_TYPE"] = "5"
    if legacy_ir and "FLAGS_enable_pir_api" not in env:
        applied["FLAGS_enable_pir_api"] = "0"
    if "MALLOC_ARENA_MAX" not in env:
        applied["MALLOC_ARENA_MAX"] = "2"  # read by child processes at start
        if environ is None:
            limit_malloc_arenas(2)  # this process has started: tell glibc directly
    env.update(applied)
    return applied


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (``find_library`` runs ``ldconfig``); None where absent."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def limit_malloc_arenas(count: int) -> bool:
    """glibc ``mallopt(M_ARENA_MAX, count)``; False where there is no glibc."""
    libc = _libc()
    try:
        return bool(libc.mallopt(-8, count)) if libc else False  # -8: M_ARENA_MAX
    except AttributeError:  # a C library without mallopt (musl)
        return False


def release_free_memory() -> bool:
    """glibc ``malloc_trim(0)``: hand the free pages inside malloc's arenas back to the system;
    False where there is no glibc.

    A Paddle run with the oneDNN convolutions frees and reallocates buffers of many sizes every
    step. Its heap in use is flat from the second epoch, but the holes between live blocks grew
    its resident memory by 25-40 MiB over lite epochs 2-12 (glibc 2.36): glibc gives memory back
    only from the top of a heap unless asked. ``fit`` asks after every epoch (under 1 ms); only
    free pages go, so no number changes.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)  # 1 when it released something, 0 when there was nothing to release
    except AttributeError:  # a C library without malloc_trim (musl)
        return False
    return True


def launched_world_size(environ: dict | None = None) -> int:
    """Processes started by ``paddle.distributed.launch`` or ``torchrun`` (1 without a launcher)."""
    env = os.environ if environ is None else environ
    return to_int(env.get("PADDLE_TRAINERS_NUM") or env.get("WORLD_SIZE") or 1,
                  "the launcher's PADDLE_TRAINERS_NUM / WORLD_SIZE", 1)


def launched_local_size(environ: dict | None = None) -> int:
    """Processes of this job on this node (``torchrun``: LOCAL_WORLD_SIZE; Paddle's launcher:
    PADDLE_LOCAL_SIZE); 1 without a launcher."""
    env = os.environ if environ is None else environ
    return to_int(env.get("PADDLE_LOCAL_SIZE") or env.get("LOCAL_WORLD_SIZE") or 1,
                  "the launcher's PADDLE_LOCAL_SIZE / LOCAL_WORLD_SIZE", 1)


def launched_rank(environ: dict | None = None) -> int:
    """This process's rank under ``paddle.distributed.launch`` or ``torchrun`` (0 without)."""
    env = os.environ if environ is None else environ
    return to_int(env.get("PADDLE_TRAINER_ID") or env.get("RANK") or 0,
                  "the launcher's PADDLE_TRAINER_ID / RANK", 0)


# What ``paddle/base/__init__.py`` prints to sys.stderr at import when OMP_NUM_THREADS > 1.
IMPORT_BANNER = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")
_quiet = False
_loud = False  # --debug: Paddle's lines as Paddle prints them, the library's filters included

# Warnings Paddle raises that ask nothing of the user, each by its message and the Paddle module
# it comes from: importing Paddle without ccache (only C++ extension builds need it), every
# ``paddle.Model`` batch (hapi converts its own tensors with ``to_tensor``), and every training
# forward of a BatchNorm layer (it states Paddle's behaviour, unconditionally).
PADDLE_NOISE = (
    ("No ccache found", "paddle.utils.cpp_extension"),
    ("To copy construct from a tensor", "paddle.tensor.creation"),
    ("When training, we now always track global mean and variance", "paddle.nn.layer.norm"),
)


def show_paddle_output() -> None:
    """``--debug``: nothing of Paddle's is hidden, not even by ``swa_paddle``'s own import
    (a user chasing a problem needs Paddle's own words)."""
    global _loud
    _loud = True


def filter_paddle_warnings() -> None:
    """Ignore exactly the warnings of ``PADDLE_NOISE``, where Paddle raises them; every other
    warning, Paddle's included, is shown as before. Not under ``--debug``."""
    if _loud:
        return
    for message, module in PADDLE_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning,
                                module=re.escape(module))


def quiet_console(environ: dict | None = None) -> None:
    """Hide Paddle's start-up noise so that the first lines a user sees are the project's.

    ``GLOG_minloglevel=1`` (read when Paddle's core loads; a user's own setting wins) drops the
    glog INFO lines (``I1122 ... pir_interpreter.cc``, ``oneDNN v3.6.2``); the ``No ccache
    found`` warning comes from ``paddle.utils.cpp_extension``; matplotlib's INFO records
    (``generated new fontManager``) reach the root-logger handler Paddle installs; and
    :func:`import_banner_hidden` drops the OMP_NUM_THREADS banner. ``--debug`` skips all this.
    """
    global _quiet, _loud
    _loud = False
    env = os.environ if environ is None else environ
    env.setdefault("GLOG_minloglevel", "1")
    filter_paddle_warnings()
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    _quiet = True


@contextmanager
def import_banner_hidden(always: bool = False) -> Iterator[None]:
    """After :func:`quiet_console` (or ``always``: ``swa_paddle``'s own import of Paddle):
    drop the OMP_NUM_THREADS banner that importing Paddle prints to ``sys.stderr`` (there is
    no switch for it); every other line passes through. Never under ``--debug``."""
    if _loud or not (_quiet or always):
        yield
        return
    real, captured = sys.stderr, io.StringIO()
    sys.stderr = captured
    try:
        yield
    finally:
        sys.stderr = real
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(IMPORT_BANNER):
                real.write(line)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def python_signal_handlers() -> Iterator[None]:
    """Around ``import paddle``: keep Python's handlers for SIGINT and SIGTERM.

    Paddle's import calls ``core.init_glog``, which installs glog's C++ failure handler for
    SIGTERM (with SIGSEGV and the other crash signals) in place of Python's: a SIGTERM after
    it (the rest of the import, start-up, data loading) killed the process silently or with
    Paddle's 14-line "FatalError: Termination signal" instead of the project's line and exit
    code. During the import a signal is only recorded (a handler that exits inside a C
    extension's initialisation would abort it: ``ImportError: initialization failed``), and
    the recorder is put back the moment ``init_glog`` returns (``_after_init_glog``); after
    the import the handlers that were in place are installed again and a recorded signal is
    raised once more, now for them. Paddle keeps its handler for crashes.
    """
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    arrived: list[int] = []

    def record(signum: int, frame) -> None:
        arrived.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, record)
    sys.setprofile(_after_init_glog(record))
    try:
        yield
    finally:
        sys.setprofile(None)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


def _after_init_glog(handler: Callable) -> Callable:
    """A ``sys.setprofile`` function that installs ``handler`` for SIGINT and SIGTERM again
    as soon as Paddle's ``core.init_glog`` returns, then stops profiling: glog's handler
    would otherwise own SIGTERM for the second of the import that follows."""
    def watch(frame, event: str, arg) -> None:
        if event == "c_return" and getattr(arg, "__name__", "") == "init_glog":
            for sig in STOP_SIGNALS:
                signal.signal(sig, handler)
            sys.setprofile(None)
    return watch


def _cache_usable(home: str) -> bool:
    """Whether ``home/.cache`` exists as a writable folder or can be created."""
    cache = os.path.join(home, ".cache")
    folder = cache if os.path.lexists(cache) else home
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


_REAL_HOME: str | None = None  # set when ``use_writable_home`` moved HOME


def use_writable_home() -> str | None:
    """Before ``import paddle``: Paddle writes under ``~/.cache`` (its import creates its
    dataset folder; converting a model, which eval does for its oneDNN convolutions and
    export for the program, creates dy2static's temporary folder) and ends in a traceback
    where that cannot be created (a read-only or missing HOME, a HOME that is a file). Then
    HOME points at a private temporary folder for this process (removed at exit); return it
    (None when HOME was usable). The project's own download cache keeps the real HOME
    (``user_home``) and says in one line when it cannot be written."""
    global _REAL_HOME
    home = os.path.expanduser("~")
    if _REAL_HOME is not None or _cache_usable(home):
        return None
    fallback = tempfile.mkdtemp(prefix="swa-home-")
    atexit.register(shutil.rmtree, fallback, ignore_errors=True)
    _REAL_HOME, os.environ["HOME"] = home, fallback
    return fallback


def user_home() -> str:
    """The user's HOME, also after ``use_writable_home`` replaced it for Paddle."""
    return _REAL_HOME or os.path.expanduser("~")

"""What decides a run's numbers besides its config and code, and checking a re-run against them.

A run reproduces bit for bit only on the same kind of CPU: the kernels of oneDNN, MKL and torch
pick code paths by instruction set (AVX2, AVX-512, AMX, ...) and round differently on each. So a
study run's ``command.txt`` records the CPU model, the instruction-set flags those kernels
dispatch on, the thread count, the versions that compute (framework, numpy, Python) and the
commit, and the runner compares a re-trained run's rows with the committed ones: on the same
kind of CPU every row must be equal; on another, only the size of the difference is news.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata

from swa_recipe.data.regular import open_regular

# Instruction-set flags (as /proc/cpuinfo names them) that the kernels dispatch on.
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_int8")
PACKAGES = ("paddlepaddle", "torch", "numpy")
MACHINE_PREFIX = "# machine: "


def cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """(model name, kernel flags) of the first CPU listed; the platform's processor name and no
    flags where there is no /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in KERNEL_FLAGS if f in present]
            break
    return model, flags


def git_commit(root: str) -> str | None:
    """The short commit of the checkout at ``root``, or None where there is none to read (a
    tree copied without ``.git``, no git installed): what decides the numbers besides the
    machine."""
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    """Installed versions of the packages that compute (read from metadata: no import)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def threads(environ: dict | None = None) -> str:
    """The OpenMP thread count the run uses (what ``runtime.tune_cpu_env`` leaves set)."""
    env = os.environ if environ is None else environ
    return env.get("OMP_NUM_THREADS") or str(len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class Machine:
    cpu: str
    flags: tuple[str, ...]
    threads: str
    versions: tuple[tuple[str, str], ...]

    @classmethod
    def here(cls, environ: dict | None = None) -> Machine:
        cpu, flags = cpuinfo()
        return cls(cpu, tuple(flags), threads(environ), tuple(versions().items()))

    def line(self) -> str:
        """One ``command.txt`` comment line: ``# machine: cpu=...; flags=...; ...``."""
        parts = [f"cpu={self.cpu}", f"flags={','.join(self.flags) or '-'}",
                 f"threads={self.threads}"] + [f"{k}={v}" for k, v in self.versions]
        return MACHINE_PREFIX + "; ".join(p.replace(";", ",") for p in parts)

    @classmethod
    def parse(cls, line: str) -> Machine | None:
        if not line.startswith(MACHINE_PREFIX):
            return None
        fields = dict(p.partition("=")[::2] for p in line[len(MACHINE_PREFIX):].split("; "))
        if not {"cpu", "flags", "threads"} <= fields.keys():
            return None
        flags = tuple(f for f in fields.pop("flags").split(",") if f and f != "-")
        return cls(fields.pop("cpu"), flags, fields.pop("threads"), tuple(fields.items()))

    def same_kind(self, other: Machine | None) -> bool:
        """Bit-for-bit comparable: same CPU model, kernel flags, threads and versions."""
        return other is not None and self == other


def recorded_machine(command_txt: str) -> Machine | None:
    """The machine of the last recorded start in a run's ``command.txt`` (None: not recorded,
    as in runs trained before this record existed)."""
    try:
        with open_regular(command_txt) as fh:  # a FIFO would block
            lines = fh.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    found = [m for m in map(Machine.parse, lines) if m is not None]
    return found[-1] if found else None


def first_difference(committed: list[dict], new: list[dict]) -> str | None:
    """The first cell (``time`` aside) where ``new`` rows differ from the committed rows of the
    same epochs; None while they agree."""
    for old, row in zip(committed, new, strict=False):  # the epochs both have
        for key in old:
            if key == "time":
                continue
            a, b = old.get(key), row.get(key)
            if not (a == b or (isinstance(a, float) and isinstance(b, float)
                               and math.isnan(a) and math.isnan(b))):
                return f"epoch {row.get('ep')} {key} {b} against the committed {a}"
    return None

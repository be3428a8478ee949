"""Where a run computes and how many loader processes feed it, decided the same way for both
twins and for ``train.py`` and ``eval.py``.

The framework modules report what they see (a CUDA build, visible GPUs); the decisions and the
messages live here, so the twins cannot disagree.
"""

from __future__ import annotations

import os

from swa_recipe.config import ConfigError
from swa_recipe.runtime import launched_local_size, usable_cpus

GPU_BUILDS = {
    "paddle": "paddlepaddle-gpu (pip install paddlepaddle-gpu==3.3.1 -i "
              "https://www.paddlepaddle.org.cn/packages/stable/cu126/)",
    "torch": "a CUDA build of torch (pip install torch==2.13.0 --index-url "
             "https://download.pytorch.org/whl/cu126)",
}
# Loader processes per GPU process at most: bench/throughput.py --part loader measures the
# numpy augmentation's images/s per worker; 8 workers feed what a GPU takes of VGG16 (README).
MAX_AUTO_WORKERS = 8


def resolve_device(asked: str, framework: str, cuda_build: bool, gpus_visible: int,
                   option: str = "Global.device") -> tuple[str, str | None]:
    """(``"gpu"`` or ``"cpu"``, a one-line note or None) for ``Global.device`` (training,
    evaluation, predict, export) or ``--device`` (``option``: Paddle Inference, torch.export).

    ``auto`` is a GPU only when one is visible, so a GPU build on a host without one falls back
    to the CPU (with a note; a CPU-only build needs none) instead of failing; ``gpu`` without
    a GPU is a user error naming what to install or check.
    """
    cpu = "-o Global.device=cpu" if option == "Global.device" else f"{option} cpu"
    if asked == "cpu":
        return "cpu", None
    if gpus_visible > 0:
        return "gpu", None
    if asked == "gpu":
        if not cuda_build:
            raise ConfigError(f"{option} is gpu but this {framework} build has no CUDA; "
                              f"install {GPU_BUILDS[framework]}, or pass {cpu}")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ConfigError(f"{option} is gpu but {framework} sees no GPU "
                          f"(CUDA_VISIBLE_DEVICES={visible}); check the driver and "
                          f"CUDA_VISIBLE_DEVICES, or pass {cpu}")
    if not cuda_build:  # a CPU-only build: the CPU is what anyone expects, nothing to say
        return "cpu", None
    return "cpu", (f"note: {option} auto: {framework} runs on the CPU (its build has CUDA "
                   f"but no GPU is visible)")


def loader_workers(setting: str, device: str, cpus: int | None = None,
                   local_processes: int | None = None) -> int:
    """``Data.num_workers`` as a count. ``auto``: none on the CPU (training threads use every
    core), else the cores this process's share of the node leaves after itself, at most
    ``MAX_AUTO_WORKERS``."""
    if setting != "auto":
        return int(setting)
    if device != "gpu":
        return 0
    cpus = usable_cpus() if cpus is None else cpus
    share = cpus // (launched_local_size() if local_processes is None else local_processes)
    return max(1, min(MAX_AUTO_WORKERS, share - 1))

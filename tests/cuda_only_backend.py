"""Run a script under ``torchrun`` with the default process group initialised as "cuda:gloo".

gloo registered for CUDA tensors only, as NCCL is: on a CPU host this reproduces what a GPU job
meets, a collective on a CPU tensor failing with "No backend type associated with device type
cpu". ``python -m torch.distributed.run --nproc_per_node 2 THIS_FILE SCRIPT ARGS...``
"""

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch.distributed as dist  # noqa: E402


def main() -> int:
    dist.init_process_group("cuda:gloo")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        if dist.is_initialized():  # gloo's threads may abort an exit that skips this
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())

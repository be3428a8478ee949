"""Export to a static program (``paddle.jit``) and run it with Paddle Inference.

An exported program is data, not a program to trust: Paddle Inference runs whatever operators it
holds, ``save``/``save_combine`` (writing any file) and ``load``/``load_combine`` included.
``check_program`` admits only the operators ``export`` writes for the project's models, before a
predictor is created.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import struct
import tempfile

import numpy as np
import paddle
from paddle import inference, nn
from paddle.base.proto import framework_pb2

from swa_recipe.checkpoint import CheckpointError, check_export_destinations
from swa_recipe.data.safe_pickle import short
from swa_recipe.predict import IMAGE_SIZE, PREFIX, class_count
from swa_recipe.runtime import usable_cpus

from .models import build_model
from .trainer import choose_device, set_device

# Legacy IR (FLAGS_enable_pir_api=0) writes a .pdmodel, PIR a .json; both load either way.
MODEL_SUFFIXES = (".json", ".pdmodel")
PARAMS = PREFIX + ".pdiparams"
# Everything ``export`` may write, the parameters (how infer.py knows a Paddle export) last.
PADDLE_FILES = (PREFIX + ".pdmodel", PREFIX + ".json", PARAMS + ".info", PARAMS)
TORCH_FILES = (PREFIX + ".pt2",)  # the torch twin's export: a folder holds one twin's files
# The operators ``export`` writes for every model of the project (tests/test_hardening.py
# exports each under both IRs): legacy ``OpDesc.type`` and PIR's serialized op names.
LEGACY_OPERATORS = frozenset({
    "feed", "fetch", "conv2d", "batch_norm", "relu", "elementwise_add", "pool2d",
    "flatten_contiguous_range", "matmul_v2", "reshape2", "dropout"})
PIR_OPERATORS = frozenset({
    "p", "1.data", "1.fetch", "1.conv2d", "1.batch_norm", "1.batch_norm_", "1.relu", "1.relu_",
    "1.add", "1.add_", "1.pool2d", "1.flatten", "1.full", "1.full_int_array", "1.matmul",
    "1.reshape", "1.dropout"})


@paddle.no_grad()
def run_model(model: nn.Layer, x: np.ndarray) -> np.ndarray:
    """Logits of the dynamic model in evaluation mode."""
    model.eval()
    return model(paddle.to_tensor(x)).numpy()


def dynamic_model(cfg: dict, device: str) -> nn.Layer:
    """The config's model on ``device`` (what ``predict.py`` runs), randomly initialised."""
    set_device(device)
    return build_model(cfg)


def export(model: nn.Layer, save_dir: str) -> list[str]:
    """``paddle.jit.to_static`` + ``paddle.jit.save`` for any batch of 3 x 32 x 32 images;
    return the files written.

    ``paddle.jit.save`` writes into a staging folder inside ``save_dir``; the files then replace
    the folder's earlier export (either twin's) by rename, parameters last: a folder holds one
    export, a crash leaves no mix of two, and a symlink at a destination is replaced, never
    written through.
    """
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, IMAGE_SIZE, IMAGE_SIZE], "float32", "x")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    check_export_destinations(save_dir, PADDLE_FILES + TORCH_FILES)
    try:
        staging = tempfile.mkdtemp(prefix=".export-", dir=save_dir)
    except OSError as exc:
        raise write_error(save_dir, exc) from None
    try:
        paddle.jit.save(static, os.path.join(staging, PREFIX))
        written = [f for f in PADDLE_FILES if os.path.isfile(os.path.join(staging, f))]
        install(staging, save_dir, written)
    except OSError as exc:
        raise write_error(save_dir, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(written)


def write_error(save_dir: str, exc: OSError) -> CheckpointError:
    """A failed write (read-only or full disk, missing folder) as the one-line user error."""
    return CheckpointError(f"cannot write the export to {save_dir} ({exc.strerror or exc}); "
                           f"pass a writable --save_dir")


def install(staging: str, save_dir: str, written: list[str]) -> None:
    """Move the staged files into ``save_dir``: first remove the earlier export (parameters
    first, so the folder reads as holding no model rather than a mix), then rename the new
    files in, parameters last."""
    staged = [f for f in PADDLE_FILES if f in written]  # PARAMS is the last
    for name in staged:
        with open(os.path.join(staging, name), "rb+") as fh:
            os.fsync(fh.fileno())
    for name in (PARAMS, *TORCH_FILES, *PADDLE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(save_dir, name))
    for name in staged:
        os.replace(os.path.join(staging, name), os.path.join(save_dir, name))


def model_file(model_dir: str) -> str:
    """The newest program file of ``model_dir`` (a folder exported under both IRs has two)."""
    found = [os.path.join(model_dir, PREFIX + s) for s in MODEL_SUFFIXES]
    found = [f for f in found if os.path.isfile(f)]
    if not found:
        raise CheckpointError(f"{model_dir} has {PREFIX}.pdiparams but no {PREFIX}.pdmodel or "
                              f"{PREFIX}.json; export the model again with "
                              f"tools/export_model.py")
    return max(found, key=os.path.getmtime)


def legacy_operators(raw: bytes) -> list[str] | None:
    """Operator types of every block of a ``.pdmodel`` (None: not a program)."""
    program = framework_pb2.ProgramDesc()
    program.ParseFromString(raw)
    if not program.blocks:
        return None
    return [op.type for block in program.blocks for op in block.ops]


def pir_operators(raw: bytes) -> list[str] | None:
    """Serialized names of every operation of a PIR ``.json`` program, nested regions included
    (None: not a program): any list under an ``ops`` key, wherever it is."""
    program = json.loads(raw)
    if not isinstance(program, dict) or not isinstance(program.get("program"), dict):
        return None
    found, stack = [], [program["program"]]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ops = item.get("ops")
            if ops is not None:
                if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
                    return None
                found.extend(op.get("#") for op in ops)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check_regular(path: str) -> None:
    """A FIFO, a device or a folder is refused before it is opened: reading one would hang or
    never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file; pass the folder written by "
                              f"tools/export_model.py")


FLOAT32 = framework_pb2.VarType.FP32  # every tensor export writes (weights, BN statistics)
MAX_DESC_BYTES = 1 << 10  # a TensorDesc is a dtype and a few dims: 4 to 20 bytes


def next_tensor(fh, left: int) -> int:
    """Walk one tensor of a ``save_combine`` file (version, LoD levels, version, TensorDesc,
    raw data) without reading its data; return the bytes it takes. Refuse what export never
    writes (LoD, another dtype or version) and a size larger than what is ``left``: Paddle
    allocates what a tensor claims before reading it."""
    head = fh.read(16)
    if len(head) < 16:
        raise ValueError("a tensor header is cut short")
    version, lod_levels, tensor_version = struct.unpack("<IQI", head)
    if version or lod_levels or tensor_version:
        raise ValueError("a tensor has a version or LoD levels export never writes")
    size_raw = fh.read(4)
    desc_size = struct.unpack("<i", size_raw)[0] if len(size_raw) == 4 else -1
    if not 0 < desc_size <= min(MAX_DESC_BYTES, left - 20):
        raise ValueError(f"a tensor description claims {desc_size} bytes")
    desc = framework_pb2.VarType.TensorDesc()
    desc.ParseFromString(fh.read(desc_size))
    if desc.data_type != FLOAT32 or len(desc.dims) > 8 or any(d < 0 for d in desc.dims):
        raise ValueError(f"a tensor of type {desc.data_type} and shape {short(list(desc.dims))}"
                         f" (export writes float32 tensors)")
    need = 20 + desc_size + math.prod(desc.dims) * 4
    if need > left:
        raise ValueError(f"a tensor of shape {short(list(desc.dims))} claims {need} bytes, "
                         f"{left} are left in the file")
    fh.seek(need - 20 - desc_size, os.SEEK_CUR)
    return need


def check_params(path: str) -> None:
    """Every tensor of ``inference.pdiparams`` fits in the file, and the tensors fill it
    exactly: a few bytes claiming a [2**34] tensor must not reach Paddle Inference."""
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            left = os.fstat(fh.fileno()).st_size
            while left > 0:
                left -= next_tensor(fh, left)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None
    except Exception as exc:  # ValueError above, protobuf's DecodeError
        raise CheckpointError(f"{path} cannot be loaded by Paddle Inference: refusing to "
                              f"load it ({str(exc)[:200]}: truncated or forged); export the "
                              f"model again with tools/export_model.py") from None


def read_program(path: str) -> bytes:
    """The program file's bytes, once it is known to be a regular file."""
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None


def check_program(path: str) -> None:
    """Refuse a program file that is not one (Paddle Inference crashes, SIGSEGV, on some) or
    that holds an operator ``export`` never writes: file I/O (``save``, ``load``), control flow,
    anything unknown."""
    raw = read_program(path)
    try:
        ops = pir_operators(raw) if path.endswith(".json") else legacy_operators(raw)
    except Exception:  # protobuf's DecodeError, json's JSONDecodeError, UnicodeDecodeError
        ops = None
    if ops is None:
        raise CheckpointError(f"{path} is not a Paddle program (truncated or another file); "
                              f"export the model again with tools/export_model.py")
    allowed = PIR_OPERATORS if path.endswith(".json") else LEGACY_OPERATORS
    odd = [op for op in ops if op not in allowed]
    if odd:
        raise CheckpointError(f"{path}: refusing to load: it runs the operator {short(odd[0])}, "
                              f"which no exported model of this project holds (it could read "
                              f"or write files); export the model again with "
                              f"tools/export_model.py")


def inference_device(device: str) -> str:
    """``--device`` by the training path's policy (``trainer.choose_device``): ``auto`` is a
    GPU only when one is visible, so a CUDA build without one infers on the CPU."""
    return choose_device(device, "--device")


class Predictor:
    """An exported model under Paddle Inference: oneDNN and all cores on CPU, or the GPU."""

    def __init__(self, model_dir: str, device: str = "auto"):
        self.device = inference_device(device)
        program = model_file(model_dir)
        check_program(program)
        params = os.path.join(model_dir, PARAMS)
        check_params(params)
        config = inference.Config(program, params)
        config.disable_glog_info()
        if self.device == "gpu":
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.enable_mkldnn()
            threads = int(os.environ.get("OMP_NUM_THREADS") or usable_cpus())
            config.set_cpu_math_library_num_threads(threads)
        try:
            self.predictor = inference.create_predictor(config)
        except Exception as exc:  # Paddle raises several types for a damaged program
            raise CheckpointError(f"{program} cannot be loaded by Paddle Inference "
                                  f"({exc.__class__.__name__}); export the model again") from None
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        self.num_classes = class_count(self, program)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.input.reshape(list(x.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(x, dtype=np.float32))
        self.predictor.run()
        return self.output.copy_to_cpu()

"""Export to a static program (``paddle.jit``) and run it with Paddle Inference."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
from paddle import inference, nn
from paddle.base.proto import framework_pb2

from swa_recipe.checkpoint import CheckpointError
from swa_recipe.config import ConfigError
from swa_recipe.predict import IMAGE_SIZE, PREFIX
from swa_recipe.runtime import usable_cpus

from .models import build_model
from .trainer import set_device

# Legacy IR (FLAGS_enable_pir_api=0) writes a .pdmodel, PIR a .json; both load either way.
MODEL_SUFFIXES = (".json", ".pdmodel")


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
    return the files written."""
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, IMAGE_SIZE, IMAGE_SIZE], "float32", "x")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(save_dir, PREFIX))
    return sorted(f for f in os.listdir(save_dir) if f.startswith(PREFIX + "."))


def model_file(model_dir: str) -> str:
    """The newest program file of ``model_dir`` (a folder exported under both IRs has two)."""
    found = [os.path.join(model_dir, PREFIX + s) for s in MODEL_SUFFIXES]
    found = [f for f in found if os.path.isfile(f)]
    if not found:
        raise CheckpointError(f"{model_dir} has {PREFIX}.pdiparams but no {PREFIX}.pdmodel or "
                              f"{PREFIX}.json; export the model again with "
                              f"tools/export_model.py")
    return max(found, key=os.path.getmtime)


def check_program(path: str) -> None:
    """Refuse a program file that is not one: Paddle Inference crashes (SIGSEGV) on some."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if path.endswith(".json"):
            valid = isinstance(json.loads(raw), dict)
        else:
            program = framework_pb2.ProgramDesc()
            program.ParseFromString(raw)
            valid = len(program.blocks) > 0
    except Exception:  # protobuf's DecodeError, json's JSONDecodeError, UnicodeDecodeError
        valid = False
    if not valid:
        raise CheckpointError(f"{path} is not a Paddle program (truncated or another file); "
                              f"export the model again with tools/export_model.py")


def inference_device(device: str) -> str:
    """``auto`` is the GPU when Paddle was built with CUDA; ``gpu`` requires such a build."""
    cuda = paddle.is_compiled_with_cuda()
    if device == "gpu" and not cuda:
        raise ConfigError("--device gpu, but this Paddle has no CUDA; install paddlepaddle-gpu "
                          "or pass --device cpu")
    return "gpu" if device == "gpu" or (device == "auto" and cuda) else "cpu"


class Predictor:
    """An exported model under Paddle Inference: oneDNN and all cores on CPU, or the GPU."""

    def __init__(self, model_dir: str, device: str = "auto"):
        self.device = inference_device(device)
        program = model_file(model_dir)
        check_program(program)
        config = inference.Config(program, os.path.join(model_dir, PREFIX + ".pdiparams"))
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.input.reshape(list(x.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(x, dtype=np.float32))
        self.predictor.run()
        return self.output.copy_to_cpu()

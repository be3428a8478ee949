"""Weight conversion between the twins, on numpy arrays: names, layouts, nothing framework-bound.

torch -> Paddle transposes Linear weights (Paddle stores ``[in, out]``), renames BatchNorm's
``running_mean``/``running_var`` to ``_mean``/``_variance`` and drops ``num_batches_tracked``;
Paddle -> torch undoes it (``num_batches_tracked`` is not recreated: nothing reads it in eval and
``update_bn`` resets it).
"""

from __future__ import annotations

import numpy as np

from swa_apps.twins import import_twin
from swa_recipe.checkpoint import (
    CheckpointError,
    check_shapes,
    check_state_dict,
    check_weight_count,
    framework_of,
)

BN_NAMES = {"running_mean": "_mean", "running_var": "_variance"}
DIRECTIONS = ("torch2paddle", "paddle2torch")


def _rename(key: str, mapping: dict[str, str]) -> str:
    head, _, last = key.rpartition(".")
    return f"{head}.{mapping[last]}" if last in mapping else key


def convert_state_dict(state: dict[str, np.ndarray], direction: str) -> dict[str, np.ndarray]:
    """A plain model state dict of one framework as the other's, values as numpy arrays."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction}")
    mapping = BN_NAMES if direction == "torch2paddle" else {v: k for k, v in BN_NAMES.items()}
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        value = np.asarray(value)
        if key.endswith(".weight") and value.ndim == 2:  # Linear
            value = np.ascontiguousarray(value.T)
        out[_rename(key, mapping)] = value
    return out


WEIGHT_KEYS = ("state_dict", "swa_state_dict")


def convert_checkpoint(state: dict, direction: str, to_numpy, target: str) -> dict:
    """A whole training checkpoint: both weight sets converted; ``optimizer``, ``scheduler``
    and the AMP loss ``scaler`` dropped (their layouts differ between frameworks: a converted
    checkpoint evaluates and initialises, it does not resume); the config names the ``target``
    framework."""
    if "state_dict" not in state:
        return convert_state_dict(to_numpy(state), direction)
    out = {k: v for k, v in state.items() if k not in WEIGHT_KEYS + ("optimizer", "scheduler")}
    for key in WEIGHT_KEYS:
        weights = state.get(key)
        out[key] = None if weights is None else convert_state_dict(to_numpy(weights), direction)
    out["optimizer"] = out["scheduler"] = out["scaler"] = None
    if isinstance(out.get("config"), dict):
        out["config"] = {**out["config"], "Global": {**out["config"]["Global"],
                                                     "framework": target}}
    return out


def convert_file(src: str, dst: str, cfg: dict) -> dict:
    """Convert checkpoint ``src`` (.pt/.pdparams) into ``dst`` (the other kind), after checking
    every converted weight set against the target model built from ``cfg``."""
    src_fw, dst_fw = framework_of(src), framework_of(dst)
    if src_fw is None or dst_fw is None or src_fw == dst_fw:
        raise CheckpointError(f"convert {src} -> {dst}: one must end in .pt and the other in "
                              f".pdparams")
    source, target = import_twin(src_fw), import_twin(dst_fw)
    state = source.checkpoint.load(src)
    if not isinstance(state, dict):
        raise CheckpointError(f"{src} holds no state dict; it is not a checkpoint")
    sources = ([state[k] for k in WEIGHT_KEYS if state.get(k) is not None]
               if "state_dict" in state else [state])
    for weights in sources:
        check_state_dict(source.checkpoint.to_numpy(weights), src,
                         lambda v: isinstance(v, np.ndarray))
    converted = convert_checkpoint(state, f"{src_fw}2{dst_fw}", source.checkpoint.to_numpy,
                                   dst_fw)
    weight_sets = ([converted[k] for k in WEIGHT_KEYS if converted.get(k) is not None]
                   if "state_dict" in converted else [converted])
    for weights in weight_sets:
        check_weight_count(cfg, {k: v.shape for k, v in weights.items()}, src)
    model = target.models.build_model(cfg)
    expected = target.checkpoint.shapes(model.state_dict())
    for weights in weight_sets:
        check_shapes(expected, {k: v.shape for k, v in weights.items()}, src)
    if "state_dict" in converted:
        for key in WEIGHT_KEYS:
            if converted[key] is not None:
                converted[key] = target.checkpoint.from_numpy(converted[key])
    else:
        converted = target.checkpoint.from_numpy(converted)
    try:
        target.checkpoint.save(converted, dst)
    except OSError as exc:
        raise CheckpointError(f"could not write {dst} ({exc.strerror or exc}); free disk space "
                              f"or fix permissions") from None
    return converted

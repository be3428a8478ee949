"""Export with ``torch.export`` (a ``.pt2`` that loads without this project) and run it.

An exported model is data, not a program: ``torch.export.load`` unpickles payloads flagged
``use_pickle`` (and falls back to it) with ``weights_only=False``, ``exec``s the archive's
``guards_code``, ``sympify``s (``eval``) its symbolic expressions, loads AOTInductor libraries and
calls any ``torch.*`` callable a graph node names (``torch.os.system``). ``Predictor`` reads the
archive once, checks it against what ``export`` writes (entries, payload configs, operators,
expressions) and only then hands the same bytes to ``torch.export.load``, with every
``torch.load`` forced to ``weights_only=True``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import stat
import tempfile
import zipfile

import numpy as np
import torch
from torch import nn

from swa_recipe.checkpoint import CheckpointError, check_export_destinations
from swa_recipe.data.safe_pickle import short
from swa_recipe.predict import IMAGE_SIZE, PREFIX, class_count

from .models import build_model
from .trainer import choose_device, torch_device

ARCHIVE = PREFIX + ".pt2"
# The Paddle twin's export (``swa_paddle.export``): a folder holds one twin's files.
PADDLE_FILES = (PREFIX + ".pdiparams", PREFIX + ".pdmodel", PREFIX + ".json",
                PREFIX + ".pdiparams.info")
MAX_ARCHIVE_BYTES = 2 << 30  # WideResNet28x10's archive is 146 MB
# What ``export`` writes for every model of the project (tests/test_hardening.py exports each).
OPERATORS = frozenset(f"torch.ops.aten.{op}" for op in (
    "conv2d.default", "batch_norm.default", "relu.default", "relu_.default", "add.Tensor",
    "add_.Tensor", "max_pool2d.default", "avg_pool2d.default", "flatten.using_ints",
    "linear.default", "dropout.default"))
ENTRIES = re.compile(r"archive_format|archive_version|byteorder|\.data/version"
                     r"|\.data/serialization_id|models/model\.json"
                     r"|data/sample_inputs/model\.pt|data/weights/model_weights_config\.json"
                     r"|data/weights/weight_\d{1,6}|data/constants/model_constants_config\.json"
                     r"|data/constants/tensor_\d{1,6}")
PAYLOAD = re.compile(r"(weight|tensor)_\d{1,6}")
# Parameter and module names (``features.0.weight``): ``.module()`` writes them into the Python
# source of the unlifted graph (``getattr(self, "...")``), unescaped.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]{0,200}")
# What a pytree spec of ``((images,), {})`` and one output tensor names.
SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.dict", "builtins.list"})
SPEC_CONTEXTS = frozenset({None, "null", "[]"})
# A symbol's name (``s77``) in range constraints and symbolic sizes.
SYMBOL = re.compile(r"[a-z][a-z0-9_]{0,31}")
# What a symbolic size's ``srepr`` may call (``Symbol('s77', positive=True, integer=True)``).
SYMPY_CALLS = frozenset({"Symbol", "Integer", "Add", "Mul"})


@torch.no_grad()
def run_model(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the dynamic model in evaluation mode."""
    model.eval()
    device = next(model.parameters()).device
    return model(torch.from_numpy(x).to(device)).cpu().numpy()


def dynamic_model(cfg: dict, device: str) -> nn.Module:
    """The config's model on ``device`` (what ``predict.py`` runs), randomly initialised."""
    return build_model(cfg).to(torch_device(device))


def export(model: nn.Module, save_dir: str) -> list[str]:
    """``torch.export`` with a dynamic batch dimension + ``torch.export.save``; return the
    files written.

    The archive is written beside its destination and renamed onto it, after the Paddle twin's
    files are removed: the folder then holds this export alone (``infer.py`` picks the twin by
    its files), a crash leaves the old export or none, and a symlink at the destination is
    replaced, never written through.
    """
    model.eval()
    example = (torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE),)
    program = torch.export.export(model, example,
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    check_export_destinations(save_dir, (ARCHIVE, *PADDLE_FILES))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{ARCHIVE}.", suffix=".tmp", dir=save_dir)
        os.fchmod(fd, shared_mode())
    except OSError as exc:
        raise write_error(save_dir, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.export.save(program, fh)
            fh.flush()
            os.fsync(fh.fileno())
        remove_files(save_dir, PADDLE_FILES)
        os.replace(tmp, os.path.join(save_dir, ARCHIVE))
    except (OSError, RuntimeError) as exc:  # torch's zip writer raises RuntimeError
        raise write_error(save_dir, exc) from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    return [ARCHIVE]


def shared_mode() -> int:
    """The mode ``open`` would give a new file (0o666 less the umask): ``mkstemp`` makes it
    private (0o600), and an exported model is meant to be shared."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(save_dir: str, exc: Exception) -> CheckpointError:
    """A failed write (read-only or full disk, missing folder) as the one-line user error."""
    reason = getattr(exc, "strerror", None) or short(str(exc), 120)
    return CheckpointError(f"cannot write the export to {save_dir} ({reason}); pass a "
                           f"writable --save_dir")


def remove_files(save_dir: str, names: tuple[str, ...]) -> None:
    """Remove files (or symlinks, not their targets) of an earlier export, if present."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(save_dir, name))


def inference_device(device: str) -> str:
    """``--device`` by the training path's policy (``trainer.choose_device``): ``auto`` is a
    GPU only when one is visible, so a CUDA build without one infers on the CPU."""
    return choose_device(device, "--device")


class ArchiveRefused(ValueError):
    """The archive is not what ``export`` writes; the message says what differs."""


def read_archive(path: str) -> bytes:
    """The archive's bytes, read once (what is checked is what is loaded). Opened
    non-blocking and checked on that descriptor: a FIFO, a device or a folder is refused
    without blocking, a file over ``MAX_ARCHIVE_BYTES`` before it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path} is not a regular file; pass the folder written by "
                                  f"tools/export_model.py")
        if info.st_size > MAX_ARCHIVE_BYTES:
            raise CheckpointError(f"{path} holds {info.st_size} bytes, more than any model of "
                                  f"this project exports ({MAX_ARCHIVE_BYTES})")
        os.set_blocking(fd, True)
        try:
            raw = fh.read(info.st_size)  # read(n) allocates n bytes up front: n is the size
        except OSError as exc:
            raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None
    if len(raw) != info.st_size:
        raise CheckpointError(f"{path} changed while it was read; export the model again")
    return raw


def check_zip(raw: bytes) -> None:
    """Zip readers disagree on which of two same-named entries counts: refuse duplicates, so
    that the entries checked are the entries loaded. ``torch.export.save`` stores entries
    uncompressed: a compressed one could inflate a small file to gigabytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArchiveRefused(f"not a zip archive ({short(str(exc))})") from None
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        raise ArchiveRefused("it holds two entries of the same name")
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise ArchiveRefused(f"it holds {short(packed[0])} compressed, which "
                             f"torch.export.save never writes")
    if sum(i.file_size for i in infos) > len(raw):
        raise ArchiveRefused("its entries claim more bytes than the file holds")


def check_payloads(reader, kind: str) -> None:
    """``data/{kind}/model_{kind}_config.json``: every payload raw tensor bytes (never
    ``use_pickle``), named as ``torch.export.save`` names them, claiming no more elements than
    its record holds (an empty record would be filled with ``torch.zeros(sizes)``)."""
    config = json.loads(reader.read_string(f"data/{kind}/model_{kind}_config.json"))
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ArchiveRefused(f"its {kind} config is not a mapping")
    for name, meta in entries.items():
        if not PLAIN_NAME.fullmatch(name):
            raise ArchiveRefused(f"{kind} name {short(name)} is not a parameter name")
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise ArchiveRefused(f"{kind} {short(name)} is pickled (use_pickle), which would "
                                 f"run code on loading")
        path, tensor = meta.get("path_name"), meta.get("tensor_meta")
        if not isinstance(path, str) or not PAYLOAD.fullmatch(path) or not isinstance(
                tensor, dict) or not isinstance(tensor.get("sizes"), list):
            raise ArchiveRefused(f"{kind} {short(name)} is not a plain tensor payload")
        numel = 1
        for size in tensor["sizes"]:
            value = size.get("as_int") if isinstance(size, dict) else None
            if type(value) is not int or value < 0:
                raise ArchiveRefused(f"{kind} {short(name)} has a size {short(size)}")
            numel *= value
        if numel > reader.archive_file.get_record_size(f"data/{kind}/{path}"):
            raise ArchiveRefused(f"{kind} {short(name)} claims more elements than its record "
                                 f"holds")


def plain_sympy(node: ast.AST) -> bool:
    """An ``srepr`` of sizes: ``Symbol``/``Integer``/``Add``/``Mul`` calls of names, integers,
    booleans and symbol names, ``+ - *``; no attribute, subscript or other call."""
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS
                and all(plain_sympy(a) for a in node.args)
                and all(k.arg is not None and plain_sympy(k.value) for k in node.keywords))
    if isinstance(node, ast.Constant):
        value = node.value
        return type(value) in (int, bool) or (isinstance(value, str)
                                              and SYMBOL.fullmatch(value) is not None)
    if isinstance(node, ast.Name):
        return SYMBOL.fullmatch(node.id) is not None
    if isinstance(node, ast.BinOp):
        return (isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)) and plain_sympy(node.left)
                and plain_sympy(node.right))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub) and plain_sympy(node.operand)
    return False


def check_expression(expr) -> None:
    """One ``expr_str``: the deserializer hands it to ``sympy.sympify``, which ``eval``s it."""
    try:
        tree = ast.parse(expr, mode="eval") if isinstance(expr, str) and len(expr) < 200 \
            else None
    except SyntaxError:
        tree = None
    if tree is None or not plain_sympy(tree.body):
        raise ArchiveRefused(f"a symbolic size {short(expr)} is not plain arithmetic of sizes")


def check_expressions(node) -> None:
    """Every symbolic expression (``expr_str``) anywhere in the program, checked."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                check_expression(item["expr_str"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def plain_strings(node) -> bool:
    """Every key and string of ``node`` a plain name (``PLAIN_NAME``)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not PLAIN_NAME.fullmatch(item):
            return False
    return True


def plain_spec(text) -> bool:
    """A serialized pytree spec of tuples, lists and dicts without keys (what ``export``'s
    ``((images,), {})`` and single output give)."""
    try:
        _, spec = json.loads(text)
    except (TypeError, ValueError):
        return False
    stack = [spec]
    while stack:
        item = stack.pop()
        if not (isinstance(item, dict) and item.get("type") in SPEC_TYPES
                and item.get("context") in SPEC_CONTEXTS
                and isinstance(item.get("children_spec"), list)):
            return False
        stack.extend(item["children_spec"])
    return True


def check_names(graph_module: dict) -> None:
    """Names that ``.module()`` turns into Python source: the signature's parameter and buffer
    names, the module call graph's paths, argument names and pytree specs."""
    if not plain_strings(graph_module.get("signature")):
        raise ArchiveRefused("its signature names a parameter or input with characters no "
                             "module path has")
    calls = graph_module.get("module_call_graph")
    if not isinstance(calls, list):
        raise ArchiveRefused("it holds no module call graph")
    for entry in calls:
        signature = entry.get("signature") if isinstance(entry, dict) else None
        ok = isinstance(entry, dict) and isinstance(entry.get("fqn"), str) and \
            PLAIN_NAME.fullmatch(entry["fqn"]) is not None
        if ok and signature is not None:
            rest = {k: v for k, v in signature.items() if k not in ("in_spec", "out_spec")} \
                if isinstance(signature, dict) else None
            ok = (rest is not None and plain_strings(rest)
                  and plain_spec(signature.get("in_spec"))
                  and plain_spec(signature.get("out_spec")))
        if not ok:
            raise ArchiveRefused(f"its module call graph holds {short(entry)}, which export "
                                 f"never writes")


def node_targets(program: dict) -> list:
    """The target of every node of every graph, subgraphs passed as arguments included: any
    list under a ``nodes`` key, wherever it is."""
    found, stack = [], [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            nodes = item.get("nodes")
            if isinstance(nodes, list):
                found.extend(n.get("target") if isinstance(n, dict) else n for n in nodes)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check_program(program) -> None:
    """``models/model.json``: only the operators ``export`` writes, plain names where
    ``.module()`` writes source, no guard code (``exec``d on loading), range constraints of
    plain names and integers, plain symbolic sizes."""
    graph = program.get("graph_module", {}).get("graph") if isinstance(program, dict) else None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ArchiveRefused("it holds no graph")
    for target in node_targets(program):
        if target not in OPERATORS:
            raise ArchiveRefused(f"it calls {short(target)}, which no exported model of this "
                                 f"project calls")
    check_names(program["graph_module"])
    if program.get("guards_code"):
        raise ArchiveRefused("it holds guard code, which would run on loading")
    ranges = program.get("range_constraints")
    if not isinstance(ranges, dict) or not all(
            isinstance(k, str) and SYMBOL.fullmatch(k) and isinstance(v, dict)
            and all(b is None or type(b) is int for b in v.values()) for k, v in ranges.items()):
        raise ArchiveRefused("its range constraints are not plain names and integers")
    check_expressions(program)


def check_sample_inputs(raw: bytes) -> None:
    """The example inputs (a ``torch.save`` zip inside the archive): stored records that fit in
    it, read with ``weights_only=True`` (torch.export would fall back to
    ``weights_only=False``): ``((images,), {})``, each tensor claiming no more than its storage
    holds."""
    check_zip(raw)
    sample = torch.load(io.BytesIO(raw), weights_only=True)
    if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[0], tuple)
            and sample[1] == {} and all(isinstance(t, torch.Tensor) for t in sample[0])):
        raise ArchiveRefused("its sample inputs are not the (images,) export writes")
    for tensor in sample[0]:
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise ArchiveRefused("its sample inputs claim more elements than they hold")


def check_archive(raw: bytes) -> None:
    """Raise ``ArchiveRefused`` unless the archive holds what ``export`` writes: the listed
    entries only (no AOTInductor library, custom or opaque objects, legacy pickled weights),
    payloads of raw tensor bytes, the project's operators, sample inputs that load with
    ``weights_only=True``."""
    from torch.export.pt2_archive import PT2ArchiveReader

    check_zip(raw)
    try:
        with PT2ArchiveReader(io.BytesIO(raw)) as reader:
            names = reader.get_file_names()
            odd = [n for n in names if not ENTRIES.fullmatch(n)]
            if odd:
                raise ArchiveRefused(f"it holds {short(odd[0])}, which torch.export.save "
                                     f"writes for no model of this project")
            for kind in ("weights", "constants"):
                check_payloads(reader, kind)
            check_program(json.loads(reader.read_string("models/model.json")))
            check_sample_inputs(reader.read_bytes("data/sample_inputs/model.pt"))
    except ArchiveRefused:
        raise
    except Exception as exc:  # a missing entry, bad JSON, a sample that needs pickle
        raise ArchiveRefused(f"it is damaged or not an export of this project "
                             f"({exc.__class__.__name__})") from None


@contextlib.contextmanager
def weights_only_loads():
    """While loading, every ``torch.load`` unpickles with ``weights_only=True``: torch.export
    asks for ``weights_only=False`` for pickled payloads and as a fallback."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def load_exported(path: str) -> nn.Module:
    """The module of the archive at ``path``, checked before ``torch.export.load`` sees it."""
    raw = read_archive(path)
    try:
        check_archive(raw)
    except ArchiveRefused as exc:
        raise CheckpointError(f"{path}: refusing to load: {exc}; export the model again with "
                              f"tools/export_model.py") from None
    try:
        with weights_only_loads():
            return torch.export.load(io.BytesIO(raw)).module()
    except Exception as exc:  # torch raises several types for a damaged archive
        raise CheckpointError(f"{path} cannot be loaded by torch.export "
                              f"({exc.__class__.__name__}); export the model again") from None


class Predictor:
    """An exported ``.pt2`` program, checked (``load_exported``), loaded with
    ``torch.export.load``."""

    def __init__(self, model_dir: str, device: str = "auto"):
        self.device = inference_device(device)
        module = load_exported(os.path.join(model_dir, ARCHIVE))
        self.target = torch_device(self.device)
        self.module = module.to(self.target)
        self.num_classes = class_count(self, os.path.join(model_dir, ARCHIVE))

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.target)
        return self.module(x).cpu().numpy()

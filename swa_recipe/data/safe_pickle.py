"""One restricted unpickler for every pickle the project reads (Paddle checkpoints, CIFAR batches).

A pickle is a program: any global it names can be called. This reader admits only the globals
that files of numeric arrays and plain containers need, and stands in for numpy's own
constructors so that a file cannot forge what they would trust:

- ``numpy.dtype``: only plain numeric dtypes (bool, int, uint, float, complex); a forged state
  (object/refcount flags, fields, subarrays) is refused, since numpy would trust it and free
  addresses taken from the file.
- ``_reconstruct`` + ``ndarray.__setstate__``: the array's raw bytes must be in the file and
  match its shape and dtype exactly, so arrays never take more memory than the file itself.
- Before unpickling, every size the file claims is checked against what the file holds, so a
  tiny file cannot make Python allocate gigabytes: lengths of bytes, strings and integers, the
  length of a protocol-4 frame (the C unpickler asks the file for that many bytes at once), and
  memo indices (the C unpickler sizes and zeroes its memo to twice the largest index stored:
  ``LONG_BINPUT 2**28`` in 9 bytes would take 4 GiB).

What is returned is then walked once per object (``walk``): nesting depth and cycles are bounded
so that later walks, copies and messages stay linear in the file's size.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from swa_recipe.numbers import short

MAX_DEPTH = 64  # a checkpoint nests 4 deep, a CIFAR batch 2
MAX_OPCODES = 50_000_000  # far above a 200 MB checkpoint's count
# How far a memo index may run ahead of the entries stored so far: Python 2's cPickle numbers
# its memo from 1 and pickle.py's ``keep_alive`` takes a slot it never writes; a few more cost
# nothing.
MEMO_SLACK = 16
MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
MEMO_GETS = ("GET", "BINGET", "LONG_BINGET")
NUMERIC_DTYPE = re.compile(r"[biufc]\d{1,2}")


class UnsafePickle(ValueError):
    """The file is refused; callers add its name and turn it into their user error."""


class _DType:
    """Stands in for ``numpy.dtype`` while unpickling: a plain numeric dtype and its byte order."""

    def __init__(self, spec=None, align=False, copy=True):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or not NUMERIC_DTYPE.fullmatch(spec):
            raise UnsafePickle(f"dtype {short(spec)} is not a plain numeric dtype")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise UnsafePickle(f"dtype {short(spec)} is not a plain numeric dtype") from None

    def __setstate__(self, state) -> None:
        """numpy's dtype state: (version, byte order, subarray, names, fields, itemsize,
        alignment, flags[, metadata]); only a byte order may differ from the plain dtype's."""
        if not isinstance(state, tuple) or len(state) not in (8, 9):
            raise UnsafePickle("forged dtype state")
        _, order, subarray, names, fields, size, align, flags, *meta = state
        if isinstance(order, bytes):  # Python 2 pickles read with encoding="bytes"
            order = order.decode("latin1")
        if (order not in ("<", ">", "|", "=") or subarray is not None or names is not None
                or fields is not None or size not in (-1, self.dtype.itemsize)
                or align not in (-1, self.dtype.alignment) or flags != self.dtype.flags
                or any(m for m in meta)):
            raise UnsafePickle(f"forged dtype state {short(state)} (object or refcount flags, "
                               f"fields or sizes a numeric dtype never has)")
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayClass:
    """Stands in for ``numpy.ndarray`` as ``_reconstruct``'s argument; never callable."""

    def __init__(self, *args, **kwargs):
        raise UnsafePickle("the file calls numpy.ndarray directly")


class _Array(np.ndarray):
    """An empty array until its state is checked: raw bytes that fill exactly its shape."""

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickle("forged array state")
        version, shape, dtype, fortran, raw = state
        if isinstance(raw, str):  # Python 2 pickles read with latin1
            raw = raw.encode("latin1")
        if (not isinstance(dtype, _DType) or not isinstance(shape, tuple) or len(shape) > 32
                or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(raw, (bytes, bytearray)) or fortran not in (0, 1)):
            raise UnsafePickle("forged array state (only numeric arrays stored as raw bytes "
                               "are read)")
        need = int(np.prod(shape, dtype=object)) * dtype.dtype.itemsize
        if need != len(raw):
            raise UnsafePickle(f"an array of shape {short(shape)} needs {need} bytes, the file "
                               f"holds {len(raw)}")
        super().__setstate__((version, shape, dtype.dtype, bool(fortran), raw))


class _Global:
    """What ``find_class`` hands the unpickler: a stand-in's call and nothing else, so that
    pickle's BUILD cannot set attributes on the stand-ins themselves."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state) -> None:
        raise UnsafePickle("the file sets state on a global")


def _reconstruct(cls, shape, typecode) -> _Array:
    if (not isinstance(cls, _Global) or cls.fn is not _ArrayClass or shape != (0,)
            or typecode not in (b"b", "b")):
        raise UnsafePickle("forged numpy._reconstruct call")
    return np.ndarray.__new__(_Array, (0,), np.uint8)


def _scalar(dtype, raw):
    if (not isinstance(dtype, _DType) or not isinstance(raw, bytes)
            or len(raw) != dtype.dtype.itemsize):
        raise UnsafePickle("forged numpy scalar")
    return np.frombuffer(raw, dtype.dtype)[0]


def _sequence(kind: type) -> Callable:
    def build(items=()):
        if not isinstance(items, (list, tuple)):
            raise UnsafePickle(f"{kind.__name__} of {type(items).__name__}")
        return kind(items)
    return build


def _latin1(text, encoding="latin1") -> bytes:
    """How protocols 0-2 store ``bytes`` written by Python 3: ``_codecs.encode(str, latin1)``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickle("forged _codecs.encode call")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """Protocols 0-2 store ``b""`` as ``bytes()``; ``bytes(n)`` would allocate ``n`` bytes."""
    if args:
        raise UnsafePickle("forged bytes() call")
    return b""


def _ordered_dict(items=()):
    if not isinstance(items, (list, tuple)):
        raise UnsafePickle("OrderedDict of a non-list")
    return OrderedDict(items)


NUMPY = {("numpy", "dtype"): _DType, ("numpy", "ndarray"): _ArrayClass,
         ("_codecs", "encode"): _latin1,
         ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes,
         **{(m, "_reconstruct"): _reconstruct
            for m in ("numpy.core.multiarray", "numpy._core.multiarray")}}
# What ``paddle.save`` writes for tensors, arrays and plain containers.
CHECKPOINT_GLOBALS = {
    **NUMPY,
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "tuple"): _sequence(tuple), ("builtins", "set"): _sequence(set),
}
# What CIFAR python batches (Python 2 pickles of dicts, lists and arrays, or Python 3 ones in
# protocol 2) hold.
CIFAR_GLOBALS = dict(NUMPY)


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, allowed: dict, encoding: str):
        super().__init__(fh, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return _Global(self.allowed[(module, name)])
        raise UnsafePickle(f"the file refers to {module[:60]}.{name[:60]}, which "
                           f"such a file never needs (it could run code); use a trusted file")

    def persistent_load(self, pid):
        raise UnsafePickle("the file refers to external objects")


class _Bounded:
    """A reader that never asks the file for more than it holds: what ``pickletools`` reads a
    claimed length with, so a claim larger than the file fails before any allocation."""

    def __init__(self, fh, size: int):
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self.fh.readline(self.left if limit is None or limit < 0 else min(limit,
                                                                                 self.left))
        self.left -= len(data)
        return data


class _Memo:
    """The memo indices a pickle stores and reads, checked as the opcodes are walked.

    The C unpickler grows its memo to twice the largest index stored and zeroes it, so an index
    must stay within ``MEMO_SLACK`` of the number of entries stored before it (a pickle of ``n``
    bytes then sizes the memo by ``O(n)``); a read must name an index stored before. One byte
    per index records what was stored.
    """

    def __init__(self):
        self.stored = bytearray()
        self.puts = 0
        self.distinct = 0

    def put(self, index: int) -> None:
        if not 0 <= index <= self.puts + MEMO_SLACK:
            raise UnsafePickle(f"the file stores memo entry {short(index)} after "
                               f"{self.puts} entries (pickles number them in order; a large "
                               f"index would make the unpickler allocate gigabytes)")
        if index >= len(self.stored):
            self.stored.extend(bytes(index + 1 - len(self.stored)))
        if not self.stored[index]:
            self.stored[index] = 1
            self.distinct += 1
        self.puts += 1

    def get(self, index: int) -> None:
        if not (0 <= index < len(self.stored) and self.stored[index]):
            raise UnsafePickle(f"the file reads memo entry {short(index)}, which it never "
                               f"stored")

    def check(self, name: str, arg) -> None:
        """One opcode: ``MEMOIZE`` stores at the count of distinct entries, as the C unpickler
        does."""
        if name in MEMO_PUTS:
            self.put(arg)
        elif name == "MEMOIZE":
            self.put(self.distinct)
        elif name in MEMO_GETS:
            self.get(arg)


def check_frame(reader: _Bounded, length: int) -> None:
    """A protocol-4 frame must fit in what is left of the file: the C unpickler asks the file
    for the whole frame in one read, and a buffered file allocates what is asked."""
    if length > reader.left:
        raise UnsafePickle(f"the file claims a frame of {short(length)} bytes and holds "
                           f"{reader.left} more (truncated or forged)")


def check_lengths(fh, size: int) -> None:
    """Walk the opcodes once: every claimed length, frame and memo index must fit in the file,
    and a pickle ends."""
    count = 0
    reader, memo = _Bounded(fh, size), _Memo()
    try:
        for op, arg, _ in pickletools.genops(reader):
            count += 1
            if count > MAX_OPCODES:
                raise UnsafePickle(f"more than {MAX_OPCODES} pickle operations")
            if op.name == "FRAME":
                check_frame(reader, arg)
            else:
                memo.check(op.name, arg)
    except UnsafePickle:
        raise
    except Exception as exc:  # ValueError: a length beyond the end, an unknown opcode
        raise pickle.UnpicklingError(short(str(exc))) from None


def load(fh, allowed: dict, encoding: str = "ASCII"):
    """Unpickle a seekable binary file with the ``allowed`` globals (``CHECKPOINT_GLOBALS``,
    ``CIFAR_GLOBALS``); raises ``UnsafePickle`` for a refused file, other errors for a
    truncated or malformed one."""
    start = fh.tell()
    size = fh.seek(0, os.SEEK_END) - start
    fh.seek(start)
    check_lengths(fh, size)
    fh.seek(start)
    return walk(_Unpickler(fh, allowed, encoding).load())


def loads(raw: bytes, allowed: dict, encoding: str = "ASCII"):
    return load(io.BytesIO(raw), allowed, encoding)


CONTAINERS = (dict, list, tuple, set)
LEAVES = (str, bytes, int, float, complex, bool, type(None), np.ndarray, np.generic)


def _loaded_array(obj) -> bool:
    return isinstance(obj, _Array)


def _plain_array(obj: _Array) -> np.ndarray:
    return obj.view(np.ndarray)


def walk(obj, match: Callable[[object], bool] = _loaded_array, fn: Callable = _plain_array,
         leaves: tuple | type = LEAVES):
    """``obj`` rebuilt with ``fn`` applied to every part that ``match``es, visiting each object
    once.

    Shared sub-objects stay shared (a few hundred bytes of pickle can reference one list 2**40
    times through its memo). Nesting deeper than ``MAX_DEPTH``, cycles, and types other than
    plain containers and ``leaves`` are refused. By default loaded arrays become plain
    ``numpy.ndarray``.
    """
    done: dict[int, object] = {}
    keep = []  # the visited objects, so that their ids stay unique during the walk

    def visit(node, depth: int, path: frozenset):
        key = id(node)
        if key in done:
            return done[key]
        if key in path:
            raise UnsafePickle("the file holds a container that contains itself")
        if depth > MAX_DEPTH:
            raise UnsafePickle(f"the file nests containers more than {MAX_DEPTH} deep")
        if match(node):
            out = fn(node)
        elif isinstance(node, CONTAINERS):
            inner = path | {key}
            if isinstance(node, dict):
                out = type(node)((visit(k, depth + 1, inner), visit(v, depth + 1, inner))
                                 for k, v in node.items())
            else:
                out = type(node)(visit(v, depth + 1, inner) for v in node)
        elif isinstance(node, leaves):
            out = node
        else:
            raise UnsafePickle(f"the file holds a {short(type(node).__name__)}, which it never "
                               f"needs")
        done[key] = out
        keep.append(node)
        return out

    return visit(obj, 0, frozenset())

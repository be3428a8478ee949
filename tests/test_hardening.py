"""Hardening, round 2 (issue 21): the unpickler's memo and frames, exported models as data,
the library API's argument checks, and non-regular data files.

The CLI paths of the crafted pickles run under the hostile suite's memory cap
(``test_hostile.py``); these tests call the functions themselves.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from swa_recipe import safe_pickle
from swa_recipe.safe_pickle import UnsafePickle

MEMO_BOMB = b"\x80\x02]r" + struct.pack("<I", 2**28) + b"."  # LONG_BINPUT 2**28, 9 bytes


def test_memo_bomb_would_take_gigabytes_without_the_check():
    """The crafted file is a real threat: the C unpickler fails under a 1 GiB address-space
    cap (so the refusal below is what keeps it from allocating 4 GiB)."""
    code = ("import pickle, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "try:\n    pickle.loads(sys.stdin.buffer.read())\n"
            "except MemoryError:\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], input=MEMO_BOMB, capture_output=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr[-500:]


@pytest.mark.parametrize(("raw", "words"), [
    (MEMO_BOMB, "memo entry 268435456 after 0 entries"),
    (b"(lp99999999\n.", "memo entry 99999999"),
    (b"(lp-1\n.", "memo entry -1"),
    (b"\x80\x04]\x94h\x05.", "memo entry 5, which it never stored"),
    (b"\x80\x02j" + struct.pack("<I", 2**31 - 1) + b".", "never stored"),
    (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.", "frame of 1099511627776 bytes"),
])
def test_unpickler_refuses_claims_larger_than_the_file(raw, words, tmp_path):
    """Memo indices and frame lengths are bounded before the C unpickler sees them, for a
    bytes object and for a buffered file (which would allocate what a frame claims)."""
    with pytest.raises(UnsafePickle, match=words):
        safe_pickle.loads(raw, safe_pickle.CHECKPOINT_GLOBALS)
    path = tmp_path / "x.pkl"
    path.write_bytes(raw)
    with open(path, "rb") as fh, pytest.raises(UnsafePickle, match=words):
        safe_pickle.load(fh, safe_pickle.CIFAR_GLOBALS, encoding="bytes")


def test_unpickler_reads_what_every_pickler_writes():
    """Real pickles keep loading: every protocol up to 4, the C and the pure-Python pickler
    (different memo use), shared sub-objects (memo reads), and Python 2's cPickle numbering
    its memo from 1."""
    shared = np.arange(5.0)
    obj = {"a": [shared, shared], "b": {"x": np.zeros(3, np.float32)}, "c": (1, "x", b"y")}
    for protocol in range(5):
        for pickler in (pickle.Pickler, pickle._Pickler):
            buf = io.BytesIO()
            pickler(buf, protocol=protocol).dump(obj)
            got = safe_pickle.loads(buf.getvalue(), safe_pickle.CHECKPOINT_GLOBALS)
            assert got["a"][0] is got["a"][1] and np.array_equal(got["a"][0], shared)
    # cPickle (Python 2), protocol 2: {'labels': [1, 2]} with memo indices from 1
    py2 = b"\x80\x02}q\x01U\x06labelsq\x02]q\x03(K\x01K\x02es."
    assert safe_pickle.loads(py2, safe_pickle.CIFAR_GLOBALS, encoding="bytes") == {
        b"labels": [1, 2]}


def test_memo_may_run_ahead_by_the_slack_only():
    ahead = b"\x80\x02]r" + struct.pack("<I", safe_pickle.MEMO_SLACK) + b"."
    assert safe_pickle.loads(ahead, safe_pickle.CHECKPOINT_GLOBALS) == []
    beyond = b"\x80\x02]r" + struct.pack("<I", safe_pickle.MEMO_SLACK + 1) + b"."
    with pytest.raises(UnsafePickle, match="memo entry"):
        safe_pickle.loads(beyond, safe_pickle.CHECKPOINT_GLOBALS)


def test_short_cuts_integers_beyond_pythons_digit_limit():
    """``repr`` of an integer over 4300 digits raises; messages quote such values."""
    assert safe_pickle.short(1 << 20000) == "<an integer of 20001 bits>"
    assert "integer of 20001 bits" in safe_pickle.short([1 << 20000, 2])
    assert safe_pickle.short(12345) == "12345"

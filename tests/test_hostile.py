"""Hostile and malformed files: each ends in one ``error:`` line and exit 2, runs nothing,
overwrites nothing, and stays within a memory cap and a time limit.

The crafted inputs are built here; ``hostile_worker.py`` runs them all through the CLI entry
points (``train``, ``eval``, ``convert``) in one subprocess whose address space is capped at
what Paddle and torch take plus 1.5 GiB, each case under its own alarm.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_batches, write_folder

WORKER = Path(__file__).with_name("hostile_worker.py")
LINE_LIMIT = 600  # characters: messages cut long values


class Reduce:
    """Pickles as the given ``__reduce__`` tuple: how an attacker names any callable."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def forged_array(shape, dtype_state, raw: bytes, spec: str = "f8") -> Reduce:
    """What ``numpy`` pickles an array as, with every field chosen by the attacker."""
    dtype = Reduce(np.dtype, (spec, False, True), dtype_state)
    return Reduce(np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                  (1, shape, dtype, False, raw))


PLAIN_F8 = (3, "<", None, None, None, -1, -1, 0)


def nested_dag(depth: int) -> list:
    """A list holding the same list twice, ``depth`` times: 2**depth paths, a few bytes."""
    node: list = ["x"]
    for _ in range(depth):
        node = [node, node]
    return node


def deep_list_pickle(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep, in raw opcodes (``pickle.dumps`` would recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def self_containing_pickle() -> bytes:
    return b"\x80\x02]q\x00h\x00a."


def claimed_bytes8(n: int) -> bytes:
    """BINBYTES8 claiming ``n`` bytes, holding 8: 23 bytes that ask for ``n``."""
    return b"\x80\x04\x8e" + struct.pack("<Q", n) + b"x" * 8 + b"."


def memo_bomb(index: int = 2**28) -> bytes:
    """9 bytes: an empty list stored at memo index ``index`` (LONG_BINPUT); the C unpickler
    would size and zero a memo of ``2 * index`` pointers (4 GiB for 2**28)."""
    return b"\x80\x02]r" + struct.pack("<I", index) + b"."


def memo_and_frame_claims() -> dict[str, tuple[bytes, list[str]]]:
    """Sizes a pickle claims through its memo and its frames, each a few bytes."""
    return {
        "memo_long_binput_2_28": (memo_bomb(), ["memo entry 268435456", "after 0 entries"]),
        "memo_put_text_10_8": (b"(lp99999999\n.", ["memo entry 99999999"]),
        "memo_put_negative": (b"(lp-1\n.", ["memo entry -1"]),
        "memo_binput_after_puts": (b"\x80\x02]q\x00]q\x01]r" + struct.pack("<I", 2**31 - 1)
                                   + b"\x87.", ["memo entry 2147483647", "after 2 entries"]),
        "memo_get_never_stored": (b"\x80\x02j" + struct.pack("<I", 2**31 - 1) + b".",
                                  ["memo entry 2147483647", "never stored"]),
        "memo_memoize_then_binget": (b"\x80\x04]\x94h\x05.", ["memo entry 5", "never stored"]),
        "frame_claims_1tib": (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.",
                              ["frame of 1099511627776 bytes"]),
    }


def dump(obj, protocol: int = 4) -> bytes:
    """``paddle.save`` writes protocol 4; the official CIFAR batches are protocol 2."""
    return pickle.dumps(obj, protocol=protocol)


def paddle_files(root: Path, marker: Path) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (file bytes, words the error line must hold)."""
    sd = {"w": np.zeros(2, np.float32)}
    run = Reduce(os.system, (f"touch {marker}",))
    big = "A" * 1_000_000
    return {
        "os_system": (dump({"state_dict": run}), ["posix.system", "could run code"]),
        "builtins_eval": (b"c__builtin__\neval\n(Vopen('%s','w')\ntR." % str(marker).encode(),
                          ["__builtin__.eval"]),
        "getattr_chain": (b"\x80\x02cbuiltins\ngetattr\n.", ["builtins.getattr"]),
        "object_dtype": (dump({"state_dict": forged_array((1,), (3, "|", None, None, None, -1,
                                                                 -1, 63), b"\0" * 8, "O8")}),
                         ["not a plain numeric dtype"]),
        "forged_dtype_flags": (dump({"state_dict": forged_array(
            (2,), (3, "<", None, None, None, -1, -1, 63), struct.pack("<QQ", 0xdead, 0xbeef))}),
            ["forged dtype state"]),
        "forged_dtype_fields": (dump({"state_dict": forged_array(
            (1,), (3, "<", None, ("a",), {"a": 0}, 8, 1, 0), b"\0" * 8)}),
            ["forged dtype state"]),
        "forged_itemsize": (dump({"state_dict": forged_array(
            (1,), (3, "<", None, None, None, 1 << 40, -1, 0), b"\0" * 8)}), ["forged dtype"]),
        "array_claims_2gib": (dump({"state_dict": forged_array((2**28,), PLAIN_F8, b"\0" * 8)}),
                              ["needs 2147483648 bytes", "holds 8"]),
        "array_shape_negative": (dump({"w": forged_array((-1,), PLAIN_F8, b"")}),
                                 ["forged array state"]),
        "array_object_list_data": (dump({"w": forged_array((1,), PLAIN_F8, [1.0])}),
                                   ["forged array state"]),
        "ndarray_called": (dump({"w": Reduce(np.ndarray, ((2**40,), "f4"))}),
                           ["numpy.ndarray directly"]),
        "bytes8_claims_2gib": (claimed_bytes8(2**31), ["truncated"]),
        **memo_and_frame_claims(),
        "unicode8_claims_2gib": (b"\x80\x04\x8d" + struct.pack("<Q", 2**31) + b"abc.",
                                 ["truncated"]),
        "tuple_of_megabyte_string": (dump(Reduce(tuple, ("x" * 100_000,))),
                                     ["tuple of str"]),
        "build_on_global": (b"\x80\x04cnumpy\ndtype\nN}X\x0c\x00\x00\x00__setstate__Ns\x86b.",
                            ["sets state on a global"]),
        "persistent_id": (b"\x80\x02X\x01\x00\x00\x00aQ.", ["external objects"]),
        "deep_nesting": (deep_list_pickle(100_000), ["nests containers more than 64"]),
        "self_containing": (self_containing_pickle(), ["contains itself"]),
        "shared_sublists_in_weights": (dump({"state_dict": {"w": nested_dag(40)}}),
                                       ["not a tensor"]),
        "shared_sublists_in_config": (dump({"state_dict": sd, "config": {"Global": {
            "dir": nested_dag(40)}}}), ["Global.dir must be a string"]),
        "long_value_in_config": (dump({"state_dict": sd, "config": {"Arch": {"model": big}}}),
                                 ["Arch.model must be one of"]),
        "integer_keys": (dump({0: np.zeros(2, np.float32), "StructuredToParameterName@@": {}}),
                         ["key 0 is not a parameter name"]),
        "non_tensor_value": (dump({"features.0.weight": "a string"}), ["holds a str"]),
        "truncated": (dump({"state_dict": sd})[:30], ["truncated"]),
        "empty": (b"", ["truncated"]),
        "text": (b"Global:\n  epochs: 3\n", ["cannot be read"]),
        "not_a_dict": (dump([1, 2, 3]), ["no state dict"]),
    }


def torch_files(root: Path, marker: Path) -> dict[str, tuple[bytes, list[str]]]:
    import torch

    def save(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    stride0 = save({"features.0.weight": torch.zeros(1).expand(2**31)})
    inflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(stride0)) as src, \
            zipfile.ZipFile(inflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, b"\0" * (64 << 20) if info.filename.endswith("/0")
                         else data)
    return {
        "legacy_claims_8gb": (legacy_numel(2_000_000_000), ["cannot be read as a PyTorch"]),
        "os_system": (save({"state_dict": Reduce(os.system, (f"touch {marker}",))}),
                      ["cannot be read as a PyTorch checkpoint"]),
        "stride0_2g_elements": (stride0, ["claims more elements than its storage"]),
        "zip_inflates": (inflated.getvalue(), ["claim", "more than the file holds"]),
        "shared_sublists_in_config": (save({"state_dict": {}, "config": {"Global": {
            "dir": nested_dag(40)}}}), ["Global.dir must be a string"]),
        "deep_nesting": (save({"x": _deep(200)}), ["nests containers more than 64"]),
        "integer_keys": (save({0: torch.zeros(2)}), ["key 0 is not a parameter name"]),
        "non_tensor_value": (save({"features.0.weight": [1, 2]}), ["holds a list"]),
        "truncated": (save({"w": torch.zeros(4)})[:200], ["cannot be read"]),
    }


def legacy_numel(numel: int) -> bytes:
    """A pre-1.6 (non-zip) ``torch.save`` file whose one storage claims ``numel`` float32
    elements and holds 7: torch sizes the storage from the claim before reading it."""
    import torch

    buf = io.BytesIO()
    torch.save({"features.0.weight": torch.zeros(7)}, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    claim = b"X\x03\x00\x00\x00cpuq\x06K\x07"  # the location, then BININT1 7: the numel
    assert raw.count(claim) == 1
    return raw.replace(claim, claim[:-2] + b"J" + struct.pack("<i", numel))


def _deep(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(f"cifar-10-batches-py/{member[0]}")
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def cifar_archives(marker: Path) -> dict[str, tuple[bytes, list[str]]]:
    """Synthetic archives in the official layout, each broken in one way."""
    def archive(**changes) -> list:
        batches = make_batches()
        for name, change in changes.items():
            batches[name] = change(batches[name])
        return [(name, dump(content, 2)) for name, content in batches.items()]

    def set_key(key, value):
        return lambda batch: {**batch, key: value(batch) if callable(value) else value}

    link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    hard.type, hard.linkname = tarfile.LNKTYPE, "cifar-10-batches-py/data_batch_1"
    huge = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    huge.size = 2**33
    clean = archive()
    return {
        "runs_code": (tar_bytes([(n, dump(Reduce(os.system, (f"touch {marker}",)), 2))
                                 if n == "data_batch_2" else (n, b) for n, b in clean]),
                      ["data_batch_2", "posix.system"]),
        "forged_dtype": (tar_bytes([(n, dump({b"data": forged_array(
            (1, 3072), (3, "|", None, None, None, -1, -1, 63), b"\0" * 3072, "u1"),
            b"labels": [0]}, 2)) if n == "test_batch" else (n, b) for n, b in clean]),
            ["test_batch", "forged dtype state"]),
        "float_images": (tar_bytes(archive(test_batch=set_key(
            b"data", lambda b: b[b"data"].astype(np.float32)))), ["float32 images", "uint8"]),
        "int16_images": (tar_bytes(archive(test_batch=set_key(
            b"data", lambda b: b[b"data"].astype(np.int16) + 256))), ["int16 images"]),
        "float_labels": (tar_bytes(archive(data_batch_1=set_key(
            b"labels", lambda b: [float(v) for v in b[b"labels"]]))), ["labels of type"]),
        "label_10": (tar_bytes(archive(data_batch_1=set_key(
            b"labels", lambda b: [10] + b[b"labels"][1:]))), ["label 10", "0..9"]),
        "label_negative": (tar_bytes(archive(test_batch=set_key(
            b"labels", lambda b: [-1] + b[b"labels"][1:]))), ["label -1"]),
        "label_2_70": (tar_bytes(archive(test_batch=set_key(
            b"labels", lambda b: [2**70] + b[b"labels"][1:]))), ["label 1180591620717411303424"]),
        "label_strings": (tar_bytes(archive(test_batch=set_key(
            b"labels", lambda b: ["cat"] * len(b[b"labels"])))), ["labels of type"]),
        "data_none": (tar_bytes(archive(test_batch=set_key(b"data", None))),
                      ["NoneType images"]),
        "empty_test_set": (tar_bytes(archive(test_batch=lambda b: {
            **b, b"data": b[b"data"][:0], b"labels": []})), ["no test images"]),
        "duplicate_test_batch": (tar_bytes(clean + [("test_batch", clean[-1][1])]),
                                 ["test_batch twice"]),
        "symlink_member": (tar_bytes(clean[:-1] + [link]), ["link or special file"]),
        "hardlink_member": (tar_bytes(clean[:-1] + [hard]), ["link or special file"]),
        "member_claims_8gib": (tar_bytes([huge]), ["claims 8589934592 bytes"]),
        "too_many_members": (tar_bytes([(f"junk{i}", b"") for i in range(1001)]),
                             ["more than 1000 members"]),
        "gzip_garbage_tail": (gzip.compress(b"\0" * 1024), ["lacks data_batch_1"]),
        "memo_bomb_batch": (tar_bytes([(n, memo_bomb()) if n == "test_batch" else (n, b)
                                       for n, b in clean]), ["test_batch", "memo entry"]),
    }


def run_worker(cases: list[dict], tmp: Path) -> dict[str, dict]:
    path, out = tmp / "cases.json", tmp / "results.jsonl"
    path.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(WORKER), str(path), str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
                          text=True, timeout=900)
    results = {}
    if out.exists():
        results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:], list(results)[-1:])
    return results


def assert_one_line(result: dict, needles: list[str]) -> None:
    assert result["escaped"] is None, result["escaped"]
    assert result["rc"] == 2, result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"][-2000:]
    assert len(lines[0]) < LINE_LIMIT, lines[0][:300]
    assert "Traceback" not in lines[0] and "MemoryError" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result["seconds"] < 10, result


def assert_all_refused(results: dict[str, dict], expect: dict[str, list[str]]) -> None:
    """``assert_one_line`` for every case, reporting all that fail at once."""
    failures = []
    for case, needles in expect.items():
        try:
            assert_one_line(results[case], needles)
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, archive):
    """Every crafted file, the cases that feed them to the CLI, and the worker's results."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "pwned"
    cases, expect = [], {}
    for twin, files in (("paddle", paddle_files), ("torch", torch_files)):
        for name, (raw, needles) in files(root, marker).items():
            path = root / f"{name}{'.pdparams' if twin == 'paddle' else '.pt'}"
            path.write_bytes(raw)
            cases.append({"id": f"{twin}-{name}", "main": "eval",
                          "argv": ["--model_path", str(path), "--data_path", str(archive)]})
            expect[f"{twin}-{name}"] = needles
    train = ["--config", "configs/lite.yaml", "-o", "Data.train_subset=null", "-o",
             "Data.test_subset=null", "-o", "Data.batch_size=32", "--epochs", "1",
             "--swa_start", "1"]
    for name, (raw, needles) in cifar_archives(marker).items():
        path = root / name / "cifar-10-python.tar.gz"
        path.parent.mkdir()
        path.write_bytes(raw)
        cases.append({"id": f"cifar-{name}", "main": "train",
                      "argv": [*train, "--data_path", str(path), "--dir",
                               str(root / "runs" / name)]})
        expect[f"cifar-{name}"] = needles
    folder = write_folder(root / "folder", {**make_batches(), "test_batch": Reduce(
        os.system, (f"touch {marker}",))})
    cases.append({"id": "cifar-folder_runs_code", "main": "train",
                  "argv": [*train, "--data_path", str(folder), "--dir",
                           str(root / "runs" / "folder")]})
    expect["cifar-folder_runs_code"] = ["test_batch", "posix.system"]
    for name, (argv, needles) in config_cases(root).items():
        cases.append({"id": f"config-{name}", "main": "train",
                      "argv": [*train, "--data_path", str(archive), *argv, "--dir",
                               str(root / "runs" / name)]})
        expect[f"config-{name}"] = needles
    before = digest(root)
    results = run_worker(cases, root)
    return results, expect, marker, root, before


def test_every_hostile_file_is_one_line_and_runs_nothing(hostile):
    results, expect, marker, root, before = hostile
    assert set(results) == set(expect), set(expect) - set(results)
    assert_all_refused(results, expect)
    assert not marker.exists()
    # nothing written: no run directory was created, no input changed
    after = digest(root)
    assert {k: v for k, v in after.items() if not k.startswith("cases.json")
            and not k.startswith("results.jsonl")} == before
    assert not (root / "runs").exists()


DIGITS_5000 = "9" * 5000  # over Python's 4300-digit int/str limit: its own traceback


def huge_number_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Numerals Python itself cannot convert, or that no setting needs, wherever a number is
    read on the command line or in a config file: each one line naming the key."""
    yaml_int = root / "huge_int.yaml"
    yaml_int.write_text(f"Global:\n  epochs: {DIGITS_5000}\n")
    yaml_float = root / "huge_float.yaml"
    yaml_float.write_text(f"Optimizer:\n  lr_init: 0.{'1' * 100_000}\n")
    too_long = "longer than any number here needs"
    return {
        "o_epochs_5000_digits": (["-o", f"Global.epochs={DIGITS_5000}"],
                                 ["Global.epochs:", "5000 characters", too_long]),
        "flag_epochs_5000_digits": (["--epochs", DIGITS_5000], ["Global.epochs:", too_long]),
        "flag_lr_5000_digits": (["--lr_init", DIGITS_5000], ["Optimizer.lr_init:", too_long]),
        "flag_seed_hex_5000": (["--seed", "0x" + DIGITS_5000], ["Global.seed:", too_long]),
        "workers_5000_digits": (["-o", f"Data.num_workers={DIGITS_5000}"],
                                ["Data.num_workers must be 'auto' or an integer in [0, 256]"]),
        "workers_ten_digits": (["-o", "Data.num_workers=9999999999"],
                               ["Data.num_workers must be 'auto' or an integer in [0, 256]"]),
        "yaml_int_5000_digits": (["--config", str(yaml_int)],
                                 ["huge_int.yaml: the integer at line 2", too_long]),
        "yaml_float_100k_digits": (["--config", str(yaml_float)],
                                   ["huge_float.yaml: the number at line 2", too_long]),
    }


def config_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (train.py arguments, words of the error line)."""
    bomb = root / "bomb.yaml"
    levels = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    levels += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]"
               for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb.write_text("Global:\n  dir:\n" + "".join(f"    - {lv[3:]}\n" for lv in levels))
    latin = root / "latin.yaml"
    latin.write_bytes(b"Global:\n  dir: caf\xe9\n")
    fifo = root / "data.fifo"
    os.mkfifo(fifo)
    return {
        "alias_bomb": (["--config", str(bomb)], ["Global.dir must be a string"]),
        "not_utf8": (["--config", str(latin)], ["not UTF-8"]),
        "config_is_directory": (["--config", str(root)], ["not a regular file"]),
        "config_is_device": (["--config", "/dev/zero"], ["not a regular file"]),
        "seed_negative": (["--seed", "-1"], ["Global.seed must be in [0, 4294967296)"]),
        "seed_29_digits": (["--seed", "1" * 29], ["Global.seed must be"]),
        "width_inf": (["-o", "Arch.width=.inf"], ["Arch.width must be a finite number"]),
        "width_nan": (["-o", "Arch.width=.nan"], ["Arch.width must be a finite number"]),
        "lr_overflow": (["--lr_init", "1e400"], ["Optimizer.lr_init must be a finite"]),
        "epochs_2_70": (["--epochs", str(2**70)], ["Global.epochs must be an integer in"]),
        **huge_number_cases(root),
        "huge_value": (["-o", "Arch.model=" + "V" * 1_000_000], ["Arch.model must be one of"]),
        "unknown_key": (["-o", "Global.dropout=1"], ["unknown config key 'Global.dropout'"]),
        "data_path_fifo": (["--data_path", str(fifo)], ["data.fifo' is not a regular file"]),
        "data_path_device": (["--data_path", "/dev/zero"], ["'/dev/zero' is not a regular file"]),
    }


def fake_run(folder: Path, *names: str) -> Path:
    """A directory holding another run's outputs (contents do not matter: they must survive)."""
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(os.urandom(64))
    return folder


@pytest.fixture(scope="module")
def rundir_results(tmp_path_factory, archive):
    """Run-directory, resume and convert refusals, in order, in one worker (no case trains:
    training under the worker's address-space cap stalls Paddle's thread pools)."""
    import fcntl

    import torch

    from conftest import tiny_config
    from swa_apps.convert import convert_file
    from swa_torch.models import build_model as torch_model

    root = tmp_path_factory.mktemp("rundirs")
    outputs = ("checkpoint-0.pdparams", "checkpoint-7.pdparams", "metrics.csv", "train.log",
               "train_log.txt", "config.yaml", "curves.png")
    used = fake_run(root / "used", *outputs)
    refused = fake_run(root / "refused", "train.log", "config.yaml")
    locked = fake_run(root / "locked")
    weights = {"features.0.weight": np.zeros((4, 3, 3, 3), np.float32)}
    (root / "converted.pdparams").write_bytes(dump({"epoch": 1, "state_dict": weights,
                                                    "optimizer": None, "config": None}))
    (root / "plain.pdparams").write_bytes(dump(weights))
    tiny = ["-o", "Arch.width=0.0625"]
    model = torch_model(tiny_config(str(archive), Arch={"width": 0.0625}))
    torch.save(model.state_dict(), root / "tiny.pt")
    convert_file(str(root / "tiny.pt"), str(root / "tiny.pdparams"),
                 tiny_config(str(archive), Arch={"width": 0.0625}))
    (root / "epoch_text.pdparams").write_bytes(dump({"epoch": "1", "state_dict": weights,
                                                     "optimizer": {}}))
    (root / "int_keys.pdparams").write_bytes(dump({0: np.zeros(2, np.float32)}))
    for name, counters in COUNTER_CASES.items():
        (root / f"{name}.pdparams").write_bytes(dump({"epoch": 1, "state_dict": weights,
                                                      "optimizer": {}, **counters}))
    (root / "a_dir.pt").mkdir()
    train = ["--config", "configs/lite.yaml", "-o", "Data.train_subset=null", "-o",
             "Data.test_subset=null", "-o", "Data.batch_size=32", "--epochs", "1",
             "--swa_start", "1", "--data_path", str(archive)]
    cases = [
        ("used", "train", [*train, "--dir", str(used)]),
        ("refused_start", "train", [*train, "--dir", str(refused), "--resume", "auto",
                                    "--data_path", str(root / "missing.tar.gz")]),
        ("locked", "train", [*train, "--dir", str(locked)]),
        ("resume_converted", "train", [*train, "--dir", str(root / "r1"), "--resume",
                                       str(root / "converted.pdparams")]),
        ("resume_plain", "train", [*train, "--dir", str(root / "r2"), "--resume",
                                   str(root / "plain.pdparams")]),
        ("resume_epoch_text", "train", [*train, "--dir", str(root / "r3"), "--resume",
                                        str(root / "epoch_text.pdparams")]),
        *[(name, "train", [*train, "--dir", str(root / name), "--resume",
                            str(root / f"{name}.pdparams")]) for name in COUNTER_CASES],
        ("convert_missing_dir", "convert", [str(root / "plain.pdparams"),
                                            str(root / "nowhere" / "c.pt")]),
        ("convert_onto_dir", "convert", [str(root / "plain.pdparams"),
                                         str(root / "a_dir.pt")]),
        ("convert_int_keys", "convert", [str(root / "int_keys.pdparams"), str(root / "k.pt")]),
        # folders no process may write (root included): torch raised a RuntimeError there
        ("convert_into_proc", "convert", [str(root / "tiny.pdparams"), "/proc/c.pt", *tiny]),
        ("convert_into_sys", "convert", [str(root / "tiny.pdparams"), "/sys/c.pt", *tiny]),
        ("convert_torch_into_sys", "convert", [str(root / "tiny.pt"), "/sys/c.pdparams",
                                               *tiny]),
    ]
    with open(locked / ".run.lock", "w") as holder:
        holder.write("4242\n")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX)
        before = {"used": digest(used), "refused": digest(refused)}
        results = run_worker([{"id": i, "main": m, "argv": a} for i, m, a in cases], root)
    return results, root, before


# A training checkpoint's counters, each forged in one way (pickled, so beyond YAML's reach).
COUNTER_CASES = {
    "epoch_5000_digits": {"epoch": 10**5000},
    "swa_n_2_70": {"swa_n": 2**70},
    "iteration_text": {"progress": {"iteration": "3"}},
    "totals_nan": {"progress": {"totals": [float("nan"), 0.0, 1.0]}},
    "totals_scalar": {"progress": {"totals": 7}},
    "first_lr_inf": {"progress": {"first_lr": float("inf")}},
}
COUNTER_REFUSALS = {
    "epoch_5000_digits": ["its epoch must be an integer in [0, 2**63 - 1]",
                          "an integer of 16610 bits"],
    "swa_n_2_70": ["its swa_n must be an integer in [0, 2**63 - 1]"],
    "iteration_text": ["its progress iteration must be an integer, got '3'"],
    "totals_nan": ["a progress total must be a finite number, got nan"],
    "totals_scalar": ["its progress totals are 7, not 3 numbers"],
    "first_lr_inf": ["its progress first_lr must be a finite number, got inf"],
}

RUNDIR_REFUSALS = {
    **COUNTER_REFUSALS,
    "used": ["holds another run's outputs", "--resume auto", "--dir", "--overwrite"],
    "refused_start": ["not found"],
    "locked": ["another run (pid 4242)"],
    "resume_converted": ["no optimizer state"],
    "resume_plain": ["not a training checkpoint"],
    "resume_epoch_text": ["its epoch must be an integer, got '1'"],
    "convert_missing_dir": ["does not exist"],
    "convert_onto_dir": ["is a directory"],
    "convert_int_keys": ["key 0 is not a parameter name"],
    "convert_into_proc": ["could not write /proc/c.pt", "fix permissions"],
    "convert_into_sys": ["could not write /sys/c.pt", "fix permissions"],
    "convert_torch_into_sys": ["could not write /sys/c.pdparams", "fix permissions"],
}


def test_run_directory_refusals_lose_nothing(rundir_results):
    results, root, before = rundir_results
    assert_all_refused(results, RUNDIR_REFUSALS)
    # every file of the used directory, train.log included, is as it was
    assert digest(root / "used") == before["used"]
    assert digest(root / "refused") == before["refused"]
    assert not any((root / d).exists() for d in ("r1", "r2", "r3", "nowhere"))
    assert not (root / "k.pt").exists()


def test_stale_lock_is_taken_over_and_overwrite_replaces(archive, tmp_path):
    """A lock file left by a dead run does not block; --overwrite replaces old outputs."""
    outputs = ("checkpoint-0.pdparams", "checkpoint-7.pdparams", "metrics.csv", "train.log")
    stale, over = fake_run(tmp_path / "stale"), fake_run(tmp_path / "over", *outputs)
    (stale / ".run.lock").write_text("999999999\n")
    train = [sys.executable, "train.py", "--config", "configs/lite.yaml", "-o",
             "Data.train_subset=null", "-o", "Data.test_subset=null", "-o",
             "Data.batch_size=32", "--epochs", "1", "--swa_start", "1", "--data_path",
             str(archive)]
    for extra in (["--dir", str(stale)], ["--dir", str(over), "--overwrite"]):
        proc = subprocess.run([*train, *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (stale / "checkpoint-1.pdparams").is_file()
    assert not (stale / ".run.lock").exists()
    assert not (over / "checkpoint-7.pdparams").exists()
    assert (over / "checkpoint-1.pdparams").is_file()
    assert (over / "train.log").read_text().count("training for 1 epochs") == 1


def cli_in_process(main: str, *argv: str) -> int:
    from swa_apps import cli

    parser, entry = {"eval": (cli.eval_parser, cli.eval_main),
                     "convert": (cli.convert_parser, cli.convert_main)}[main]
    args = parser().parse_args(list(argv))
    return cli.run(lambda: entry(args), False)


def test_plain_paddle_state_dicts_evaluate_and_convert(archive, tmp_path, capsys):
    """``paddle.save(model.state_dict())`` and tools/convert.py's output for a plain torch
    state dict load as ``paddle.load`` would, and evaluate."""
    import paddle
    import torch

    from conftest import tiny_config
    from swa_paddle.models import build_model as paddle_model
    from swa_torch.models import build_model as torch_model

    cfg = tiny_config(archive)
    plain = tmp_path / "plain.pdparams"
    paddle.save(paddle_model(cfg).state_dict(), str(plain))
    torch_plain, converted = tmp_path / "plain.pt", tmp_path / "converted.pdparams"
    torch.save(torch_model(cfg).state_dict(), torch_plain)
    assert cli_in_process("convert", str(torch_plain), str(converted), "-o",
                          "Arch.width=0.0625") == 0
    for path in (plain, converted):
        assert cli_in_process("eval", "--model_path", str(path), "--data_path", str(archive),
                              "-o", "Arch.width=0.0625") == 0
        assert f"weights of {path}: test loss" in capsys.readouterr().out


def test_eval_treats_swa_n_zero_as_no_swa_weights(archive, tmp_path, capsys):
    """The original repo saves an un-averaged swa_state_dict with swa_n = 0 before swa_start."""
    import paddle

    from conftest import tiny_config
    from swa_paddle.models import build_model

    cfg = tiny_config(archive)
    model, other = build_model(cfg), build_model(cfg)
    path = tmp_path / "checkpoint-0.pdparams"
    paddle.save({"epoch": 0, "state_dict": model.state_dict(),
                 "swa_state_dict": other.state_dict(), "swa_n": 0, "optimizer": None,
                 "config": cfg}, str(path))
    common = ["--model_path", str(path), "--data_path", str(archive)]
    assert cli_in_process("eval", *common) == 0
    assert "SGD weights of" in capsys.readouterr().out
    assert cli_in_process("eval", *common, "--which", "swa") == 2
    assert "holds no SWA weights" in capsys.readouterr().err


def test_disk_full_in_logs_table_csv_and_plot_is_one_user_error(tmp_path, monkeypatch):
    """A full disk under each write names its file and leaves no temporary file:
    metrics.csv, train_log.txt and curves.png are written through ``atomic_save`` (a new
    temporary file, never a planted link), whose write here fails as on a full disk; the
    appended train.log is opened on /dev/full (a link planted at its path is refused by
    ``open_append`` itself, tested in test_hardening2)."""
    from swa_recipe import logs
    from swa_recipe.logs import RunLog, get_logger
    from swa_recipe.rundir import RunDirError

    real_save, real_open_append = logs.atomic_save, logs.open_append
    row = {"ep": 1, "lr": 0.1, "tr_loss": 1.0, "tr_acc": 10.0, "te_loss": 1.0, "te_acc": 10.0}
    for name in ("metrics.csv", "train_log.txt", "curves.png"):
        def full_disk(write, path, name=name):
            def failing(tmp):
                write(tmp)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(failing if os.path.basename(path) == name else write, path)

        monkeypatch.setattr(logs, "atomic_save", full_disk)
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(RunDirError, match=f"could not write .*{name} .*No space left"):
            log = RunLog(str(folder), swa=False)
            log.add(row)
            log.plot()
        assert not [f for f in os.listdir(folder) if ".tmp" in f]
    folder = tmp_path / "train.log"
    folder.mkdir()

    def onto_full_disk(path, encoding=None, errors=None):
        if os.path.basename(path) == "train.log":
            return open("/dev/full", "a", encoding=encoding, errors=errors)
        return real_open_append(path, encoding, errors)

    monkeypatch.setattr(logs, "open_append", onto_full_disk)
    with pytest.raises(RunDirError, match="could not write .*No space left"):
        get_logger(str(folder)).info("a line")
    get_logger()  # leave no handler on /dev/full


@pytest.mark.parametrize("dtype", ["b1", "u1", "i2", ">i4", "<u8", "f2", ">f4", "f8", "c8",
                                   "c16"])
def test_restricted_unpickler_reads_every_numeric_array(dtype):
    from swa_recipe.data import safe_pickle

    arrays = [np.arange(24).astype(dtype).reshape(2, 3, 4),
              np.asfortranarray(np.arange(6).astype(dtype).reshape(2, 3)),
              np.zeros((0, 5), dtype), np.array(7, dtype)]
    for protocol in (2, 4):
        raw = pickle.dumps({"a": arrays, "s": arrays[0].flat[1]}, protocol=protocol)
        got, want = safe_pickle.loads(raw, safe_pickle.CHECKPOINT_GLOBALS), pickle.loads(raw)
        for mine, theirs in zip(got["a"], want["a"], strict=True):
            assert type(mine) is np.ndarray and mine.dtype == theirs.dtype
            assert np.array_equal(mine, theirs) and mine.shape == theirs.shape
            assert mine.flags.f_contiguous == theirs.flags.f_contiguous
        assert got["s"] == want["s"] and got["s"].dtype == want["s"].dtype


def test_layout_checks_take_counts_and_classes_as_parameters():
    """CIFAR-100's layout (one train file, fine labels, 100 classes) uses the same checks."""
    from swa_recipe.data.datacheck import DataError, Layout, check_batch, check_split_size

    c100 = Layout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",),
                  ("test",), b"fine_labels", num_classes=100, train_size=50000,
                  test_size=10000)
    data = np.zeros((3, 3072), np.uint8)
    images, labels = check_batch({b"data": data, b"fine_labels": [0, 50, 99]}, "train", "x",
                                 c100)
    assert labels.tolist() == [0, 50, 99] and labels.dtype == np.int64
    with pytest.raises(DataError, match="label 100, outside 0..99 of CIFAR-100"):
        check_batch({b"data": data, b"fine_labels": [0, 50, 100]}, "train", "x", c100)
    with pytest.raises(DataError, match="10001 test images, more than the 10000"):
        check_split_size(10001, "test", "x", c100)


def test_legacy_torch_format_still_loads(tmp_path):
    """Files from torch < 1.6 (not zip) load: the original repository's era wrote them."""
    import torch

    from swa_torch.checkpoint import load

    path = tmp_path / "old.pt"
    torch.save({"state_dict": {"fc.bias": torch.arange(3.0)}, "epoch": 3}, path,
               _use_new_zipfile_serialization=False)
    state = load(str(path))
    assert state["epoch"] == 3 and state["state_dict"]["fc.bias"].tolist() == [0.0, 1.0, 2.0]

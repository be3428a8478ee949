"""The tracked tree stays small (issue 24): a clone should not carry generated data. It was 56 MB,
53 MB of it diff/align.py's ``.npy`` dumps, which are now regenerated rather than committed
(diff/README.md); what is tracked is code, documents, configs, the study's tables and plots and
the alignment's logs, about 4 MB."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

MAX_TREE_BYTES = 6_000_000
MAX_FILE_BYTES = 1_000_000
# path -> why it must be tracked although it is over MAX_FILE_BYTES; none is.
LARGE_FILES_ALLOWED: dict[str, str] = {}


def tracked_sizes() -> dict[str, int]:
    """Size in bytes of each file ``git ls-files`` lists, as in the work tree (what
    ``git ls-files -z | xargs -0 du -cb`` adds up); a tracked file deleted from the work tree
    counts 0."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to measure")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
    return {name: file_size(ROOT / name) for name in listing.split("\0") if name}


def file_size(path: Path) -> int:
    return path.lstat().st_size if path.is_symlink() or path.exists() else 0


def largest(sizes: dict[str, int], n: int = 5) -> str:
    return ", ".join(f"{name} {size:,}" for name, size in
                     sorted(sizes.items(), key=lambda item: -item[1])[:n])


def test_tracked_tree_is_under_6_mb():
    sizes = tracked_sizes()
    total = sum(sizes.values())
    assert total < MAX_TREE_BYTES, f"tracked tree {total:,} bytes; largest: {largest(sizes)}"


def test_no_tracked_file_over_1_mb_unless_allowed():
    sizes = tracked_sizes()
    big = {name: size for name, size in sizes.items()
           if size > MAX_FILE_BYTES and name not in LARGE_FILES_ALLOWED}
    assert not big, f"tracked files over {MAX_FILE_BYTES:,} bytes: {largest(big)}"
    stale = [name for name in LARGE_FILES_ALLOWED if sizes.get(name, 0) <= MAX_FILE_BYTES]
    assert not stale, f"allowed as large but small or untracked now: {stale}"


def test_alignment_dumps_are_ignored_not_tracked():
    """diff/align.py --out diff/ writes its dumps next to the committed logs: git must ignore them
    (only the guide's fake batch is tracked), so that a refresh cannot re-add 53 MB."""
    tracked = [name for name in tracked_sizes() if name.startswith("diff/")
               and name.endswith(".npy")]
    assert sorted(tracked) == ["diff/fake_data.npy", "diff/fake_label.npy"]
    dumps = ["diff/forward_paddle.npy", "diff/backward_wideresnet28x10_float64_torch.npy"]
    ignored = subprocess.run(["git", "check-ignore", *dumps], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == dumps

"""``edray.atomic``, the one way edray writes a file, and every writer that uses it on a full disk.

The unit tests write real files (a real tmpfs for a full disk) and check what is on disk
afterwards: the whole new file or the old one, never a temp file. The writers' tests run
each of edray's writers (``edray best``, ``edray report``, the sweep figures, the logit
store) against a tmpfs that is full, and check the one-line error, exit code 2 and that
nothing is left behind. ``edray teach`` and ``edray train --save-model`` on a full disk
are tests/test_faults.py's.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edray.atomic import DEFAULT_FIX, atomic_path, fsync_dir, write_bytes, write_text, write_torch
from edray.cli import main
from edray.errors import USER_ERROR, EdrayError

from .conftest import one_error_line, remount

NO_SPACE = "cannot write (No space left on device)"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _fill(root: Path) -> Path:
    """Fill the filesystem at ``root`` to the last byte; return the filler file."""
    filler = root / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.fixture
def full(tmpfs) -> Path:
    """A directory on a real tmpfs with no space left (its filler is ``filler``)."""
    root = tmpfs("full", 64)
    _fill(root)
    return root


# ---------------------------------------------------------------------- edray.atomic


def test_write_creates_parents_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "best.yaml"
    write_text(target, "one: 1\n")
    assert target.read_text() == "one: 1\n"
    write_bytes(target, b"two: 2\n")
    assert target.read_bytes() == b"two: 2\n"
    write_bytes(target, memoryview(bytearray(b"three")))
    assert target.read_bytes() == b"three"
    assert _files(tmp_path) == ["a/b/best.yaml"]


def test_write_torch_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    write_torch(tmp_path / "m.pt", model)
    back = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(back.weight, model.weight) and torch.equal(back.bias, model.bias)
    assert _files(tmp_path) == ["m.pt"]


def test_a_failing_writer_keeps_the_old_file_and_its_own_error(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):  # not an OSError: the caller's own error, unchanged
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new fi")
            1 / 0
    assert target.read_bytes() == b"old"
    assert _files(tmp_path) == ["fig.png"]


def test_the_temp_file_is_hidden_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "r.html") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.html.") and tmp.name.endswith(".tmp")
        assert not (tmp_path / "r.html").exists()  # nobody sees the file before it is whole
        tmp.write_text("<html>")
    assert (tmp_path / "r.html").read_text() == "<html>"


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text(tmp_path / "best.yaml", "x")
    # The temp file's bytes before the rename, then the directory holding the rename.
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    fsync_dir(tmp_path / "no-such-dir")  # best effort: nothing to sync is not an error


def test_a_full_disk_is_one_error_naming_the_path(full):
    target = full / "report.html"
    with pytest.raises(EdrayError) as info:
        write_text(target, "x" * 100_000)
    err = info.value
    assert (err.path, err.problem, err.fix, err.exit_code) == (str(target), NO_SPACE, DEFAULT_FIX, USER_ERROR)
    assert "\n" not in str(err)
    assert _files(full) == ["filler"]  # the partial temp file is gone
    assert pickle.loads(pickle.dumps(err)).path == str(target)  # crosses Ray processes intact


def test_a_full_disk_keeps_the_old_file(full):
    (full / "filler").unlink()
    target = full / "best.yaml"
    write_text(target, "old: 1\n")
    _fill(full)
    with pytest.raises(EdrayError, match="No space left on device"):
        write_text(target, "new: 2\n" * 10_000)
    assert target.read_text() == "old: 1\n"
    assert _files(full) == ["best.yaml", "filler"]


def test_field_and_fix_name_what_the_user_gave(full):
    target = full / "student.pt"
    with pytest.raises(EdrayError) as info:
        write_torch(target, torch.nn.Linear(64, 64), field="--save-model", fix="choose another path")
    assert str(info.value) == f"--save-model: cannot write {target} (No space left on device); fix: choose another path"
    assert _files(full) == ["filler"]


def test_a_read_only_directory_is_one_error(tmpfs):
    root = tmpfs("ro", 64)
    remount(root, "ro")
    with pytest.raises(EdrayError) as info:
        write_text(root / "sub" / "best.yaml", "x")
    assert info.value.path == str(root / "sub" / "best.yaml")
    assert info.value.problem == "cannot write (Read-only file system)"


# ---------------------------------------------------------------------- every writer on a full disk


@pytest.fixture(scope="module")
def sweep(small_sweep) -> Path:
    """A real small sweep's work directory (shared with test_report and test_ui)."""
    return small_sweep


@pytest.mark.parametrize("command", ["best", "report"])
def test_cli_writers_on_a_full_disk_exit_2(command, sweep, full, capsys):
    out = full / "sub" / f"{command}.out"
    assert main([command, "digits", "--workdir", str(sweep), "-o", str(out)]) == USER_ERROR
    one_error_line(capsys, f"error: {out}: {NO_SPACE}; fix: free space or choose another -o/--output")
    assert _files(full) == ["filler"]
    remount(full, "size=4m")  # space freed: the same command now writes the file
    assert main([command, "digits", "--workdir", str(sweep), "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and _files(full) == ["filler", f"sub/{command}.out"]


def test_figures_on_a_full_disk(full):
    from edray.spec import SearchParam
    from edray.tracking.figures import render_figures

    space = [SearchParam(path="ed.alpha", type="float", low=0.1, high=0.9)]
    results = [{"trial_id": f"t{i}", "status": "completed", "config": {"ed.alpha": 0.1 + 0.2 * i},
                "val_acc": 0.5 + i / 10} for i in range(4)]
    history = {f"t{i}": [{"epoch": e, "grade": 1, "val_acc": 0.1 * e} for e in range(1, 4)] for i in range(4)}
    out = full / "figures"
    with pytest.raises(EdrayError) as info:
        render_figures(results, history, space, out)
    assert info.value.path == str(out / "optimization_history.png") and info.value.problem == NO_SPACE
    assert _files(full) == ["filler"]


def test_store_writer_on_a_full_disk(full):
    from edray.logits import write_store

    from .helpers import store_key

    key = store_key()
    logits = np.zeros((64, 2, 10), dtype=np.float32)
    with pytest.raises(EdrayError) as info:
        write_store(full / "logits", key, rows=64, views=2, outputs=10, sample_ids=np.arange(64),
                    compute_shard=lambda a, b: logits[a:b])
    assert info.value.problem == NO_SPACE and info.value.path.startswith(str(full / "logits"))
    # At most the empty staging dir and the lock: nothing that looks like a store or a shard.
    assert [f for f in _files(full) if not f.endswith(".lock")] == ["filler"]

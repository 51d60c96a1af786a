"""The commands and flags of the README run through the real CLI, each checked for its effect:
``teach`` (``--json``, ``--force``), ``precompute --views``, ``train --set method=...``,
``--device``, ``--threads``, ``--quiet``, ``--debug``, ``$EDRAY_WORKDIR`` and ``./edray-out``,
and a failure at run time (exit 1, one line). Tiny teachers, three epochs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edray import cli

from .conftest import DIGITS_YAML, FAST
from .helpers import edray, edray_args, edray_env, json_summary, one_line_error, sets, with_tty_stderr

TEACHER = "{arch: cnn_small, train: {epochs: 1, lr: 0.05, batch_size: 64}}"
TINY = [*FAST, f"teachers.models=[{TEACHER}, {TEACHER}]", "optim.epochs=3", "ed.switch_epochs=[1, 2]",
        "teachers.views=2"]


def _teach(workdir: Path, *flags: str, env=None, cwd=None):
    where = ["--workdir", str(workdir)] if workdir else []
    return edray("teach", str(DIGITS_YAML), *where, *flags, *sets(TINY), env=env, cwd=cwd)


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> Path:
    """A work directory whose two tiny teachers ``edray teach --json`` trained."""
    workdir = tmp_path_factory.mktemp("taught")
    out = json_summary(_teach(workdir, "--json"))
    assert [t["arch"] for t in out["teachers"]] == ["cnn_small", "cnn_small"]
    for t in out["teachers"]:
        path = Path(t["path"])
        assert path.parent == workdir / "teachers" and path.is_file()
        assert t["classes"] == 10 and 0.0 <= t["val_acc"] <= 1.0
    return workdir


def test_teach_keeps_trained_teachers_and_force_retrains_them(taught, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(taught / "teachers", workdir / "teachers")
    files = sorted((workdir / "teachers").glob("*.pt"))
    before = {p: p.stat() for p in files}
    again = json_summary(_teach(workdir, "--json"))
    assert sorted(Path(t["path"]) for t in again["teachers"]) == files
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == (s.st_ino, s.st_mtime_ns) for p, s in before.items())
    forced = json_summary(_teach(workdir, "--json", "--force"))
    assert sorted(Path(t["path"]) for t in forced["teachers"]) == files
    # Retrained: each file written anew (a new file renamed into place).
    assert all(p.stat().st_ino != s.st_ino for p, s in before.items())
    assert sorted((workdir / "teachers").iterdir()) == files  # no temp file left


def test_precompute_views_builds_stores_of_that_many_views(taught, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(taught / "teachers", workdir / "teachers")
    proc = edray("precompute", str(DIGITS_YAML), "--workdir", str(workdir), "--views", "3", "--verify", "--json",
                 *sets(TINY))
    stores = json_summary(proc)["stores"]
    assert {(s["teacher"], s["split"]) for s in stores} == {(0, "train"), (0, "val"), (1, "train"), (1, "val")}
    for s in stores:
        assert s["views"] == (3 if s["split"] == "train" else 1)
        manifest = json.loads((Path(s["path"]) / "manifest.json").read_text())
        assert manifest["key"]["views"] == s["views"]
        assert Path(s["path"]).parent == workdir / "logits"
    assert proc.stdout.count(", verified ->") == 4


@pytest.mark.parametrize("method", ["kd", "mtkd", "ce"])
def test_train_runs_the_method_the_set_flag_names(method, taught, tmp_path, capsys):
    workdir = tmp_path / "work"
    shutil.copytree(taught / "teachers", workdir / "teachers")
    threads = torch.get_num_threads()
    wanted = threads + 1 if method == "ce" else None
    try:
        code = cli.main(["train", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--device", "cpu",
                         *(["--threads", str(wanted)] if wanted else []), *sets([*TINY, f"method={method}"])])
        assert torch.get_num_threads() == (wanted or threads)  # --threads N: torch's threads for the run
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["method"] == method and result["epochs"] == 3
    # A baseline is one grade, the full student from epoch 0: no switches.
    assert result["switch_epochs"] == [] and list(result["val_acc_seen_per_grade"]) == ["1"]
    # kd reads teacher 0's store, mtkd both teachers' stores, ce none.
    logits = workdir / "logits"
    built = {p.name for p in logits.iterdir() if not p.name.startswith(".")} if logits.exists() else set()
    assert len(built) == {"kd": 2, "mtkd": 4, "ce": 0}[method]  # train and val store per teacher


def test_quiet_prints_nothing_but_the_result(taught):
    args = edray_args("train", str(DIGITS_YAML), "--workdir", str(taught), *sets([*TINY, "method=ce"]))
    code, out, err = with_tty_stderr(args)
    assert code == 0 and "epoch   1/3" in err and "training ce on digits" in err  # progress on a terminal
    code, out, err = with_tty_stderr([*args, "--quiet"])
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 1 and out.startswith("ce: val_acc ")


def test_workdir_comes_from_the_environment_else_edray_out(taught, tmp_path):
    cwd, chosen = tmp_path / "cwd", tmp_path / "chosen"
    cwd.mkdir()
    out = json_summary(_teach(None, "--json", env=edray_env(EDRAY_WORKDIR=str(chosen)), cwd=cwd))
    assert {Path(t["path"]).parent for t in out["teachers"]} == {chosen / "teachers"}
    assert list(cwd.iterdir()) == []  # nothing in the current directory
    out = json_summary(_teach(None, "--json", cwd=cwd))
    assert {Path(t["path"]).parent for t in out["teachers"]} == {cwd / "edray-out" / "teachers"}


def test_a_failure_at_run_time_is_one_line_and_exit_1_and_debug_shows_the_traceback(tmp_path):
    # A device no machine has: torch fails when the run starts, not edray's validation.
    args = ["train", str(DIGITS_YAML), "--workdir", str(tmp_path), "--device", "cuda:99", *sets([*TINY, "method=ce"])]
    proc = edray(*args)
    one_line_error(proc, 1, "RuntimeError", "--debug")
    debug = edray(*args, "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("RuntimeError")

"""Data-parallel ED on CPU: two gloo workers against one, and a sweep trial through a nested TorchTrainer.

Two processes run ``run_ed(..., dist=DistContext(rank, 2))`` over ``torch.distributed``
(gloo, file store); each takes half of every global batch and gradients are summed. One
process running the same spec with the same global batch is the reference. Without
BatchNorm the two follow the same trajectory up to float summation order; with it (the
real ``cnn_small``) batch statistics are per worker, so they only stay close.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient
from torch import nn

from edray.data import load_data
from edray.distill import loop
from edray.distill.loop import DistContext, run_ed
from edray.logits.precompute import precompute_stores
from edray.pipeline import make_teacher_logits

from .conftest import DIGITS_YAML, FAST, fast_spec

EPOCHS = 6
SHORT = [*FAST, f"optim.epochs={EPOCHS}", "ed.switch_epochs=[2, 4]", "search.params[0].min_grade_epochs=1"]
VARIANTS = ("bn", "bn_free")


def _strip_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_bn(child)
    return module


@contextmanager
def _students(variant: str):
    """``bn_free``: the same student with every BatchNorm (units and TR heads) made an identity."""
    real = loop.GrowingStudent
    if variant == "bn_free":
        loop.GrowingStudent = lambda backbone, classes: _strip_bn(real(backbone, classes))
    try:
        yield
    finally:
        loop.GrowingStudent = real


def _run(spec, data, teachers, variant: str, dist: DistContext) -> dict:
    with _students(variant):
        result = run_ed(spec, data, teachers, dist=dist, evaluate_test=False)
    return {"history": [asdict(m) for m in result.history], "state": result.model.state_dict()}


def _worker(rank: int, world: int, init_file: str, workdir: str, out: str) -> None:
    """One rank: both variants data-parallel, then one single-process reference run each
    (rank 0 the BatchNorm one, rank 1 the BN-free one, side by side)."""
    torch.set_num_threads(1)
    spec = fast_spec(*SHORT)
    data = load_data(spec.dataset)
    teachers = make_teacher_logits(spec, data, Path(workdir))
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for variant in VARIANTS:
            torch.save(_run(spec, data, teachers, variant, DistContext(rank, world)), f"{out}/{variant}-dp{rank}.pt")
    finally:
        torch_dist.destroy_process_group()
    variant = VARIANTS[rank]
    torch.save(_run(spec, data, teachers, variant, DistContext()), f"{out}/{variant}-solo.pt")


@pytest.fixture(scope="module")
def store_workdir(tmp_path_factory, teacher_workdir, digits_data) -> Path:
    workdir = tmp_path_factory.mktemp("dp") / "work"
    workdir.mkdir()
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    precompute_stores(fast_spec(*SHORT), digits_data, workdir)
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store_workdir) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("dp-out")
    mp.spawn(_worker, args=(2, str(out / "store"), str(store_workdir), str(out)), nprocs=2, join=True)
    return {p.stem: torch.load(p, weights_only=False) for p in out.glob("*.pt")}


def _max_param_gap(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_gloo_workers_keep_identical_weights(runs):
    """Gradients are all-reduced, so both ranks hold the same model (BN buffers aside)."""
    for variant in VARIANTS:
        a, b = runs[f"{variant}-dp0"]["state"], runs[f"{variant}-dp1"]["state"]
        weights = [k for k in a if "running_" not in k and "num_batches" not in k]
        assert all(torch.equal(a[k], b[k]) for k in weights), variant


def test_without_batchnorm_two_workers_follow_one(runs):
    dp, solo = runs["bn_free-dp0"], runs["bn_free-solo"]
    assert set(dp["state"]) == set(solo["state"])
    assert not [k for k in solo["state"] if "running_" in k], "the BN-free student has no BatchNorm"
    assert _max_param_gap(dp["state"], solo["state"]) < 1e-4
    for m_dp, m_solo in zip(dp["history"], solo["history"], strict=True):
        assert m_dp["grade"] == m_solo["grade"] and m_dp["lr"] == m_solo["lr"]
        assert m_dp["train_loss"] == pytest.approx(m_solo["train_loss"], rel=1e-4)
        assert m_dp["val_acc"] == pytest.approx(m_solo["val_acc"], abs=1.5 / 216)  # at most one sample apart


def test_with_batchnorm_two_workers_stay_close_to_one(runs):
    dp, solo = runs["bn-dp0"], runs["bn-solo"]
    assert [m["grade"] for m in dp["history"]] == [m["grade"] for m in solo["history"]]
    # Per-worker batch statistics (16 images instead of 32) change the trajectory a little.
    for m_dp, m_solo in zip(dp["history"], solo["history"], strict=True):
        assert m_dp["train_loss"] == pytest.approx(m_solo["train_loss"], rel=0.25)
    assert dp["history"][-1]["val_acc"] == pytest.approx(solo["history"][-1]["val_acc"], abs=0.1)
    # Not trivially close: the BN runs differ where the BN-free runs do not.
    assert _max_param_gap(dp["state"], solo["state"]) > 1e-3


@pytest.mark.slow
def test_a_sweep_trial_with_two_workers_runs_through_a_nested_torch_trainer(store_workdir, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(store_workdir, workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json",
         "--num-samples", "1", "--no-final-eval",
         *[arg for item in [*SHORT, "scaling.num_workers=2", "search.early_stopping.kind=none"]
           for arg in ("--set", item)]],
        capture_output=True, text=True, timeout=420,
        env={**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")},
             "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"] == summary["completed"] == 1 and summary["errored"] == 0
    assert 0 < summary["best_val_acc"] <= 1
    # The trial went through Ray Train: its TorchTrainer run kept its own checkpoints.
    (train_run,) = (workdir / "ray_train").glob("trial-*")
    assert list(train_run.glob("checkpoint_*"))
    assert Path(summary["best_model_path"]).is_file()
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    (child,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    assert train_run.name == f"trial-{child.data.tags['edray.trial_id']}"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == list(range(1, EPOCHS + 1))
    assert child.data.params["scaling.num_workers"] == "2"

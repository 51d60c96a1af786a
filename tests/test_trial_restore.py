"""A trial restored from the checkpoint of its last epoch (a resumed sweep whose saved state
named a checkpoint deleted since: tune_restore puts the last one in its place) reports its
last epoch again, with its student, instead of nothing (Tune then kept an older result and
counted the trial as pruned, and its model was never saved). One restored from an empty
checkpoint directory trains again from its first epoch instead of failing each restart."""

from __future__ import annotations

import shutil
from pathlib import Path

from ray.train import Checkpoint

from edray.distributed import trial
from edray.distributed.space import resolve_config
from edray.layout import Layout

from .conftest import fast_spec


def _trial(teacher_workdir: Path, tmp_path: Path):
    """A 3-epoch trial's resolved spec and context (teacher logits live: no store to build)."""
    spec = fast_spec("optim.epochs=3", "ed.switch_epochs=[1, 2]", "teachers.logits=live")
    ctx = trial.TrialContext(base_spec=spec.model_dump(mode="json"), layout=Layout.at(teacher_workdir),
                             models_dir=str(tmp_path / "models"))
    return resolve_config(spec, {}), ctx


def test_a_trial_restored_after_its_last_epoch_reports_it_again_with_its_student(teacher_workdir, tmp_path):
    config, ctx = _trial(teacher_workdir, tmp_path)
    reports: list[dict] = []

    def keep(metrics: dict, directory: str | None) -> None:
        reports.append(dict(metrics))
        if directory:  # the temporary directory goes once this returns
            shutil.copytree(directory, tmp_path / f"ckpt-{metrics['epoch']}")

    trial.train_trial(config, ctx, trial_id="t", report_fn=keep)
    assert [r["epoch"] for r in reports] == [1, 2, 3] and "model_path" in reports[-1]
    last = reports[-1]
    Path(last["model_path"]).unlink()  # saved again by the restored trial, not left from this run

    again: list[dict] = []
    trial.train_trial(config, ctx, trial_id="t", checkpoint=Checkpoint.from_directory(str(tmp_path / "ckpt-3")),
                      report_fn=lambda metrics, directory: again.append(dict(metrics)))
    assert len(again) == 1, again  # nothing trained: the last epoch, reported once more
    assert again[0]["epoch"] == 3 and again[0]["val_acc"] == last["val_acc"]
    assert again[0]["total_epochs"] == last["total_epochs"] == 3
    assert Path(again[0]["model_path"]).is_file()


def test_a_trial_restored_from_an_empty_checkpoint_starts_over_and_says_so(teacher_workdir, tmp_path, caplog):
    # An empty checkpoint directory (on S3, a marker an upload or delete cut short leaves): Tune
    # restarting the trial from it failed the same way each time, and the trial ended errored.
    config, ctx = _trial(teacher_workdir, tmp_path)
    empty = tmp_path / "checkpoint_000001"
    empty.mkdir()
    reports: list[dict] = []
    trial.train_trial(config, ctx, trial_id="t", checkpoint=Checkpoint.from_directory(str(empty)),
                      report_fn=lambda metrics, directory: reports.append(dict(metrics)))
    assert [r["epoch"] for r in reports] == [1, 2, 3] and Path(reports[-1]["model_path"]).is_file()
    assert f"trial checkpoint {empty} holds no state.pt: the trial starts over" in caplog.text

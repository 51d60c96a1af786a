"""A killed sweep's experiment state naming a deleted checkpoint is made restorable
(distributed/tune_restore.py), on a state file written with Tune's own encoder and
checkpoint manager."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.utils.serialization import TuneFunctionEncoder

from edray.distributed.tune_restore import repair_missing_checkpoints


def _trial(experiment: Path, name: str, checkpoints: dict[int, bytes], referenced: int,
           status: str = "RUNNING") -> str:
    """A trial directory holding ``checkpoints`` (index -> state bytes); its state entry
    names checkpoint ``referenced``, as Tune writes it."""
    trial_dir = experiment / name
    for index, data in checkpoints.items():
        (trial_dir / f"checkpoint_{index:06d}").mkdir(parents=True)
        (trial_dir / f"checkpoint_{index:06d}" / "state.pt").write_bytes(data)
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
    manager.register_checkpoint(
        _TrainingResult(Checkpoint(str(trial_dir / f"checkpoint_{referenced:06d}")), {"epoch": referenced + 1}))
    runtime = json.dumps({"num_failures": 0, "checkpoint_manager": manager}, cls=TuneFunctionEncoder)
    return json.dumps([json.dumps({"trial_id": name, "status": status}), runtime])


def test_a_missing_checkpoint_gets_the_next_one_and_nothing_else_changes(tmp_path):
    experiment = tmp_path / "sweep-1"
    experiment.mkdir()
    (experiment / "experiment_state-2026-12-07_10-31-28.json").write_text("{}")
    trials = [
        _trial(experiment, "raced", {1: b"epoch 2", 2: b"epoch 3"}, referenced=0),  # 0 deleted after the state
        _trial(experiment, "intact", {4: b"epoch 5"}, referenced=4),
        _trial(experiment, "lost", {}, referenced=0),  # nothing later: left to Tune
        _trial(experiment, "finished", {3: b"epoch 4"}, referenced=2, status="TERMINATED"),  # never restored
    ]
    (experiment / "experiment_state-2026-12-07_10-31-42.json").write_text(
        json.dumps({"trial_data": [json.loads(t) for t in trials], "runner_data": {}, "stats": {}}))

    repaired = repair_missing_checkpoints(pafs.LocalFileSystem(), str(experiment))

    assert repaired == ["raced/checkpoint_000000"]
    # The checkpoint whose registration deleted the missing one: its epoch was already processed.
    assert (experiment / "raced" / "checkpoint_000000" / "state.pt").read_bytes() == b"epoch 2"
    assert (experiment / "raced" / "checkpoint_000002" / "state.pt").read_bytes() == b"epoch 3"
    assert sorted(p.name for p in (experiment / "intact").iterdir()) == ["checkpoint_000004"]
    assert not (experiment / "lost").exists()
    assert sorted(p.name for p in (experiment / "finished").iterdir()) == ["checkpoint_000003"]
    assert repair_missing_checkpoints(pafs.LocalFileSystem(), str(experiment)) == []  # once is enough


def test_an_empty_checkpoint_directory_counts_as_missing_and_is_never_copied(tmp_path):
    # On S3 an upload or a delete cut short leaves an empty directory (a marker): it reads as a
    # directory, and Tune would restore it as a checkpoint without the trial's state file.
    experiment = tmp_path / "sweep-2"
    experiment.mkdir()
    trials = [
        _trial(experiment, "emptied", {2: b"epoch 3"}, referenced=1),
        _trial(experiment, "cut", {3: b"epoch 4"}, referenced=0),
    ]
    (experiment / "emptied" / "checkpoint_000001").mkdir()
    (experiment / "cut" / "checkpoint_000001").mkdir()  # the next one is empty: not a source
    (experiment / "experiment_state-2026-12-08_00-31-33.json").write_text(
        json.dumps({"trial_data": [json.loads(t) for t in trials], "runner_data": {}, "stats": {}}))

    repaired = repair_missing_checkpoints(pafs.LocalFileSystem(), str(experiment))

    assert repaired == ["emptied/checkpoint_000001", "cut/checkpoint_000000"]
    assert (experiment / "emptied" / "checkpoint_000001" / "state.pt").read_bytes() == b"epoch 3"
    assert (experiment / "cut" / "checkpoint_000000" / "state.pt").read_bytes() == b"epoch 4"


def test_no_state_or_an_unreadable_one_changes_nothing(tmp_path):
    assert repair_missing_checkpoints(pafs.LocalFileSystem(), str(tmp_path / "absent")) == []
    (tmp_path / "experiment_state-x.json").write_text(json.dumps({"trial_data": [["{}", json.dumps(
        {"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": "not hex"}})]]}))
    assert repair_missing_checkpoints(pafs.LocalFileSystem(), str(tmp_path)) == []

"""``search.storage`` on a real PostgreSQL server: the sweep's Optuna study lives there, its
parent run says where, and ``--resume`` reuses it instead of starting another. The first sweep
runs with ``--quiet``, whose progress lines stay silent."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DIGITS_YAML
from tests.helpers import edray, json_summary, sets
from tests.test_sweep import SHORT, _seed


@pytest.mark.slow
def test_the_study_lives_in_postgres_and_resume_reuses_it(tmp_path_factory, teacher_workdir, postgres):
    storage = postgres.create_database("optuna")
    workdir = _seed(teacher_workdir, tmp_path_factory.mktemp("study") / "work")
    args = ["sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--num-samples", "2", "--no-final-eval",
            *sets([*SHORT, "search.early_stopping.kind=none", f"search.storage={storage}"])]
    # --quiet (stderr not a terminal): the result only, none of the progress lines test_progress.py reads.
    quiet = edray(*args, "--quiet")
    first = json_summary(quiet)
    assert not [line for line in quiet.stderr.splitlines() if line.startswith(("trial ", "status: ", "resumed: "))], \
        quiet.stderr[-3000:]
    study = optuna.load_study(study_name="digits", storage=storage)
    told = [(t.number, t.state, t.value) for t in study.trials]
    assert [state for _, state, _ in told] == [optuna.trial.TrialState.COMPLETE] * 2
    assert max(value for _, _, value in told) == first["best_val_acc"]

    parent = MlflowClient(first["tracking_uri"]).get_run(first["parent_run_id"])
    assert parent.data.tags["edray.optuna_study"] == "digits"
    assert parent.data.tags["edray.optuna_storage"] == storage

    resumed = json_summary(edray(*args, "--resume"))
    assert resumed["parent_run_id"] == first["parent_run_id"] and resumed["trials"] == 2
    again = optuna.load_study(study_name="digits", storage=storage)
    assert [(t.number, t.state, t.value) for t in again.trials] == told  # the same study, no trial added
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["digits"]

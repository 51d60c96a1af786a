"""The MLflow tag names edray writes and reads back, each spelled once.

The tracker writes them; ``edray best``, ``edray report`` and ``edray sweep --compare``
search and read them. A tag renamed in one place only would make old and new sweeps
invisible to each other.
"""

from __future__ import annotations

__all__ = [
    "COMPARE", "EXPERIMENT_KIND", "KIND", "KIND_SWEEP", "KIND_TRIAL", "METHOD", "MODEL_TRAINING", "MODEL_URI",
    "OPTUNA_STORAGE", "OPTUNA_STUDY", "PARENT_RUN", "SPEC_NAME", "STATUS", "SUMMARY_PREFIX", "SWEEP_FILTER",
    "SWEEP_RUN", "TEST_ACC", "TEST_PROTOCOL", "TRIAL_ID", "tag_filter",
]

KIND = "edray.kind"  # what a run is: KIND_SWEEP (a parent run) or KIND_TRIAL (its child)
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
STATUS = "edray.status"  # running | completed | pruned | errored (trials); running | finished | killed ... (sweeps)
TRIAL_ID = "edray.trial_id"  # Tune's trial id: how a resumed sweep finds its child runs again
SPEC_NAME = "edray.spec_name"
METHOD = "edray.method"  # ed | kd | mtkd | ce, as a column of the runs table
COMPARE = "edray.compare"  # on ED's parent run after `--compare`: the baselines compared, comma-separated
SUMMARY_PREFIX = "edray.summary."  # the sweep summary's values that are not numbers
OPTUNA_STUDY = "edray.optuna_study"  # on a parent run with search.storage: the study's name ...
OPTUNA_STORAGE = "edray.optuna_storage"  # ... and its storage URL, password hidden (optuna-dashboard opens it)
MODEL_URI = "edray.model_uri"  # on a parent run: its best student's registered version, models:/NAME/VERSION
# On a registered model version (edray.tracking.student_model): what the champion alias compares.
TEST_ACC = "edray.test_acc"
TEST_PROTOCOL = "edray.test_protocol"  # the data fingerprint: same value, same test set
SWEEP_RUN = "edray.sweep_run_id"

PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under its sweep's
# MLflow 3's UI opens an experiment on its GenAI overview ("No data available") unless it is
# tagged as model training; then it opens on the runs table. Values: ExperimentKind in
# mlflow/server/js/src/experiment-tracking/constants.ts.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def tag_filter(tag: str, value: str) -> str:
    """An MLflow ``search_runs`` filter: the run's ``tag`` equals ``value`` (quotes escaped)."""
    quoted = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"tags.`{tag}` = '{quoted}'"


SWEEP_FILTER = tag_filter(KIND, KIND_SWEEP)

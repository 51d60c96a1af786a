"""Names that several modules must spell alike, each defined once here.

Each is read by more than one part of edray (the sweep and the report, the teacher cache
and the cluster runner, the tracker and ``edray ui``); a typo in a retyped copy would
split one thing into two, silently.
"""

from __future__ import annotations

__all__ = ["BASELINES", "METRIC", "MLFLOW_ARTIFACTS", "SHA256_SUFFIX"]

METRIC = "val_acc"  # what a sweep maximises: a trial's validation accuracy
BASELINES = ("kd", "mtkd", "ce")  # the methods ED is compared with (`edray sweep --compare`)
SHA256_SUFFIX = ".sha256"  # beside a teacher checkpoint: its digest, written last (it says "complete")
MLFLOW_ARTIFACTS = "mlflow-artifacts"  # the folder of the embedded MLflow store's artifacts

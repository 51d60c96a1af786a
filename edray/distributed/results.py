"""What a sweep leaves: its summary (:class:`SweepResult`), ``best.yaml``, the final
evaluation of the best config, and the parent run's closing records."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edray.atomic import write_text
from edray.distributed.node_check import NodeCheck
from edray.distributed.space import resolve_config
from edray.distributed.trial_rows import RESULT_COLUMNS, trial_rows
from edray.layout import Layout
from edray.names import METRIC
from edray.search_space import search_section
from edray.spec import Spec
from edray.trial_status import TrialStatus

__all__ = [
    "SweepResult", "best_spec_dict", "collect", "final_eval", "finish_tracking", "register_best_student", "write_best",
]


@dataclass
class SweepResult:
    experiment: str
    parent_run_id: str
    tracking_uri: str
    trials: int
    completed: int
    pruned: int
    errored: int
    best_config: dict[str, Any] | None
    best_val_acc: float | None
    wall_s: float
    best_spec_path: str | None = None
    best_model_path: str | None = None
    final_test_acc_mean: float | None = None
    final_test_acc_std: float | None = None
    final_test_accs: list[float] = field(default_factory=list)
    best_student_test_acc: float | None = None  # the best trial's own student, on the test split
    model_uri: str | None = None  # its registered MLflow model version, models:/NAME/VERSION
    champion: bool | None = None  # whether that version now holds the alias ``champion``
    epochs_trained: int = 0
    # Which node did what: nodes (on a cluster, every node checked), teachers (index -> node),
    # stores (name -> node per shard), trials (trial id -> node of its last result),
    # final_eval (node per seed); and the wall time of each step (steps, timings).
    placement: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["wall_s"] = round(self.wall_s, 3)
        return out


def best_spec_dict(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The best trial as a spec ``edray train`` accepts: searched values written in, no search."""
    resolved = resolve_config(spec, config).model_dump(mode="json")
    resolved["search"] = None
    return {k: v for k, v in resolved.items() if v is not None}


def collect(grid, tracker, parent_id: str, tic: float) -> SweepResult:
    """The summary of Tune's results: counts by status, the best completed trial, epochs trained."""
    rows = trial_rows(grid)
    epochs = sum(row["epoch"] for row in rows)
    done = [row for row in rows if row["status"] == TrialStatus.COMPLETED and row[METRIC] is not None]
    best = max(done, key=lambda row: row[METRIC]) if done else None
    return SweepResult(
        experiment=tracker.experiment,
        parent_run_id=parent_id,
        tracking_uri=tracker.uri,
        trials=len(rows),
        completed=sum(row["status"] == TrialStatus.COMPLETED for row in rows),
        pruned=sum(row["status"] == TrialStatus.PRUNED for row in rows),
        errored=sum(row["status"] == TrialStatus.ERRORED for row in rows),
        best_config=best["config"] if best else None,
        best_model_path=best["model_path"] if best else None,
        best_val_acc=best[METRIC] if best else None,
        wall_s=time.monotonic() - tic,
        epochs_trained=epochs,
        placement={"trials": {row["trial_id"]: row["node"] for row in rows if row["node"]}},  # those that reported
    )


def write_best(spec: Spec, layout: Layout, result: SweepResult) -> tuple[dict[str, Any], str]:
    """The best config as a spec ``edray train`` runs (``best.yaml``); returns it and its text."""
    # The sweep calls this only after it found a best trial (best_config is not None).
    assert result.best_config is not None, "write_best needs a sweep with a best trial"
    best = best_spec_dict(spec, result.best_config)
    best_path = layout.sweep_dir(spec.name) / "best.yaml"
    best_text = yaml.safe_dump(best, sort_keys=False)
    write_text(best_path, best_text)  # atomic: a truncated best.yaml could still parse
    result.best_spec_path = str(best_path)
    return best, best_text


def final_eval(spec: Spec, best: dict[str, Any], seeds: int, layout: Layout,
               log: Callable[[str], None], node_check: NodeCheck | None = None) -> list[tuple[float, str]]:
    """Test accuracy of the best config over ``seeds`` seeds, as parallel Ray tasks with
    the trials' resources (on worker nodes, on a cluster); ``(test_acc, node)`` per seed."""
    from edray.distributed.cluster import final_eval as evaluate

    log(f"final evaluation of the best config on the test split, {seeds} seeds")
    return evaluate(spec, best, seeds, layout, node_check)


def finish_tracking(spec: Spec, tracker, grid, result: SweepResult, best_text: str, sweep_dir: Path) -> None:
    """The parent run's closing records: every trial's row and history, the figures, the summary."""
    from edray.tracking import render_figures

    results, history = [], {}
    for r, row in zip(grid, trial_rows(grid), strict=True):
        # epochs: the report's table reads them here, not from every trial's history in MLflow.
        results.append({**{key: row[key] for key in RESULT_COLUMNS}, "epochs": row["epoch"]})
        df = r.metrics_dataframe
        history[row["trial_id"]] = df.to_dict("records") if df is not None else []
    figures = render_figures(results, history, search_section(spec).params, sweep_dir / "figures", metric=METRIC)
    summary = {k: v for k, v in result.summary().items() if isinstance(v, int | float) and v is not None}
    tracker.finish_sweep(
        best_config=result.best_config or {}, best_spec_yaml=best_text, results=results, figures=figures,
        summary=summary,
        best_model_path=result.best_model_path if result.best_model_path and spec.tracking.log_models != "none"
        else None,
    )


def register_best_student(spec: Spec, layout: Layout, tracker, result: SweepResult,
                          log: Callable[[str], None], node_check: NodeCheck | None = None) -> None:
    """The best trial's student as an MLflow model on the parent run, registered as
    ``<experiment>-<method>``; the alias ``champion`` moves to it if it beats the champion's
    test accuracy on the same test set (:mod:`edray.tracking.student_model`)."""
    from edray.distributed.cluster import evaluate_student
    from edray.tracking import tags
    from edray.tracking.student_model import StudentModel, log_student_model, register_student, registered_model_name

    # The sweep registers a student only when the best trial saved one.
    assert result.best_model_path is not None, "register_best_student needs the best trial's model"
    student = evaluate_student(spec, result.best_model_path, layout, node_check)
    logged = log_student_model(tracker.uri, result.parent_run_id, StudentModel(
        model=student.model, example=student.example, class_names=student.class_names,
        normalisation=student.normalisation))
    reg = register_student(tracker.uri, logged, registered_model_name(tracker.experiment, spec.method),
                           test_acc=student.test_acc, protocol=student.protocol, sweep_run_id=result.parent_run_id)
    result.best_student_test_acc, result.champion = student.test_acc, reg.champion
    result.model_uri = f"models:/{reg.name}/{reg.version}"
    tracker.client.set_tag(result.parent_run_id, tags.MODEL_URI, result.model_uri)
    log(f"best student: test_acc {student.test_acc:.4f}, registered as {result.model_uri} ({reg.reason}); "
        f"load it with mlflow.pytorch.load_model('{reg.champion_uri if reg.champion else result.model_uri}')")


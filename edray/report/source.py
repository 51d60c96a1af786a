"""A finished sweep read back from MLflow: everything ``edray report`` shows, nothing drawn.

MLflow is the only source: the report of a sweep run on a cluster is written anywhere
the tracking store is reachable, without the sweep's work directory. The parent run
gives the spec, the results table and the best config; the child runs give the
per-epoch history the learning curves need. The figures are drawn from these by the
same code as at the end of the sweep, so they match the ones on the parent run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from edray.errors import EdrayError
from edray.names import BASELINES, METRIC
from edray.spec import SearchParam
from edray.tracking import tags
from edray.tracking.secrets import redact_text
from edray.tracking.sweeps import finished_sweeps, latest_sweep, open_experiment
from edray.tracking.values import finite

__all__ = ["MethodResult", "SweepRecord", "TrialRow", "load_sweep"]

log = logging.getLogger(__name__)

_HISTORY_KEYS = (METRIC, f"{METRIC}_seen", "grade")  # what the learning curves draw


@dataclass(frozen=True)
class TrialRow:
    """One trial as the results table shows it."""

    trial_id: str
    status: str  # completed | pruned | errored
    metric: float | None
    config: dict[str, Any]  # searched path -> value
    run_id: str | None = None  # its child run: read for the trials the learning curves draw (and older sweeps')
    epochs: int | None = None  # last epoch logged


@dataclass(frozen=True)
class MethodResult:
    """The best a method reached in this experiment (the sweep's own ED row included)."""

    method: str
    source: str  # the run that holds the best validation accuracy
    runs: int  # sweeps and trials of this method that count
    best_val_acc: float | None
    test_acc_mean: float | None = None
    test_acc_std: float | None = None


@dataclass
class SweepRecord:
    """A finished sweep and what it is compared with."""

    experiment: str
    tracking_uri: str  # passwords masked
    run_id: str
    run_name: str
    method: str
    status: str
    start: datetime | None
    end: datetime | None
    spec: dict[str, Any]
    summary: dict[str, float]  # the parent run's metrics
    results: list[dict]  # results.json, as render_figures takes it
    history: dict[str, list[dict]]  # trial id -> per-epoch records
    space: list[SearchParam]
    best_yaml: str
    trials: list[TrialRow]
    methods: list[MethodResult]  # the sweep first, then each baseline that was run
    other_sweeps: list[str] = field(default_factory=list)  # names of older finished sweeps
    comparison: list[dict] = field(default_factory=list)  # rows of `edray sweep --compare` (compare.json)
    metric: str = METRIC

    @property
    def baselines(self) -> list[MethodResult]:
        return self.methods[1:]


def load_sweep(experiment: str, uri: str, *, run_id: str | None = None) -> SweepRecord:
    """The newest finished ED sweep of ``experiment`` (or the sweep ``run_id``), read back.

    Without an ED sweep, the newest finished sweep of any method. A sweep is finished
    when its parent run is FINISHED (a killed or failed one has no best config).

    Raises:
        EdrayError: no store, no such experiment (names the ones there are), no finished
            sweep (names the sweeps there are and their state).
    """
    client, exp = open_experiment(uri, experiment)
    parent = _named_sweep(client, exp, run_id) if run_id else latest_sweep(client, exp)
    with tempfile.TemporaryDirectory(prefix="edray-report-") as tmp:
        results = json.loads(_artifact(client, parent, "results.json", tmp) or "[]")
        spec = yaml.safe_load(_artifact(client, parent, "spec.yaml", tmp) or "{}") or {}
        best_yaml = _artifact(client, parent, "best.yaml", tmp) or ""
        comparison = (json.loads(_artifact(client, parent, "compare.json", tmp) or "[]")
                      if parent.data.tags.get(tags.COMPARE) else [])
    children, history = _trial_runs(client, exp.experiment_id, parent.info.run_id, results)
    trials = [_trial_row(row, children.get(str(row.get("trial_id"))), history) for row in results]
    method = str(parent.data.params.get("method") or spec.get("method") or "ed")
    own = MethodResult(method=method, source=parent.info.run_name, runs=1,
                       best_val_acc=_metric(parent, "best_val_acc"),
                       test_acc_mean=_metric(parent, "final_test_acc_mean"),
                       test_acc_std=_metric(parent, "final_test_acc_std"))
    methods = [own, *(_baselines(client, exp.experiment_id, skip=method))]
    older = finished_sweeps(client, exp.experiment_id)
    return SweepRecord(
        experiment=experiment, tracking_uri=redact_text(uri), run_id=parent.info.run_id, run_name=parent.info.run_name,
        method=method, status=parent.info.status, start=_time(parent.info.start_time), end=_time(parent.info.end_time),
        spec=spec, summary=dict(parent.data.metrics), results=results, history=history, space=_space(spec),
        best_yaml=best_yaml, trials=trials, methods=methods,
        other_sweeps=[r.info.run_name for r in older if r.info.run_id != parent.info.run_id],
        comparison=comparison,
    )


# ---------------------------------------------------------------------- which sweep


def _named_sweep(client, exp, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.experiment_id != exp.experiment_id or run.data.tags.get(tags.KIND) != tags.KIND_SWEEP:
        raise EdrayError("run_id", f"{run_id} is not a sweep of experiment {exp.name!r}",
                         "pass the parent run id that `edray sweep` printed")
    return run


# ---------------------------------------------------------------------- the sweep's own records


def _artifact(client, run, name: str, tmp: str) -> str | None:
    try:
        return Path(client.download_artifacts(run.info.run_id, name, tmp)).read_text()
    except Exception as err:  # an artifact missing from an older sweep: shown as missing, never fatal
        log.warning("run %s has no %s (%s)", run.info.run_id, name, type(err).__name__)
        return None


def _children(client, experiment_id: str, parent_id: str, trial_id: str | None = None) -> dict[str, Any]:
    """Trial id -> child run (of ``trial_id`` only, if given), over every page of results."""
    query = tags.tag_filter(tags.PARENT_RUN, parent_id)
    if trial_id is not None:
        query += " and " + tags.tag_filter(tags.TRIAL_ID, trial_id)
    out: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        for run in page:
            found = run.data.tags.get(tags.TRIAL_ID)
            if found:
                out.setdefault(found, run)
        token = page.token
        if not token:
            return out


def _trial_runs(client, experiment_id: str, parent_id: str,
                results: list[dict]) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """(trial id -> child run, trial id -> per-epoch records) of the trials the learning curves
    draw: the best ones that have a history, as many as the figure shows.

    Reading every child run and every history grew with the trials: for 400 trials over HTTP,
    the child runs (one page of full runs) took 14 s and each history is a request per metric
    (12 s of histories for 120 trials, 4 s for the curves' alone). Only the curves need a run;
    the results table takes each trial's epochs from ``results.json``. An older sweep's rows
    carry no epochs: every child and history is read then, as before.
    """
    from edray.tracking.figures import TOP_CURVES

    children: dict[str, Any]
    if any("epochs" not in row for row in results):
        children = _children(client, experiment_id, parent_id)
        return children, {tid: _history(client, run.info.run_id) for tid, run in children.items()}
    ranked = sorted((r for r in results if finite(r.get(METRIC)) is not None),
                    key=lambda r: -(finite(r.get(METRIC)) or 0.0))  # all finite (filtered)
    children = {}
    history: dict[str, list[dict]] = {}
    for row in ranked:
        trial_id = str(row["trial_id"])
        found = _children(client, experiment_id, parent_id, trial_id)
        if found:
            children[trial_id] = found[trial_id]
            history[trial_id] = _history(client, found[trial_id].info.run_id)
        if sum(1 for records in history.values() if records) == TOP_CURVES:
            break
    return children, history


def _history(client, run_id: str) -> list[dict]:
    """Per-epoch records (step = epoch), as the sweep hands them to ``render_figures``."""
    by_step: dict[int, dict] = {}
    for key in _HISTORY_KEYS:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(int(m.step), {"epoch": int(m.step)})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def _trial_row(row: dict, run, history: dict[str, list[dict]]) -> TrialRow:
    trial_id = str(row.get("trial_id"))
    records = history.get(trial_id) or []
    return TrialRow(
        trial_id=trial_id, status=str(row.get("status", "")), metric=finite(row.get(METRIC)),
        config=dict(row.get("config") or {}), run_id=run.info.run_id if run is not None else None,
        epochs=row["epochs"] if "epochs" in row else max((r["epoch"] for r in records), default=None),
    )


def _space(spec: dict) -> list[SearchParam]:
    params = ((spec.get("search") or {}).get("params")) or []
    out = []
    for raw in params:
        try:
            out.append(SearchParam.model_validate(raw))
        except Exception:  # a param this edray no longer knows: drawn without its bounds
            log.warning("search param %r not understood; its bounds are left out of the figures", raw)
    return out


# ---------------------------------------------------------------------- baselines


def _baselines(client, experiment_id: str, *, skip: str) -> list[MethodResult]:
    """Per baseline method: its best validation accuracy over finished sweeps (and trials
    outside one), with the final test accuracy of the sweep that reached it."""
    out = []
    for method in BASELINES:
        if method == skip:
            continue
        runs = client.search_runs([experiment_id], filter_string=f"params.method = '{method}'", max_results=1000)
        sweeps = {r.info.run_id for r in runs
                  if r.data.tags.get(tags.KIND) == tags.KIND_SWEEP and r.info.status == "FINISHED"}
        candidates = []  # (val acc, (test mean, test std), run name)
        for run in runs:
            if run.info.run_id in sweeps:
                candidates.append((_metric(run, "best_val_acc"),
                                   (_metric(run, "final_test_acc_mean"), _metric(run, "final_test_acc_std")),
                                   run.info.run_name))
            elif (run.data.tags.get(tags.KIND) != tags.KIND_SWEEP and run.info.status == "FINISHED"
                  and run.data.tags.get(tags.STATUS, "completed") == "completed"
                  and run.data.tags.get(tags.PARENT_RUN) not in sweeps):  # a finished sweep speaks for its trials
                candidates.append((_metric(run, METRIC), (_metric(run, "test_acc"), None), run.info.run_name))
        if not candidates:
            continue
        best = max(candidates, key=lambda c: -math.inf if c[0] is None else c[0])
        tested = [c for c in candidates if c[1][0] is not None]
        if best[1][0] is None and tested:  # the best has no test score: the best one that has
            best = (best[0], max(tested, key=lambda c: -math.inf if c[0] is None else c[0])[1], best[2])
        out.append(MethodResult(method=method, source=best[2], runs=len(candidates), best_val_acc=best[0],
                                test_acc_mean=best[1][0], test_acc_std=best[1][1]))
    return out


# ---------------------------------------------------------------------- small helpers


def _metric(run, key: str) -> float | None:
    return finite(run.data.metrics.get(key))


def _time(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None

"""MLflow records of a sweep: a parent run, one nested child run per trial.

One experiment per spec; a parent run per sweep (tag ``edray.kind=sweep``) holding the
spec, the best config, the results table and the figures; a child run per trial
(``mlflow.parentRunId``) with flattened params, per-epoch metrics (step = epoch), a
status tag, the resolved config and the trained student.

Resume is the hard part, and why the tracker keeps state: a sweep restarted after a
crash must find its parent and every child again (by the ``edray.trial_id`` tag),
never create a second one, and never log an epoch twice. Trials re-run epochs since
their last checkpoint, so the last logged step of each run is remembered (seeded from
MLflow's metric history when a run is found again) and older epochs are skipped.

Tune calls the tracker from its driver process only: there is one writer to the store.

A tracking server that stops answering must not stall the sweep: every call goes through
:class:`~edray.tracking.guard.ServerGuard` (bounded in time; a server that is down is paused).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyarrow import ArrowException

from edray.errors import EdrayError
from edray.storage import is_uri, read_bytes
from edray.tracking import tags
from edray.tracking.guard import ServerGuard, is_transient
from edray.tracking.records import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    as_text,
    clip,
    flatten,
    metric_batch,
    mlflow_key,
    numeric,
    redact_yaml,
    results_csv,
    to_yaml,
)
from edray.tracking.secrets import redact
from edray.tracking.uri import artifacts_are_local
from edray.trial_status import TrialStatus

__all__ = ["END_WAIT_S", "SweepTracker"]

log = logging.getLogger(__name__)

_BATCH = 100  # params / tags per log_batch request
END_WAIT_S = 180.0  # at the end of a sweep: how long a server that is down is waited for
_T = TypeVar("_T")


class SweepTracker:
    """The MLflow records of one sweep (see the module docstring).

    Args:
        uri: MLflow tracking URI (see :func:`~edray.tracking.uri.resolve_tracking_uri`).
        experiment: experiment name (one per spec); created if missing.
        artifact_root: where a new experiment keeps its artifacts when no server decides
            (database URIs): ``artifact_root / experiment``.
        sleep: waits between tries of a failed MLflow call (tests pass a recorder).

    Raises:
        EdrayError: the experiment exists but was deleted.
    """

    def __init__(self, uri: str, experiment: str, *, artifact_root: Path | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        _quiet_mlflow()
        self.uri = uri
        self.experiment = experiment
        self._guard = ServerGuard(uri, sleep=sleep, kept=lambda: len(self._pending))
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment_id(experiment, artifact_root)
        self.parent_run_id: str = ""
        self._runs: dict[str, str] = {}  # trial id -> child run id
        # True once _runs holds every child run of the parent (a new sweep has none; a resumed one
        # is seeded): a trial not in _runs then has no run, and trial_run need not search for one.
        # (That search was one more request per trial, its cost growing with the experiment's runs.)
        self._runs_complete = False
        self._last_step: dict[str, int] = {}  # run id -> last epoch logged
        self._pending: list[tuple[str, list[Metric]]] = []  # batches that failed every try

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles its callbacks into the experiment state: keep the ids, not the
        client (a database engine does not pickle) nor the caches (re-read from MLflow)."""
        return {"uri": self.uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "pending": self._pending, "sleep": self._guard.sleep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.uri = state["uri"]
        self.experiment = state["experiment"]
        self.experiment_id = state["experiment_id"]
        self.parent_run_id = state["parent_run_id"]
        self._pending = list(state["pending"])
        self._guard = ServerGuard(self.uri, sleep=state["sleep"], kept=lambda: len(self._pending))
        self.client = MlflowClient(tracking_uri=self.uri)
        self._runs, self._last_step = {}, {}
        self._runs_complete = False  # a copy from Tune's experiment state: children are searched for

    # ------------------------------------------------------------------ experiment and parent

    def _experiment_id(self, name: str, artifact_root: Path | None) -> str:
        exp = self._retry(lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise EdrayError("tracking.experiment", f"experiment {name!r} was deleted in {self.uri}",
                                 f"restore it (mlflow experiments restore --experiment-id {exp.experiment_id}) "
                                 "or choose another tracking.experiment")
            if tags.EXPERIMENT_KIND not in exp.tags:  # a kind chosen in the UI is the user's: left alone
                self._retry(lambda: self.client.set_experiment_tag(exp.experiment_id, tags.EXPERIMENT_KIND,
                                                                   tags.MODEL_TRAINING))
            return exp.experiment_id
        location = None
        if artifact_root is not None and artifacts_are_local(self.uri):
            location = (Path(artifact_root).expanduser().resolve() / mlflow_key(name).replace("/", "_")).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={tags.EXPERIMENT_KIND: tags.MODEL_TRAINING})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = self.client.get_experiment_by_name(name)  # created meanwhile by another driver
            if existing is None:
                raise
            return existing.experiment_id

    def start_sweep(self, *, run_name: str, spec_dict: dict, resume_run_id: str | None = None) -> str:
        """Open the parent run and return its id; ``resume_run_id`` reopens that run.

        The spec is logged as flattened params (redacted) and as ``spec.yaml``.

        Raises:
            EdrayError: ``resume_run_id`` is not a sweep of this experiment in this store.
        """
        if resume_run_id:
            self.require_sweep_run(resume_run_id)
            self.parent_run_id = resume_run_id
            self._retry(lambda: self.client.update_run(resume_run_id, status="RUNNING"))
            self._retry(lambda: self.client.set_tag(resume_run_id, tags.STATUS, "running"))
            self._seed_children()
            self._runs_complete = True
            return resume_run_id
        clean = redact(spec_dict)
        marks = {tags.KIND: tags.KIND_SWEEP, tags.STATUS: "running", tags.SPEC_NAME: str(spec_dict.get("name", ""))}
        run = self._retry(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=marks))
        self.parent_run_id = run.info.run_id
        self._runs_complete = True  # a new parent run has no children yet
        self._log_params(self.parent_run_id, flatten(clean))
        self._retry(lambda: self.client.log_text(self.parent_run_id, to_yaml(clean), "spec.yaml"))
        return self.parent_run_id

    def require_sweep_run(self, run_id: str) -> None:
        """Raises :class:`EdrayError` unless ``run_id`` is a run of this experiment in this store
        (a sweep to resume: checked before anything else of the sweep starts)."""
        run = self._find_run(run_id)
        if run is None or run.info.experiment_id != self.experiment_id:
            raise EdrayError("--resume", f"sweep run {run_id} is not in experiment {self.experiment!r} of {self.uri}",
                             "resume with the tracking server (or MLflow database) the sweep used: the same "
                             "tracking.uri or MLFLOW_TRACKING_URI; or start without --resume")

    def _find_run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def _seed_children(self) -> None:
        for run in self._children():
            trial_id = run.data.tags.get(tags.TRIAL_ID)
            if trial_id and trial_id not in self._runs:
                self._runs[trial_id] = run.info.run_id

    def _children(self, trial_id: str | None = None) -> list:
        query = tags.tag_filter(tags.PARENT_RUN, self.parent_run_id)
        if trial_id is not None:
            query += " and " + tags.tag_filter(tags.TRIAL_ID, trial_id)
        runs: list[Any] = []
        token: str | None = None
        while True:
            page = self._retry(lambda: self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=1000, page_token=token,
                order_by=["attributes.start_time ASC"],
            ))
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------------ trials

    def trial_run(self, trial_id: str, *, params: dict, resolved_spec: dict) -> str:
        """The child run of ``trial_id``: found again if this sweep already has one, else created.

        Params are the searched values plus the flattened resolved spec (redacted); the
        resolved spec is also logged as ``config.yaml``.
        """
        self._require_parent()
        run_id = self._runs.get(trial_id)
        if run_id is None and not self._runs_complete:
            found = self._children(trial_id)
            if found:
                run_id = found[0].info.run_id
        if run_id is not None:
            self._runs[trial_id] = run_id
            self._seed_last_step(run_id)
            known: str = run_id  # narrowed for the lambdas below
            self._retry(lambda: self.client.update_run(known, status="RUNNING"))
            self._retry(lambda: self.client.set_tag(known, tags.STATUS, "running"))
            return run_id
        columns, numbers = self._columns(resolved_spec)
        marks = {tags.PARENT_RUN: self.parent_run_id, tags.KIND: tags.KIND_TRIAL, tags.TRIAL_ID: trial_id,
                 tags.STATUS: "running", **columns}
        run = self._retry(lambda: self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}",
                                                         tags=marks))
        run_id = run.info.run_id
        self._runs[trial_id] = run_id
        self._last_step[run_id] = -1
        clean_spec = redact(resolved_spec)
        values = flatten(clean_spec)
        values.update({mlflow_key(k): as_text(v) for k, v in redact(params).items()})
        self._log_params(run_id, values, metrics=metric_batch(numbers, 0))
        if clean_spec:
            self._retry(lambda: self.client.log_text(run_id, to_yaml(clean_spec), "config.yaml"))
        return run_id

    @staticmethod
    def _columns(resolved_spec: dict) -> tuple[dict[str, str], dict[str, float]]:
        """What a user sorts the runs table by, as columns that sort right: the method as a tag,
        the switch epochs and the epochs trained as numbers (a param "[8, 16]" sorts as text)."""
        method = resolved_spec.get("method")
        marks = {tags.METHOD: str(method)} if method else {}
        switches = (resolved_spec.get("ed") or {}).get("switch_epochs") or []
        values = {f"switch_epoch_{i + 1}": float(e) for i, e in enumerate(switches)} if method == "ed" else {}
        epochs = (resolved_spec.get("optim") or {}).get("epochs")
        if epochs:
            values["budget_epochs"] = float(epochs)
        return marks, values

    def _run_for(self, trial_id: str) -> str:
        """The child run of a trial seen first through a result (e.g. a tracker made after a crash)."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        return self.trial_run(trial_id, params={}, resolved_spec={})

    def _seed_last_step(self, run_id: str) -> None:
        if run_id in self._last_step:
            return
        run = self._retry(lambda: self.client.get_run(run_id))
        last = -1
        for key in run.data.metrics:
            history = self._retry(partial(self.client.get_metric_history, run_id, key))
            last = max([last, *(m.step for m in history)])
        self._last_step[run_id] = last

    def log_epoch(self, trial_id: str, metrics: dict[str, float], epoch: int) -> None:
        """Log the numeric values of ``metrics`` at step ``epoch``, once per epoch.

        An epoch at or before the last one logged for this trial is skipped (a trial
        resumed from an older checkpoint repeats epochs). A batch that fails three
        tries is kept and sent again with the next call, never dropped.
        """
        self._flush()
        run_id = self._run_for(trial_id)
        epoch = int(epoch)
        if epoch <= self._last_step.get(run_id, -1):
            return
        batch = metric_batch(numeric(metrics), epoch)
        self._last_step[run_id] = epoch
        if batch:
            self._send(run_id, batch)

    def end_trial(self, trial_id: str, status: TrialStatus | str, *, model_path: str | Path | None = None,
                  final_metrics: dict | None = None) -> None:
        """Close a trial's run: ``completed`` / ``pruned`` -> FINISHED, ``errored`` -> FAILED.

        ``model_path`` is logged as ``model/student.pt``; ``final_metrics`` (numbers) at
        the trial's last step.
        """
        if status not in set(TrialStatus):
            raise ValueError(f"status must be one of {[s.value for s in TrialStatus]}, got {status!r}")
        status = TrialStatus(status)
        run_id = self._run_for(trial_id)
        self._flush()
        if final_metrics:
            batch = metric_batch(numeric(final_metrics), max(self._last_step.get(run_id, 0), 0))
            if batch:
                self._send(run_id, batch)
        if model_path is not None:
            self._log_file(run_id, model_path, "model", "student.pt")
        self._retry(lambda: self.client.set_tag(run_id, tags.STATUS, status.value))
        self._retry(lambda: self.client.set_terminated(run_id, status.mlflow_run_status))

    def log_trial_model(self, trial_id: str, model_path: str | Path) -> str:
        """The student a trial saved at ``model_path`` as an MLflow model ``student`` on its child
        run (``tracking.log_models: all``); returns the model's URI."""
        from edray.tracking.student_model import log_student_model, read_student

        run_id = self._run_for(trial_id)
        student = read_student(str(model_path))
        # Not retried: a second try would leave the first one's half-logged model behind. The last
        # epoch's metrics (val_acc, ...) become the model's, shown beside it on the Models tab.
        return log_student_model(self.uri, run_id, student, step=max(self._last_step.get(run_id, 0), 0))

    def close_lost_trials(self, trial_ids: Iterable[str]) -> list[str]:
        """Close the child runs of trials Tune does not know, still RUNNING: KILLED, ``edray.status``
        ``lost``; return their trial ids.

        Only a resumed sweep has them: a driver lost after it started a trial but before Tune
        saved (uploaded) its experiment state leaves that trial's run behind, and Tune, restored
        from the older state, never hears of it again (the search runs another trial instead).
        """
        known, lost = set(trial_ids), []
        for trial_id, run_id in list(self._runs.items()):
            if trial_id in known:
                continue
            run = self._retry(lambda: self.client.get_run(run_id))  # noqa: B023  (called at once)
            if run.info.status != "RUNNING":
                continue
            self._retry(lambda: self.client.set_tag(run_id, tags.STATUS, "lost"))  # noqa: B023
            self._retry(lambda: self.client.set_terminated(run_id, "KILLED"))  # noqa: B023
            lost.append(trial_id)
        return lost

    # ------------------------------------------------------------------ the end of the sweep

    def finish_sweep(self, *, best_config: dict, best_spec_yaml: str, results: list[dict], figures: dict[str, Path],
                     summary: dict, status: str = "FINISHED", best_model_path: str | Path | None = None) -> None:
        """Close the parent run with the best config (params ``best.*`` and ``best.yaml``), the
        results table (``results.csv``, ``results.json``), the figures (``figures/*.png``),
        the numbers of ``summary`` as metrics and the rest as ``edray.summary.*`` tags.

        A resumed sweep that finishes again keeps the first ``best.*`` params (MLflow params
        are immutable); a changed best value goes to a ``best.*`` tag instead. A server that is
        down is waited for, up to :data:`END_WAIT_S`; after that the closing records are not
        written, and one line says so.
        """
        self._require_parent()
        run_id = self.parent_run_id
        if not self._guard.answers_within(END_WAIT_S, lambda: self.client.get_experiment(self.experiment_id)):
            log.warning("MLflow: %s did not answer by the end of the sweep; its parent run %s is left without "
                        "its closing records (best config, results, figures; best.yaml is in the work "
                        "directory's sweeps/ folder)", self.uri, run_id)
            return
        self._flush()
        if self._pending or self._guard.missed:
            log.warning("MLflow: not recorded while %s did not answer: %d tracking calls; %d metric batches "
                        "still unsent", self.uri, self._guard.missed, len(self._pending))
        best = {f"best.{mlflow_key(k)}": as_text(v) for k, v in redact(best_config).items()}
        existing = self._retry(lambda: self.client.get_run(run_id)).data.params
        fresh = {k: v for k, v in best.items() if k not in existing}
        changed = {k: v for k, v in best.items() if k in existing and existing[k] != clip(v, MAX_PARAM_VALUE)}
        self._log_params(run_id, fresh)
        self._log_tags(run_id, changed)
        if best_spec_yaml:
            self._retry(lambda: self.client.log_text(run_id, redact_yaml(best_spec_yaml), "best.yaml"))
        rows = [redact(r) for r in results]
        self._retry(lambda: self.client.log_text(run_id, json.dumps(rows, indent=2, default=str), "results.json"))
        self._retry(lambda: self.client.log_text(run_id, results_csv(rows), "results.csv"))
        for name, path in figures.items():
            self._log_file(run_id, Path(path), "figures", f"{mlflow_key(name)}{Path(path).suffix or '.png'}")
        if best_model_path is not None:
            self._log_file(run_id, best_model_path, "model", "student.pt")
        finite = {k: v for k, v in numeric(summary).items() if math.isfinite(v)}
        if finite:
            self._send(run_id, metric_batch(finite, 0))
        others = {f"{tags.SUMMARY_PREFIX}{mlflow_key(k)}": as_text(v) for k, v in redact(summary).items()
                  if mlflow_key(k) not in finite and v is not None}
        self._log_tags(run_id, {**others, tags.STATUS: "finished" if status == "FINISHED" else status.lower()})
        self._retry(lambda: self.client.set_terminated(run_id, status))

    # ------------------------------------------------------------------ helpers

    def _require_parent(self) -> None:
        if not self.parent_run_id:
            raise RuntimeError("SweepTracker.start_sweep must be called first")

    def _log_params(self, run_id: str, values: dict[str, str], *, metrics: list[Metric] | None = None) -> None:
        """Params in batches of 100; ``metrics`` ride with the first batch (one request less)."""
        params = [Param(k, clip(v, MAX_PARAM_VALUE)) for k, v in values.items()]
        for i in range(0, max(len(params), 1 if metrics else 0), _BATCH):
            chunk = params[i:i + _BATCH]
            extra = metrics if i == 0 and metrics else []
            self._retry(partial(self.client.log_batch, run_id, params=chunk, metrics=extra))

    def _log_tags(self, run_id: str, values: dict[str, str]) -> None:
        run_tags = [RunTag(k, clip(v, MAX_TAG_VALUE)) for k, v in values.items()]
        for i in range(0, len(run_tags), _BATCH):
            chunk = run_tags[i:i + _BATCH]
            self._retry(partial(self.client.log_batch, run_id, tags=chunk))

    def _log_file(self, run_id: str, path: str | Path, folder: str, name: str) -> None:
        """Log a file as ``folder/name``: a local path, or a URI on the shared location (a
        student trained on another node), streamed through a temp file here."""
        location = str(path)
        if is_uri(location):
            with tempfile.TemporaryDirectory() as tmp:
                staged = Path(tmp) / name
                try:
                    staged.write_bytes(read_bytes(location))
                except (OSError, ArrowException) as err:
                    log.warning("MLflow: cannot read %s (%s); not logged to %s/%s", location, err, folder, name)
                    return
                self._retry(lambda: self.client.log_artifact(run_id, str(staged), folder))
            return
        path = Path(location)
        if not path.is_file():
            log.warning("MLflow: %s does not exist; not logged to %s/%s", path, folder, name)
            return
        if path.name == name:
            self._retry(lambda: self.client.log_artifact(run_id, str(path), folder))
            return
        with tempfile.TemporaryDirectory() as tmp:  # log_artifact keeps the file's own name
            staged = Path(tmp) / name
            try:
                staged.hardlink_to(path)
            except OSError:
                shutil.copyfile(path, staged)
            self._retry(lambda: self.client.log_artifact(run_id, str(staged), folder))

    def _send(self, run_id: str, batch: list[Metric]) -> None:
        try:
            self._retry(lambda: self.client.log_batch(run_id, metrics=batch))
        except Exception as err:
            if not is_transient(err):
                raise
            self._pending.append((run_id, batch))  # the tracker said once that the server is down

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for run_id, batch in pending:
            self._send(run_id, batch)

    def _retry(self, call: Callable[[], _T]) -> _T:
        return self._guard.call(call)


def _quiet_mlflow() -> None:
    """MLflow prints its database migrations at INFO on every new store; they are noise here."""
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)

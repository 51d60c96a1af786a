"""The Tune side of a sweep: the trainable, the Tuner (new or restored), and running it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from edray.clusters.ray_private import local_tuner, restored_search_alg
from edray.distributed.interrupt import raise_if_interrupted
from edray.distributed.node_check import NodeCheck
from edray.distributed.search_setup import make_scheduler, make_searcher, planned_epochs
from edray.distributed.space import resolve_config, sample_configs
from edray.distributed.sweep_state import SweepState
from edray.distributed.tune_restore import repair_missing_checkpoints
from edray.layout import Layout
from edray.names import METRIC
from edray.spec import Spec
from edray.storage import is_uri, ray_storage, resolve

__all__ = ["build_tuner", "fit", "table_reporter"]

_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"


def build_tuner(spec: Spec, *, num_samples: int, max_concurrent: int, resume: bool, progress: bool, tracker,
                state: SweepState, layout: Layout, log: Callable[[str], None], progress_lines: bool = False,
                node_check: NodeCheck | None = None):
    """A new Tuner, or the stopped one restored (``--resume``): finished trials are not re-run.

    ``progress`` shows Tune's live table (a terminal); ``progress_lines`` prints plain lines
    instead (``ray job logs``: :mod:`edray.distributed.progress`). ``node_check`` (a cluster)
    runs on each node where a trial first lands."""
    from ray import tune

    trainable = _trainable(spec, state.run_name, layout, node_check)
    lines = None
    if progress_lines:
        from edray.distributed.progress import ProgressLines

        _, epochs = planned_epochs(spec, num_samples)
        lines = ProgressLines(log, planned_epochs=epochs, total_epochs=spec.optim.epochs)
    run_config = _run_config(spec, layout, progress, tracker, state.run_name, lines)
    where = ray_storage(state.experiment_path)
    path, fs = where["storage_path"], where.get("storage_filesystem")
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        for ref in repair_missing_checkpoints(*resolve(state.experiment_path)):
            log(f"resume: {ref} was deleted before the sweep's state was saved; the trial resumes from the "
                "checkpoint after it")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
        search_alg = restored_search_alg(tuner)
        if search_alg is not None:
            from edray.distributed.searcher_restore import ReconcileSearcher

            run_config.callbacks = [*(run_config.callbacks or []), ReconcileSearcher(search_alg)]
        _renew_run_config(tuner, run_config)
        return tuner
    # Only a new sweep builds a searcher: Tune restores the stopped one, and building one
    # has effects of its own (with search.storage, Optuna enqueues points_to_evaluate in the
    # stored study at once: a resumed sweep left a WAITING trial behind).
    from ray.tune.search import SearchGenerator

    _, limited = make_searcher(spec, max_concurrent, num_samples)
    trials, _ = planned_epochs(spec, num_samples)  # halving: one Tune trial per config per rung it reaches
    # Wrapped here as Tune would wrap it, so a restored Tuner still holds the generator (searcher_restore.py).
    tune_config = tune.TuneConfig(search_alg=SearchGenerator(limited), scheduler=make_scheduler(spec),
                                  num_samples=trials, reuse_actors=True)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _renew_run_config(tuner, fresh) -> None:
    """This driver's callbacks and output on a restored Tuner, not the stopped driver's.

    ``Tuner.restore`` takes no ``run_config``: it unpickles the one saved at the sweep's start
    (``tuner.pkl``), callbacks included. The restored sweep then tracked through the old
    driver's tracker (its tracking URI, though a new head may serve MLflow elsewhere), kept
    the old driver's choice of live table or plain lines, and its progress lines timed from the
    old driver's clock. Ray offers no public setter (ray-project/ray#41364 names
    ``_local_tuner.get_run_config()`` as the way). The experiment's own fields (name, storage)
    stay as restored.
    """
    local = local_tuner(tuner)
    if local is None:  # Ray Client (ray://): the Tuner runs remotely and keeps what it restored
        return
    restored = local.get_run_config()
    for name in ("callbacks", "progress_reporter", "verbose", "failure_config", "sync_config"):
        setattr(restored, name, getattr(fresh, name))


def fit(tuner, tracker, *, table: bool = False):
    """Run the trials; a sweep stopped by an error or Ctrl-C leaves its parent run KILLED, not RUNNING.

    ``table``: the live table is edray's ``CLIReporter`` (val_acc and the searched values).
    Tune's default output (``RAY_AIR_NEW_OUTPUT``, on since Ray 2.5) ignores a given reporter
    and shows the first four result keys and no searched values (its columns come from a
    ``param_space``; a searcher's own space has none), so it is turned off while Tune runs."""
    try:
        with _legacy_output(table):
            grid = tuner.fit()
        raise_if_interrupted()  # Ctrl-C that Ray or Tune swallowed: nothing is written from a part of a sweep
        return grid
    except BaseException:
        # The parent run must not stay RUNNING forever; --resume reopens it.
        tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="KILLED")
        raise


@contextlib.contextmanager
def _legacy_output(on: bool) -> Iterator[None]:
    before = os.environ.get(_NEW_OUTPUT)
    if on:
        os.environ[_NEW_OUTPUT] = "0"  # read by tune.run when fit() starts
    try:
        yield
    finally:
        if on:
            if before is None:
                os.environ.pop(_NEW_OUTPUT, None)
            else:
                os.environ[_NEW_OUTPUT] = before


def _trainable(spec: Spec, run_name: str, layout: Layout, node_check: NodeCheck | None):
    from ray import tune

    from edray.distributed.resources import trial_resources
    from edray.distributed.trial import TrialContext, run_trial  # torch: not needed by --dry-run

    ctx = TrialContext(base_spec=spec.model_dump(mode="json"), layout=layout,
                       models_dir=layout.models(spec.name, run_name), node_check=node_check)
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(spec))


def _run_config(spec: Spec, layout: Layout, progress: bool, tracker, run_name: str, lines=None):
    from ray import tune

    from edray.tracking import TrackingCallback

    callback = TrackingCallback(
        tracker, resolve=lambda cfg: resolve_config(spec, cfg).model_dump(mode="json"), total_epochs=spec.optim.epochs,
        log_models="all" if spec.tracking.log_models == "all" else "none",
    )
    return tune.RunConfig(
        name=run_name,
        **ray_storage(layout.ray_results),
        # On object storage, upload the experiment state every ~10 s (not Ray's 5 min), so a
        # killed driver resumes (--resume) from a recent view of its trials.
        sync_config=tune.SyncConfig(sync_period=10) if is_uri(layout.ray_results) else None,
        callbacks=[callback] if lines is None else [callback, lines],
        failure_config=tune.FailureConfig(max_failures=spec.scaling.max_failures),
        # Tune saves its whole experiment state (every trial, and the searcher's pickled Optuna study:
        # both grow with the trials) whenever a trial has registered num_to_keep checkpoints since the
        # last save. With 1 that was every epoch of every trial: the saves cost the driver 73 ms a trial
        # at 40 trials and 202 ms at 120 (O(trials^2) in all). With 2 it is every second epoch, for one
        # more checkpoint kept per trial; a state naming a deleted checkpoint is repaired on --resume.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1 if progress else 0,
        progress_reporter=table_reporter(spec) if progress else None,
    )


def table_reporter(spec: Spec):
    """Tune's live table in a terminal: a row per trial with its grade, epoch, val_acc and
    seen-class acc, and a column per searched value (headed by the path's last part), best first."""
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"grade": "grade", "epoch": "epoch", METRIC: METRIC, "val_acc_seen": "seen acc"},
        parameter_columns=_parameter_columns(spec),
        metric=METRIC,
        mode="max",
        max_report_frequency=10,
        sort_by_metric=True,
    )


def _parameter_columns(spec: Spec) -> dict[str, str]:
    """The names a trial's config has (``ed.switch_epochs[0]``, ``optim.lr``) -> short headers
    (``switch_epochs[0]``, ``lr``); the whole path where two would read alike."""
    names = list(sample_configs(spec, 1, seed=0)[0])
    short = {name: name.rsplit(".", 1)[-1] for name in names}
    clash = {h for h in short.values() if list(short.values()).count(h) > 1}
    return {name: name if header in clash else header for name, header in short.items()}

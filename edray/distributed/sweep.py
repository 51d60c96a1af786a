"""``edray sweep``: teachers, logit stores, then Ray Tune + Optuna over ED recipes.

The driver (this module) runs on the head node. It checks everything it can before a
GPU is touched (spec, search space, tracking server), prepares missing teachers and logit
stores (:mod:`edray.preparation`), then hands the search to Ray Tune. Every trial is a
child run of the sweep's MLflow parent run. The search ranks by validation accuracy; the
test split is used once, by the final evaluation of the best config over several seeds.

The steps live beside it, one idea each: joining Ray (:mod:`~edray.distributed.connect`),
the searcher and scheduler (:mod:`~edray.distributed.search_setup`), the resume state
(:mod:`~edray.distributed.sweep_state`), the Tuner (:mod:`~edray.distributed.tune_run`)
and the summary and closing records (:mod:`~edray.distributed.results`).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edray.distributed.connect import join_ray
from edray.distributed.node_check import NodeCheck
from edray.distributed.results import (
    SweepResult,
    best_spec_dict,
    collect,
    final_eval,
    finish_tracking,
    register_best_student,
    write_best,
)
from edray.distributed.search_setup import (
    halving_for,
    make_scheduler,
    make_searcher,
    plan_line,
    planned_epochs,
)
from edray.distributed.space import compile_space
from edray.distributed.sweep_state import SweepState, load_state, start_tracking, state_path
from edray.distributed.tune_run import build_tuner, fit
from edray.layout import Layout
from edray.search_space import search_section
from edray.spec import Spec

__all__ = [
    "SweepOptions", "SweepResult", "SweepTimings", "best_spec_dict", "make_scheduler", "make_searcher", "plan_line",
    "planned_epochs", "run_sweep", "state_path",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SweepOptions:
    num_samples: int | None = None  # default: spec.search.num_samples
    max_concurrent: int | None = None
    address: str | None = None  # join a running Ray cluster ("auto" or host:port); None starts a local one
    resume: bool = False
    progress: bool = True
    final_eval: bool = True
    wait_for_nodes_s: float = 1800.0  # on a cluster: how long a step waits for the autoscaler's first node
    progress_lines: bool = False  # plain progress lines (no terminal: ray job logs), edray.distributed.progress


@dataclass
class SweepTimings:
    """Wall seconds of the driver's steps, as the summary shows them: ``placement.timings``
    (every sweep) and ``placement.steps`` (the steps a sweep had: probe and teachers/stores
    on a cluster, the final evaluation)."""

    prepare_s: float = 0.0
    tune_s: float = 0.0
    finish_s: float = 0.0
    probe_s: float | None = None
    teachers_s: float | None = None
    stores_s: float | None = None
    final_eval_s: float | None = None

    def placement(self) -> dict[str, dict[str, float]]:
        timings = {"prepare_s": self.prepare_s, "tune_s": self.tune_s, "finish_s": self.finish_s}
        steps = {name: getattr(self, name) for name in ("probe_s", "teachers_s", "stores_s", "final_eval_s")}
        out = {"timings": {k: round(v, 2) for k, v in timings.items()}}
        steps = {k: round(v, 2) for k, v in steps.items() if v is not None}
        return {**out, "steps": steps} if steps else out


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def lap(self) -> float:
        now, start = time.monotonic(), self.start
        self.start = now
        return now - start


def run_sweep(spec: Spec, layout: Layout, options: SweepOptions, *, log: Callable[[str], None] = print) -> SweepResult:
    """Run the whole sweep and return its summary (see ``edray sweep --json``).

    On a cluster (``layout.on_cluster``: ``EDRAY_SHARED`` set), teachers, stores and the
    final evaluation run as Ray work on worker nodes (:class:`~edray.distributed.cluster.RayRunner`)
    and everything they share goes to the shared location; the driver plans, waits and
    records. Otherwise the driver prepares teachers and stores itself
    (:class:`~edray.preparation.LocalRunner`), as on one machine.
    """
    tic = time.monotonic()
    _check(spec, layout)
    state = load_state(spec, layout, options.resume)
    tracker = _tracker(spec, layout)
    if state is not None:  # a state found on the shared location, but another tracking store: say so now
        tracker.require_sweep_run(state.parent_run_id)
    if options.address or layout.on_cluster:
        join_ray(options.address)
        from edray.distributed.cluster import require_shared

        require_shared(layout)
        _await_nodes(spec, options, "the sweep's work (teachers, stores, trials)", log)
    # The cost, once nothing can refuse the sweep any more (a refusal is the only line):
    # after joining Ray, so an --address that does not answer is refused in one line too.
    num_samples = options.num_samples or search_section(spec).num_samples
    log(plan_line(spec, num_samples))
    node_check = NodeCheck.write(layout, spec.dataset.root) if layout.on_cluster else None
    try:
        return _run(spec, layout, options, log, tic=tic, state=state, tracker=tracker, num_samples=num_samples,
                    node_check=node_check)
    finally:
        if node_check is not None:
            node_check.discard()  # no work is left to land on a node


def _run(spec: Spec, layout: Layout, options: SweepOptions, log: Callable[[str], None], *, tic: float,
         state: SweepState | None, tracker, num_samples: int, node_check: NodeCheck | None) -> SweepResult:
    """The sweep once it is accepted: preparation, the trials, the final records."""
    timings, clock, placement = SweepTimings(), _Clock(), {}
    if node_check is not None:
        placement = _prepare_on_cluster(spec, layout, timings, log, node_check)
        timings.prepare_s = clock.lap()
        state = start_tracking(spec, tracker, state, layout)
    else:
        from edray.preparation import LocalRunner

        data = _load_data(spec, layout)

        def prepare() -> SweepState:
            _prepare_teachers(spec, data, layout, LocalRunner(progress=log))
            timings.prepare_s = clock.lap()
            return start_tracking(spec, tracker, state, layout)

        if all(part.in_memory for part in (data.train, data.val, data.test)):
            # A local Ray takes seconds to start, mostly waiting on its processes: teachers and
            # stores are checked (or built, on threads) and the parent run opened meanwhile.
            state = _alongside(prepare, lambda: join_ray(options.address))
        else:  # files decoded by DataLoader processes: fork them before Ray's threads exist
            state = prepare()
            join_ray(options.address)
    clock.lap()
    tuner = build_tuner(spec, num_samples=num_samples, resume=options.resume, progress=options.progress,
                        max_concurrent=options.max_concurrent or search_section(spec).max_concurrent, tracker=tracker,
                        state=state, layout=layout, log=log, progress_lines=options.progress_lines,
                        node_check=node_check)
    # The driver only waits while trials train: it imports the end-of-sweep figures' stack meanwhile.
    threading.Thread(target=_preload_figures, name="edray-preload-figures", daemon=True).start()
    grid = fit(tuner, tracker, table=options.progress)
    timings.tune_s = clock.lap()
    result = collect(grid, tracker, state.parent_run_id, tic)
    result.placement.update(placement)
    if node_check is not None and result.errored and (failed := node_check.failure()) is not None:
        # Trials failed on a node that failed its check: that node's line, not a sweep of errored trials.
        tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="FAILED")
        raise failed
    if options.resume:
        _close_lost_trials(tracker, grid, log)
    _finish(spec, options, tracker, grid, result, timings, log, layout, node_check)
    timings.finish_s = clock.lap()
    if node_check is not None:
        result.placement["nodes"] = node_check.checked()  # also those that joined after the first check
    result.placement.update(timings.placement())
    result.wall_s = time.monotonic() - tic
    return result


def _check(spec: Spec, layout: Layout) -> None:
    """Everything that can be wrong with the spec, before any teacher trains."""
    compile_space(spec)  # no search section, or a space with no valid trial: before anything starts
    halving_for(spec, search_section(spec).num_samples)  # budgets too short for the grades
    from edray.pipeline import local_dataset
    from edray.preflight import preflight

    # Unknown names, missing data, grades that do not fit: before any teacher trains. A
    # dataset given by shared URI is read from the driver's own cached copy.
    local = spec.model_copy(update={"dataset": local_dataset(spec.dataset, layout)})
    preflight(local, search=False)  # the space was just compiled


def _tracker(spec: Spec, layout: Layout):
    from edray.tracking import SweepTracker, check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(spec, layout.workdir)
    check_tracking(uri)
    return SweepTracker(uri, spec.tracking.experiment or spec.name, artifact_root=layout.mlflow_artifacts)


def _load_data(spec: Spec, layout: Layout):
    """The dataset, file datasets decoded once into their image cache (and a cache found
    from an earlier run checked) before any trial reads it."""
    from edray.pipeline import load_run_data

    return load_run_data(spec, layout, verify_cache=True)


def _prepare_teachers(spec: Spec, data, layout: Layout, runner):
    """Train teachers that have a recipe and no checkpoint; build missing logit stores (or
    hash given ones once), with ``runner`` (see :mod:`edray.preparation`)."""
    from edray.preparation import Prepared, plan_preparation, prepare

    if spec.method == "ce" or spec.search is None:
        return Prepared()
    return prepare(plan_preparation(spec, data, layout), spec, data, layout, runner)


def _prepare_on_cluster(spec: Spec, layout: Layout, timings: SweepTimings, log: Callable[[str], None],
                        node_check: NodeCheck) -> dict[str, Any]:
    """The nodes alive now checked, then missing teachers and stores built by worker nodes
    (each node that joins since checked by the first work on it); returns who did what."""
    from edray.data import load_data
    from edray.distributed import cluster
    from edray.pipeline import local_dataset

    clock = _Clock()
    nodes = cluster.probe_nodes(node_check, layout)
    timings.probe_s = clock.lap()
    data = load_data(local_dataset(spec.dataset, layout))  # sizes and fingerprints: what the plan needs
    prepared = _prepare_teachers(spec, data, layout, cluster.RayRunner.for_cluster(log, node_check))
    timings.teachers_s, timings.stores_s = prepared.teachers_s, prepared.stores_s
    return {"nodes": nodes, "teachers": prepared.teachers, "stores": prepared.shards}


def _finish(spec: Spec, options: SweepOptions, tracker, grid, result: SweepResult, timings: SweepTimings,
            log: Callable[[str], None], layout: Layout, node_check: NodeCheck | None) -> None:
    """best.yaml, the final evaluation on the test split, and the parent run's closing records."""
    if result.best_config is None:
        tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="FAILED")
        return
    best, best_text = write_best(spec, layout, result)
    seeds = search_section(spec).final_eval.seeds
    if options.final_eval and seeds > 0:
        if options.address or layout.on_cluster:
            _await_nodes(spec, options, "the final evaluation", log)  # idle nodes may have scaled down meanwhile
        clock = _Clock()
        runs = final_eval(spec, best, seeds, layout, log, node_check)
        timings.final_eval_s = clock.lap()
        result.placement["final_eval"] = [node for _, node in runs]
        result.final_test_accs = accs = [acc for acc, _ in runs]
        result.final_test_acc_mean = statistics.fmean(accs)
        result.final_test_acc_std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
        if result.best_model_path and spec.tracking.log_models != "none":
            register_best_student(spec, layout, tracker, result, log, node_check)
    finish_tracking(spec, tracker, grid, result, best_text, layout.sweep_dir(spec.name))


def _close_lost_trials(tracker, grid, log: Callable[[str], None]) -> None:
    """The MLflow runs of trials the stopped driver started after Tune last saved its state."""
    from edray.distributed.trial_rows import trial_rows

    for trial_id in tracker.close_lost_trials(row["trial_id"] for row in trial_rows(grid)):
        log(f"resume: trial {trial_id} was started by the stopped driver after Tune last saved its state, so "
            "Tune ran another in its place; its MLflow run is closed as KILLED (edray.status lost)")


def _await_nodes(spec: Spec, options: SweepOptions, what: str, log: Callable[[str], None]) -> None:
    """Before a step asks Ray for work: a node that can run one unit of it, started by the
    autoscaler if need be (:mod:`edray.clusters.capacity`)."""
    from edray.clusters.capacity import step_request, wait_for_nodes

    scaling = spec.scaling
    wait_for_nodes(step_request(scaling.resources_per_worker, scaling.use_gpu), what,
                   wait_s=options.wait_for_nodes_s, log=log)


def _alongside(background: Callable[[], T], foreground: Callable[[], None]) -> T:
    """Run ``background()`` on a thread while ``foreground()`` runs on this one (``ray.init``
    must: it sets the SIGTERM handler); return its result, or raise its error, once both end."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = background()
        except BaseException as err:  # noqa: BLE001  (raised again on this thread)
            outcome["error"] = err

    thread = threading.Thread(target=run, name="edray-prepare", daemon=True)
    thread.start()
    foreground()  # if this raises, the daemon thread is left to end with the process
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _preload_figures() -> None:
    try:
        from edray.tracking.figures import preload

        preload()
    except Exception:  # noqa: BLE001  (the figures themselves report any real problem)
        pass

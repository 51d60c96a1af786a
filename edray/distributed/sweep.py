"""``edray sweep``: teachers, logit stores, then Ray Tune + Optuna over ED recipes.

The driver (this module) runs on the head node. It checks everything it can before a
GPU is touched (spec, search space, tracking server), trains missing teachers, builds
missing logit stores, then hands the search to Ray Tune. Every trial is a child run of
the sweep's MLflow parent run. The search ranks by validation accuracy; the test split
is used once, by the final evaluation of the best config over several seeds.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edray.atomic import write_text
from edray.distributed.space import compile_space, default_point, resolve_config
from edray.distributed.tune_restore import repair_missing_checkpoints
from edray.errors import RUNTIME_ERROR, EdrayError
from edray.layout import Layout
from edray.logits.fs import is_uri, ray_storage, resolve
from edray.spec import Spec
from edray.trial_status import TrialStatus, trial_status

__all__ = [
    "SweepOptions", "SweepResult", "best_spec_dict", "make_scheduler", "make_searcher", "plan_line", "planned_epochs",
    "run_sweep",
]

METRIC = "val_acc"
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
    epochs_trained: int = 0
    # Which node did what: teachers (index -> node), stores (name -> node per shard),
    # trials (trial id -> node of its last result), final_eval (node per seed); and the
    # wall time of each step (steps, timings).
    placement: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["wall_s"] = round(self.wall_s, 3)
        return out


def _sweep_dir(spec: Spec, workdir: Path) -> Path:
    return workdir / "sweeps" / spec.name


def best_spec_dict(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The best trial as a spec ``edray train`` accepts: searched values written in, no search."""
    resolved = resolve_config(spec, config).model_dump(mode="json")
    resolved["search"] = None
    return {k: v for k, v in resolved.items() if v is not None}


_JOIN_TIMEOUT_S = 20


def _init_ray(address: str | None) -> None:
    """Start a private local Ray (no ``address``), or join the cluster at ``address``.

    Without an address this never joins a running cluster: ``ray.init()`` would read
    ``/tmp/ray/ray_current_cluster``, which a killed head leaves behind, and hang on it.

    Raises:
        EdrayError: ``--address`` names nothing that answers (within ~30 s, in one line).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DASHBOARD_HOST", "127.0.0.1")
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if not address:
        # The dashboard stays on (loopback only): without it, CPUs of trials stopped
        # early are not freed on a local cluster and the next trial hangs.
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
        return
    target = _answering(address)
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise EdrayError("--address", f"cannot join the Ray cluster at {address} ({reason})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None


_FIX_ADDRESS = ("start the cluster (ray up / ray start --head), check the address (`ray status` on the head), "
                "and for token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def _answering(address: str) -> str:
    """``address`` resolved ("auto": ``$RAY_ADDRESS``, else the last ``ray start`` here) and
    checked to accept a connection within a few seconds: ``ray.init`` itself retries a dead
    address for minutes."""
    import socket

    from edray.clusters.ray_private import resolve

    try:
        resolved = resolve("canonicalize_bootstrap_address")(address) if address != "local" else None
    except Exception as err:  # auto with nothing running, or an address that does not parse
        raise EdrayError("--address", f"no Ray cluster found for {address!r} ({err})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None
    if resolved is None or address.startswith("ray://"):
        return address
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_JOIN_TIMEOUT_S):
            pass
    except (OSError, ValueError) as err:
        shown = resolved if address == "auto" else address
        raise EdrayError("--address", f"no Ray cluster answers at {shown} ({err.strerror or err})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None
    return resolved


def make_scheduler(spec: Spec):
    """The sweep's trial scheduler: grade-aware ASHA, or FIFO (no early stopping, or successive halving,
    which stops configs between rungs in the searcher)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    es = spec.search.early_stopping
    if es.kind in ("none", "halving"):  # halving stops configs between rungs, in the searcher
        return FIFOScheduler()
    # Rungs count epochs in the final grade (see trial._extra_metrics): trials are only
    # compared once each faces all classes, with equal time spent doing so.
    return ASHAScheduler(
        time_attr="final_grade_epochs",
        metric=METRIC,
        mode="max",
        max_t=spec.optim.epochs,
        grace_period=es.grace_epochs,
        reduction_factor=es.reduction_factor,
    )


def _halving(spec: Spec, num_samples: int):
    """The rungs of successive halving for this sweep, or None when it stops trials otherwise."""
    from edray.distributed.schedulers import SuccessiveHalving, rung_epochs

    es = spec.search.early_stopping
    if es.kind != "halving":
        return None
    grades = spec.ed.grades if spec.method == "ed" else 1
    return SuccessiveHalving(rung_epochs(spec), num_samples, es.reduction_factor, grades=grades)


def planned_epochs(spec: Spec, num_samples: int) -> tuple[int, int]:
    """(Tune trials, epochs) the sweep will run: exact for halving and none, an upper bound for asha."""
    halving = _halving(spec, num_samples)
    if halving is None:
        return num_samples, num_samples * spec.optim.epochs
    return halving.plan.trials, halving.plan.epochs


def plan_line(spec: Spec, num_samples: int) -> str:
    """What the sweep will cost, said before it starts."""
    trials, epochs = planned_epochs(spec, num_samples)
    full = num_samples * spec.optim.epochs
    es = spec.search.early_stopping
    if es.kind == "halving":
        halving = _halving(spec, num_samples)
        rungs = ", ".join(f"{n} at {e}" for n, e in zip(halving.plan.configs, halving.plan.rungs))
        return (f"{spec.method}: {num_samples} configs by successive halving (configs at epochs: {rungs}): "
                f"{trials} trials, {epochs} epochs ({full / epochs:.1f}x fewer than {full})")
    if es.kind == "asha":
        return f"{spec.method}: {num_samples} trials of {spec.optim.epochs} epochs, at most {full} epochs (asha)"
    return f"{spec.method}: {num_samples} trials of {spec.optim.epochs} epochs, {full} epochs"


def make_searcher(spec: Spec, max_concurrent: int, num_samples: int | None = None):
    """The sweep's Optuna searcher (it tells early-stopped trials as pruned; with successive halving, it
    also runs the rungs) and the same searcher behind a limit of ``max_concurrent`` trials at once, as
    Tune is given it. ``num_samples``: configs to start (default: ``search.num_samples``)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from edray.distributed.halving_search import HalvingOptunaSearch
    from edray.distributed.searcher import GradeAwareOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = spec.search
    points = search.points_to_evaluate
    if points is None:
        point = default_point(spec)
        points = [point] if point else None
    sampler = (
        optuna.samplers.RandomSampler(seed=search.seed)
        if search.sampler == "random"
        else optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(4, search.num_samples))
    )
    storage = optuna.storages.RDBStorage(search.storage) if search.storage else None
    kwargs = dict(space=compile_space(spec), metric=METRIC, mode="max", points_to_evaluate=points, sampler=sampler,
                  storage=storage, study_name=spec.name if storage else None)
    halving = _halving(spec, num_samples or search.num_samples)
    searcher = GradeAwareOptunaSearch(**kwargs) if halving is None else HalvingOptunaSearch(halving=halving, **kwargs)
    return searcher, ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _trial_resources(spec: Spec) -> dict[str, float]:
    from edray.distributed.trial import uses_torch_trainer

    scaling = spec.scaling
    if uses_torch_trainer(spec):
        # The trial driver only waits on its TorchTrainer: it must hold no CPU the
        # workers need (two trials on 2 CPUs deadlock otherwise).
        return {"cpu": 0, "memory": 1}
    res = {k.lower(): v for k, v in scaling.resources_per_worker.items()}
    if scaling.use_gpu:
        res.setdefault("gpu", 1)
    return res


def _state_path(spec: Spec, workdir: Path) -> Path:
    return _sweep_dir(spec, workdir) / "sweep.json"


def _tracker(spec: Spec, workdir: Path):
    from edray.tracking import SweepTracker, check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(spec, workdir)
    check_tracking(uri)
    return SweepTracker(uri, spec.tracking.experiment or spec.name, artifact_root=workdir / "mlflow-artifacts")


def _load_data(spec: Spec, workdir: Path):
    """The dataset, file datasets decoded once into their image cache (and a cache found
    from an earlier run checked) before any trial reads it."""
    from edray.data import load_data
    from edray.workdir import images_dir

    return load_data(spec.dataset, image_cache=images_dir(workdir), verify_cache=True)


def _prepare_teachers(spec: Spec, data, workdir: Path, log: Callable[[str], None]) -> None:
    """Train teachers that have a recipe and no checkpoint; build missing logit stores."""
    from edray.pipeline import ensure_teachers

    if spec.method == "ce" or spec.search is None:
        return
    ensure_teachers(spec, data, workdir, progress=log)
    if spec.teachers.logits == "precomputed":
        from edray.distill.precompute import precompute_stores
        from edray.distill.stored_teachers import open_teacher_stores

        if spec.teachers.store_uri is None:
            precompute_stores(spec, data, workdir, progress=log)  # builds, or hashes what is there
        else:  # read-only stores built elsewhere: check every byte once, before any trial reads them
            open_teacher_stores(spec, data, workdir, verify=True)


def run_sweep(spec: Spec, workdir: Path, options: SweepOptions, *, log: Callable[[str], None] = print) -> SweepResult:
    """Run the whole sweep and return its summary (see ``edray sweep --json``).

    With ``EDRAY_SHARED`` set (a cluster), teachers, stores and the final evaluation run
    as Ray work on worker nodes and everything they share goes to the shared location
    (see :mod:`edray.layout` and :mod:`edray.distributed.cluster`); the driver plans,
    waits and records. Without it, the driver builds teachers and stores itself, as on
    one machine.
    """
    tic = time.monotonic()
    layout = Layout.from_env(workdir, store_uri=spec.teachers.store_uri)
    _check(spec, layout)
    state = _load_state(spec, workdir, options.resume)
    tracker = _tracker(spec, workdir)
    if options.address or layout.on_cluster:
        _init_ray(options.address)
        from edray.distributed.cluster import require_shared

        require_shared(layout)
        _await_nodes(spec, options, "the sweep's work (teachers, stores, trials)", log)
    # The cost, once nothing can refuse the sweep any more (a refusal is the only line):
    # after joining Ray, so an --address that does not answer is refused in one line too.
    log(plan_line(spec, options.num_samples or spec.search.num_samples))
    steps = time.monotonic()
    if layout.on_cluster:
        placement = _prepare_on_cluster(spec, layout, log)
        timings = {"prepare_s": round(time.monotonic() - steps, 2)}
        state = _start_tracking(spec, workdir, tracker, state, layout)
    else:
        placement, timings = {}, {}
        data = _load_data(spec, workdir)

        def prepare() -> dict[str, Any]:
            _prepare_teachers(spec, data, workdir, log)
            timings["prepare_s"] = round(time.monotonic() - steps, 2)
            return _start_tracking(spec, workdir, tracker, state, layout)

        if all(part.in_memory for part in (data.train, data.val, data.test)):
            # A local Ray takes seconds to start, mostly waiting on its processes: teachers and
            # stores are checked (or built, on threads) and the parent run opened meanwhile.
            state = _alongside(prepare, lambda: _init_ray(options.address))
        else:  # files decoded by DataLoader processes: fork them before Ray's threads exist
            state = prepare()
            _init_ray(options.address)
    steps = time.monotonic()
    tuner = _build_tuner(spec, workdir, options, tracker, state, layout, log)
    # The driver only waits while trials train: it imports the end-of-sweep figures' stack meanwhile.
    threading.Thread(target=_preload_figures, name="edray-preload-figures", daemon=True).start()
    grid = _fit(tuner, tracker)
    timings["tune_s"] = round(time.monotonic() - steps, 2)
    result = _collect(spec, grid, tracker, state["parent_run_id"], tic)
    result.placement.update(placement)
    steps = time.monotonic()
    _finish(spec, workdir, options, tracker, grid, result, log, layout)
    timings["finish_s"] = round(time.monotonic() - steps, 2)
    result.placement["timings"] = timings
    result.wall_s = time.monotonic() - tic
    return result


def _await_nodes(spec: Spec, options: SweepOptions, what: str, log: Callable[[str], None]) -> None:
    """Before a step asks Ray for work: a node that can run one unit of it, started by the
    autoscaler if need be (issue 18; :mod:`edray.clusters.capacity`)."""
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


def _check(spec: Spec, layout: Layout) -> None:
    """Everything that can be wrong with the spec, before any teacher trains."""
    compile_space(spec)  # no search section, or a space with no valid trial: before anything starts
    _halving(spec, spec.search.num_samples)  # budgets too short for the grades
    from edray.pipeline import local_dataset
    from edray.preflight import preflight

    # Unknown names, missing data, grades that do not fit: before any teacher trains. A
    # dataset given by shared URI is read from the driver's own cached copy.
    local = spec.model_copy(update={"dataset": local_dataset(spec.dataset, layout)})
    preflight(local, search=False)  # the space was just compiled


def _prepare_on_cluster(spec: Spec, layout: Layout, log: Callable[[str], None]) -> dict[str, Any]:
    """Nodes checked, then missing teachers and stores built by worker nodes; returns who did what."""
    from edray.data import load_data
    from edray.distributed import cluster
    from edray.pipeline import local_dataset

    tic = time.monotonic()
    placement: dict[str, Any] = {"nodes": cluster.probe_nodes(spec, layout), "steps": {}}
    placement["steps"]["probe_s"] = round(time.monotonic() - tic, 2)
    if spec.method == "ce" or spec.search is None:
        return placement
    data = load_data(local_dataset(spec.dataset, layout))  # sizes and fingerprints: what the plan needs
    tic = time.monotonic()
    placement["teachers"] = cluster.train_teachers(spec, layout, data, log)
    placement["steps"]["teachers_s"] = round(time.monotonic() - tic, 2)
    if spec.teachers.logits == "precomputed" and spec.teachers.store_uri is None:
        tic = time.monotonic()
        placement["stores"] = cluster.build_stores(spec, layout, data, log)
        placement["steps"]["stores_s"] = round(time.monotonic() - tic, 2)
    return placement


def _load_state(spec: Spec, workdir: Path, resume: bool) -> dict[str, Any]:
    """The state of the sweep to resume (its run name, parent run, Tune experiment), or {}."""
    if not resume:
        return {}
    state_path = _state_path(spec, workdir)
    if not state_path.is_file():
        raise EdrayError("--resume", f"no sweep to resume at {state_path}", "start it without --resume")
    return json.loads(state_path.read_text())


def _start_tracking(spec: Spec, workdir: Path, tracker, state: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """Open (or reopen) the MLflow parent run and record the sweep's state for ``--resume``."""
    run_name = state.get("run_name") or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent_id = tracker.start_sweep(
        run_name=run_name, spec_dict=spec.model_dump(mode="json"), resume_run_id=state.get("parent_run_id")
    )
    _sweep_dir(spec, workdir).mkdir(parents=True, exist_ok=True)
    storage = layout.ray_results
    state = {"run_name": run_name, "parent_run_id": parent_id, "experiment_path": f"{storage.rstrip('/')}/{run_name}"}
    _write_json(_state_path(spec, workdir), state)
    return state


def _build_tuner(spec: Spec, workdir: Path, options: SweepOptions, tracker, state: dict[str, Any], layout: Layout,
                 log: Callable[[str], None]):
    """A new Tuner, or the stopped one restored (``--resume``): finished trials are not re-run."""
    from ray import tune

    run_name = state["run_name"]
    trainable = _trainable(spec, workdir, run_name, layout)
    num_samples = options.num_samples or spec.search.num_samples
    _, limited = make_searcher(spec, options.max_concurrent or spec.search.max_concurrent, num_samples)
    run_config = _run_config(spec, layout, options, tracker, run_name, log)
    where = ray_storage(state["experiment_path"])
    path, fs = where["storage_path"], where.get("storage_filesystem")
    if options.resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        for ref in repair_missing_checkpoints(*resolve(state["experiment_path"])):
            log(f"resume: {ref} was deleted before the sweep's state was saved; the trial resumes from the "
                "checkpoint after it")
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    trials, _ = planned_epochs(spec, num_samples)  # halving: one Tune trial per config per rung it reaches
    tune_config = tune.TuneConfig(search_alg=limited, scheduler=make_scheduler(spec), num_samples=trials,
                                  reuse_actors=True)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _trainable(spec: Spec, workdir: Path, run_name: str, layout: Layout):
    from ray import tune

    from edray.distributed.trial import TrialContext, run_trial  # torch: not needed by --dry-run

    ctx = TrialContext(
        base_spec=spec.model_dump(mode="json"), workdir=str(workdir), models_dir=layout.models(spec.name, run_name),
        train_storage=layout.ray_train, layout=layout if layout.on_cluster else None,
    )
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), _trial_resources(spec))


def _run_config(spec: Spec, layout: Layout, options: SweepOptions, tracker, run_name: str,
                log: Callable[[str], None]):
    from ray import tune

    from edray.tracking import TrackingCallback

    callbacks = [TrackingCallback(
        tracker, resolve=lambda cfg: resolve_config(spec, cfg).model_dump(mode="json"), total_epochs=spec.optim.epochs,
        log_models="all" if spec.tracking.log_models == "all" else "none",
    )]
    if options.progress_lines:
        from edray.distributed.progress import ProgressLines

        _, epochs = planned_epochs(spec, options.num_samples or spec.search.num_samples)
        callbacks.append(ProgressLines(log, planned_epochs=epochs, total_epochs=spec.optim.epochs))
    return tune.RunConfig(
        name=run_name,
        **ray_storage(layout.ray_results),
        # On object storage, upload the experiment state every ~10 s (not Ray's 5 min), so a
        # killed driver resumes (--resume) from a recent view of its trials.
        sync_config=tune.SyncConfig(sync_period=10) if is_uri(layout.ray_results) else None,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.scaling.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1 if options.progress else 0,
        progress_reporter=_reporter() if options.progress else None,
    )


def _fit(tuner, tracker):
    try:
        return tuner.fit()
    except BaseException:
        # The parent run must not stay RUNNING forever; --resume reopens it.
        tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="KILLED")
        raise


def _finish(spec: Spec, workdir: Path, options: SweepOptions, tracker, grid, result: SweepResult,
            log: Callable[[str], None], layout: Layout) -> None:
    """best.yaml, the final evaluation on the test split, and the parent run's closing records."""
    if result.best_config is None:
        tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="FAILED")
        return
    best, best_text = _write_best(spec, workdir, result)
    if options.final_eval and spec.search.final_eval.seeds > 0:
        if options.address or layout.on_cluster:
            _await_nodes(spec, options, "the final evaluation", log)  # idle nodes may have scaled down meanwhile
        accs = _final_eval(spec, best, spec.search.final_eval.seeds, layout, result, log)
        result.final_test_accs = accs
        result.final_test_acc_mean = statistics.fmean(accs)
        result.final_test_acc_std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    _finish_tracking(spec, tracker, grid, result, best_text, _sweep_dir(spec, workdir))


def _write_best(spec: Spec, workdir: Path, result: SweepResult) -> tuple[dict[str, Any], str]:
    """The best config as a spec ``edray train`` runs (``best.yaml``); returns it and its text."""
    best = best_spec_dict(spec, result.best_config)
    best_path = _sweep_dir(spec, workdir) / "best.yaml"
    best_text = yaml.safe_dump(best, sort_keys=False)
    write_text(best_path, best_text)  # atomic: a truncated best.yaml could still parse
    result.best_spec_path = str(best_path)
    return best, best_text


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2))


def _reporter():
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"grade": "grade", "epoch": "epoch", METRIC: METRIC, "val_acc_seen": "seen acc"},
        max_report_frequency=10,
        sort_by_metric=True,
    )


def _collect(spec: Spec, grid, tracker, parent_id: str, tic: float) -> SweepResult:
    rows = []
    epochs = 0
    for r in grid:
        metrics = r.metrics or {}
        status = trial_status(metrics, r.error).value
        config = {k: v for k, v in (r.config or {}).items()}
        epochs += int(metrics.get("epoch", 0))
        rows.append({"status": status, "config": config, METRIC: metrics.get(METRIC),
                     "model_path": metrics.get("model_path"), "trial_id": metrics.get("trial_id"),
                     "node": metrics.get("node")})
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
        placement={"trials": {row["trial_id"]: row["node"] for row in rows if row["trial_id"]}},
    )


def _final_eval(spec: Spec, best: dict[str, Any], seeds: int, layout: Layout, result: SweepResult,
                log: Callable[[str], None]) -> list[float]:
    """Test accuracy of the best config over ``seeds`` seeds, as parallel Ray tasks with
    the trials' resources (on worker nodes, on a cluster)."""
    from edray.distributed.cluster import final_eval

    log(f"final evaluation of the best config on the test split, {seeds} seeds")
    tic = time.monotonic()
    runs = final_eval(spec, best, seeds, layout)
    result.placement["final_eval"] = [node for _, node in runs]
    result.placement.setdefault("steps", {})["final_eval_s"] = round(time.monotonic() - tic, 2)
    return [acc for acc, _ in runs]


def _finish_tracking(spec: Spec, tracker, grid, result: SweepResult, best_text: str, sweep_dir: Path) -> None:
    from edray.tracking import render_figures

    results, history = [], {}
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        status = trial_status(r.metrics, r.error).value
        results.append({"trial_id": trial_id, "status": status, "config": r.config or {},
                        METRIC: (r.metrics or {}).get(METRIC)})
        df = r.metrics_dataframe
        history[trial_id] = df.to_dict("records") if df is not None else []
    figures = render_figures(results, history, spec.search.params, sweep_dir / "figures", metric=METRIC)
    summary = {k: v for k, v in result.summary().items() if isinstance(v, int | float) and v is not None}
    tracker.finish_sweep(
        best_config=result.best_config or {}, best_spec_yaml=best_text, results=results, figures=figures,
        summary=summary,
        best_model_path=result.best_model_path if result.best_model_path and spec.tracking.log_models != "none"
        else None,
    )

"""What a sweep costs on top of its training, and what grade-aware early stopping saves.

Default mode: the same N digits trial configs are trained in-process one after another
(``edray.pipeline.train`` with ``evaluate_test=False``, as a trial trains), then run as an
``edray sweep`` on a local Ray cluster (early stopping off, the same configs through
``search.points_to_evaluate``), one trial at a time and two at a time. The work directory
is warm for both (teachers, logit stores and the MLflow store exist), so the difference
is what Ray, Tune and MLflow add: ``overhead_per_trial_s = (sweep wall - in-process wall) / N``.
The sweep driver's steps are timed (tracking, data, teachers, ray.init, Tune, final records);
teachers and the parent run's start overlap ray.init, so they do not add up to the wall.

``--early-stopping``: N (default 16) seeded random configs of the shipped digits recipe (40
epochs), swept twice on the same configs: once with the sweep's early stopping (budget-scaled
successive halving, key ``asha`` kept for continuity, named by ``early_stopped``) and once
without. Epochs trained, trials stopped (and the grade each was in), best validation accuracy,
wall time; ``saving`` = epochs without / with, ``best_val_delta`` = best val without - with,
``rung_spearman`` = Spearman correlation between the rung value (val acc of the short copy) and
final val acc, over the configs run to the end (``rung_spearman_all_configs``: over every config,
against its full run in the sweep without early stopping).

``--cluster``: the same N configs swept (early stopping off, 2 at a time) on one node (a
local Ray, as ``edray sweep`` without ``--address``) and on the simulated cluster of
tests/cluster_fixture.py (a ``--num-cpus=0`` head, two worker nodes in their own mount
namespaces, S3 on moto, a real MLflow server; needs root), both warm (teachers and stores
built first, by the nodes for the cluster). Reports both walls, their ratio, the per-trial
difference, each cluster step's wall (probe, teachers, stores, Tune, final records) and
which node did what. All nodes share this machine's cores: the ratio measures what the
cluster path adds (S3, node caches, scheduling across raylets), not a speed-up.

    python benchmarks/sweep_overhead.py [--trials 6] [--json]
    python benchmarks/sweep_overhead.py --early-stopping [--trials 16] [--json]
    python benchmarks/sweep_overhead.py --cluster [--trials 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits.yaml"

# Small teachers: they are trained once, before anything is timed.
TEACHERS = [f"teachers.models[{i}].{k}" for i in range(3) for k in ("arch=cnn_medium", "train.epochs=4")]
OVERHEAD = [*TEACHERS, "optim.epochs=6", "ed.switch_epochs=[2, 4]", "search.params[0].min_grade_epochs=1"]
EARLY_STOPPING = [*TEACHERS]  # the shipped digits recipe: 40 epochs, grades of >= 4 epochs, grace 4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _drawn(spec, config: dict[str, Any]) -> dict[str, Any]:
    """A sampled config without the values the space derives (the last split ratio), as
    ``search.points_to_evaluate`` takes it."""
    derived = {f"{p.path}[{spec.ed.grades - 1}]" for p in spec.search.params if p.type == "split_ratios"}
    return {k: v for k, v in config.items() if k not in derived}


def _prepare(spec, workdir: Path):
    """Teachers, logit stores and an MLflow store: what a second sweep finds already there."""
    from mlflow.tracking import MlflowClient

    from edray.data import load_data
    from edray.layout import Layout
    from edray.pipeline import teach
    from edray.preparation import precompute_stores
    from edray.tracking import resolve_tracking_uri

    data = load_data(spec.dataset)
    tic = time.monotonic()
    teach(spec, Layout.at(workdir), data=data)
    precompute_stores(spec, data, Layout.at(workdir))
    teachers_s = time.monotonic() - tic
    tic = time.monotonic()
    MlflowClient(resolve_tracking_uri(spec, workdir)).search_experiments()  # creates the database
    return data, {"teachers_and_stores_s": teachers_s, "mlflow_store_create_s": time.monotonic() - tic}


def _in_process(spec, configs: list[dict], workdir: Path, data) -> dict[str, Any]:
    from edray.distributed.space import resolve_config
    from edray.layout import Layout
    from edray.pipeline import train

    walls, accs = [], []
    for config in configs:
        tic = time.monotonic()
        result = train(resolve_config(spec, config), Layout.at(workdir), data=data, evaluate_test=False)
        walls.append(time.monotonic() - tic)
        accs.append(result.val_acc)
    return {"wall_s": sum(walls), "per_trial_s": statistics.fmean(walls), "val_accs": accs}


class _Phases:
    """Wall time of the sweep driver's steps (instrumentation only: wraps module functions)."""

    # teachers_check_s and tracking_start_s run on a thread alongside ray_init_s (in-memory data).
    STEPS = {"_tracker": "tracking_open_s", "_load_data": "data_s", "_prepare_teachers": "teachers_check_s",
             "start_tracking": "tracking_start_s", "join_ray": "ray_init_s", "build_tuner": "tuner_build_s",
             "fit": "tune_s", "finish_tracking": "final_records_s"}

    def __init__(self, module):
        self.module, self.times, self._saved = module, {}, {}

    def __enter__(self):
        for name, label in self.STEPS.items():
            fn = self._saved[name] = getattr(self.module, name)

            def timed(*a, _fn=fn, _label=label, **kw):
                tic = time.monotonic()
                try:
                    return _fn(*a, **kw)
                finally:
                    self.times[_label] = self.times.get(_label, 0.0) + time.monotonic() - tic

            setattr(self.module, name, timed)
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(self.module, name, fn)


def _sweep(spec, workdir: Path, *, num_samples: int, max_concurrent: int) -> dict[str, Any]:
    import ray

    from edray.distributed import sweep
    from edray.layout import Layout

    if ray.is_initialized():
        ray.shutdown()  # every sweep pays its own ray.init, as `edray sweep` does
    options = sweep.SweepOptions(num_samples=num_samples, max_concurrent=max_concurrent, progress=False,
                                 final_eval=False)
    tic = time.monotonic()
    with _Phases(sweep) as phases:
        result = sweep.run_sweep(spec, Layout.at(workdir), options, log=lambda _m: None)
    wall = time.monotonic() - tic
    return {"wall_s": wall, "phases": phases.times, "result": result.summary()}


def _spec_with(base: list[str], extra: list[str]):
    from edray.spec import load_spec

    return load_spec(DIGITS, [*base, *extra])


def overhead(args) -> dict[str, Any]:
    from edray.distributed.space import sample_configs

    n = args.trials
    base = [*OVERHEAD, *args.overrides]
    spec = _spec_with(base, [])
    configs = sample_configs(spec, n, seed=args.seed)
    points = [_drawn(spec, c) for c in configs]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edray-bench-"))
    data, setup = _prepare(spec, workdir)
    _log(f"teachers and stores {setup['teachers_and_stores_s']:.1f}s, "
         f"MLflow store {setup['mlflow_store_create_s']:.1f}s")
    inproc = _in_process(spec, configs, workdir, data)
    _log(f"in-process: {n} trials in {inproc['wall_s']:.1f}s")
    out: dict[str, Any] = {"mode": "overhead", "trials": n, "epochs": spec.optim.epochs, "setup": setup,
                           "in_process": inproc, "sweeps": {}}
    for mc in args.max_concurrent:
        sweep_spec = _spec_with(base, [f"search.points_to_evaluate={json.dumps(points)}",
                                       "search.early_stopping.kind=none", f"search.num_samples={n}"])
        run = _sweep(sweep_spec, workdir, num_samples=n, max_concurrent=mc)
        res = run["result"]
        assert res["completed"] == n, f"{res['completed']} of {n} trials completed"
        run["overhead_per_trial_s"] = (run["wall_s"] - inproc["wall_s"]) / n
        run["ratio"] = run["wall_s"] / inproc["wall_s"]
        out["sweeps"][f"max_concurrent_{mc}"] = run
        _log(f"sweep, {mc} at a time: {run['wall_s']:.1f}s, overhead {run['overhead_per_trial_s']:.2f}s per trial "
             f"(x{run['ratio']:.2f}); " + ", ".join(f"{k} {v:.1f}" for k, v in run["phases"].items()))
    return out


def early_stopping(args) -> dict[str, Any]:
    from edray.distributed.space import sample_configs

    n = args.trials
    base = [*EARLY_STOPPING, *args.overrides]
    spec = _spec_with(base, [])
    points = [_drawn(spec, c) for c in sample_configs(spec, n, seed=args.seed)]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edray-bench-"))
    _prepare(spec, workdir)
    out: dict[str, Any] = {"mode": "early_stopping", "trials": n, "epochs": spec.optim.epochs, "runs": {}}
    mc = args.max_concurrent[0]
    # "asha" keeps its key: it is the early stopping the sweep ships (successive halving, see
    # distributed/halving.py); "early_stopped" names it. The old final-grade ASHA is "asha_final_grade".
    kinds = {"none": ["search.early_stopping.kind=none"],
             "asha": ["search.early_stopping={kind: halving, budgets: [0.2], reduction_factor: 4}"]}
    if args.with_final_grade_asha:
        kinds["asha_final_grade"] = ["search.early_stopping={kind: asha, grace_epochs: 4, reduction_factor: 2}"]
    finals: dict[str, dict[str, float]] = {}
    for kind, extra in kinds.items():
        sweep_spec = _spec_with(base, [f"search.points_to_evaluate={json.dumps(points)}", f"search.num_samples={n}",
                                       *extra])
        run = _sweep(sweep_spec, workdir, num_samples=n, max_concurrent=mc)
        res = run["result"]
        stopped_in, finals[kind], rung = _trials(sweep_spec, workdir)
        out["runs"][kind] = {"epochs_trained": res["epochs_trained"], "completed": res["completed"],
                             "pruned": res["pruned"], "best_val_acc": res["best_val_acc"], "wall_s": run["wall_s"],
                             "pruned_in_grade": stopped_in, "trials": res["trials"]}
        if rung:
            out["runs"][kind]["rung_values"] = rung
        _log(f"{kind}: {res['epochs_trained']} epochs, {res['pruned']} pruned (grades {stopped_in}), "
             f"best val_acc {res['best_val_acc']:.4f}, {run['wall_s']:.0f}s")
    none, es = out["runs"]["none"], out["runs"]["asha"]
    out["early_stopped"] = "halving"
    out["saving"] = none["epochs_trained"] / es["epochs_trained"]
    out["best_val_delta"] = none["best_val_acc"] - es["best_val_acc"]
    out["epochs_saved_fraction"] = 1 - es["epochs_trained"] / none["epochs_trained"]
    out["best_val_acc_lost"] = out["best_val_delta"]
    # Rung metric (val acc of the short copy) against final val acc. Over trials run to the end
    # in the halving sweep (the promoted ones), and over every config, whose full run is in "none".
    rung = es.get("rung_values", {})
    promoted = [k for k in rung if k in finals["asha"]]
    out["rung_spearman"] = _spearman([rung[k] for k in promoted], [finals["asha"][k] for k in promoted])
    both = [k for k in rung if k in finals["none"]]
    out["rung_spearman_all_configs"] = _spearman([rung[k] for k in both], [finals["none"][k] for k in both])
    out["rung_spearman_n"] = {"promoted": len(promoted), "all_configs": len(both)}
    return out


def _cli_sweep(workdir: Path, env: dict[str, str], overrides: list[str], *extra: str) -> dict[str, Any]:
    """``edray sweep`` as a user runs it (a subprocess, ``--json``); its wall and summary."""
    import subprocess

    cmd = [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS), "--json", "--workdir", str(workdir), *extra,
           *[a for o in overrides for a in ("--set", o)]]
    tic = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - tic
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {"wall_s": wall, "result": json.loads(proc.stdout.strip().splitlines()[-1])}


def cluster(args) -> dict[str, Any]:
    """One node against the simulated cluster, on the same trials (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from edray.distributed.space import sample_configs
    from tests.cluster_fixture import start_cluster, why_not

    reason = why_not()
    if reason:
        raise SystemExit(f"--cluster needs the simulated cluster: {reason}")
    n, mc = args.trials, args.max_concurrent[0]
    base = [*OVERHEAD, *args.overrides, "search.final_eval.seeds=0"]
    spec = _spec_with(base, [])
    points = [_drawn(spec, c) for c in sample_configs(spec, n, seed=args.seed)]
    sweep = [*base, f"search.points_to_evaluate={json.dumps(points)}", "search.early_stopping.kind=none",
             f"search.num_samples={n}"]
    flags = ("--num-samples", str(n), "--max-concurrent", str(mc), "--no-final-eval")
    root = Path(tempfile.mkdtemp(prefix="edc-", dir="/tmp"))
    local_env = {k: v for k, v in os.environ.items()
                 if k not in ("RAY_ADDRESS", "EDRAY_SHARED", "MLFLOW_TRACKING_URI", "EDRAY_WORKDIR")}
    local_env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    _log("one node: warm-up sweep (teachers, stores), then the timed one")
    _cli_sweep(root / "local", local_env, [*base, "search.num_samples=1"], "--num-samples", "1", "--no-final-eval")
    single = _cli_sweep(root / "local", local_env, sweep, *flags)
    _log(f"one node: {n} trials in {single['wall_s']:.1f}s; starting the simulated cluster")
    tic = time.monotonic()
    sim = start_cluster(root / "w", root / "logs")
    started = time.monotonic() - tic
    try:
        env = sim.driver_env(EDRAY_SHARED=sim.shared("bench"))
        cold = _cli_sweep(sim.base / "d0", env, [*base, "search.num_samples=1"], "--address", "auto",
                          "--num-samples", "1", "--no-final-eval")
        _log(f"cluster warm-up (teachers and stores on the workers): {cold['wall_s']:.1f}s")
        multi = _cli_sweep(sim.base / "d1", env, sweep, "--address", "auto", *flags)
    finally:
        sim.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    _log(f"cluster: {n} trials in {multi['wall_s']:.1f}s")
    return {
        "mode": "cluster", "trials": n, "epochs": spec.optim.epochs, "max_concurrent": mc,
        "cluster_start_s": started, "single_node": single, "cluster_cold": cold, "cluster": multi,
        "ratio": multi["wall_s"] / single["wall_s"], "difference_per_trial_s": (multi["wall_s"] - single["wall_s"]) / n,
    }


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _config_key(params: dict[str, str]) -> str:
    """A config's identity across sweeps: its searched values as logged (the copy's budget left out)."""
    return json.dumps({k: v for k, v in sorted(params.items()) if k.startswith(("ed.", "optim.lr"))
                       and k not in ("ed.switch_epochs", "ed.split_ratios", "ed.temperatures")}, sort_keys=True)


def _trials(spec, workdir: Path) -> tuple[list[int], dict[str, float], dict[str, float]]:
    """Of the latest sweep (from MLflow): the grade each stopped trial was in, each full run's final
    val acc by config, and each short copy's val acc by config."""
    from mlflow.tracking import MlflowClient

    from edray.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(spec, workdir))
    state = json.loads((workdir / "sweeps" / spec.name / "sweep.json").read_text())
    exp = client.get_experiment_by_name(spec.tracking.experiment or spec.name)
    children = f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'"
    runs = client.search_runs([exp.experiment_id], filter_string=children, max_results=1000)
    stopped, finals, rung = [], {}, {}
    for r in runs:
        key, m = _config_key(r.data.params), r.data.metrics
        if r.data.tags.get("edray.status") == "pruned":
            stopped.append(int(m["grade"]))
            if m.get("budget_epochs", spec.optim.epochs) < spec.optim.epochs:
                rung[key] = m["val_acc"]
        elif r.data.tags.get("edray.status") == "completed":
            finals[key] = m["val_acc"]
    return sorted(stopped), finals, rung


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--early-stopping", action="store_true",
                        help="compare the sweep's early stopping (successive halving) with none")
    parser.add_argument("--with-final-grade-asha", action="store_true",
                        help="with --early-stopping: also run the older final-grade ASHA")
    parser.add_argument("--cluster", action="store_true", help="one node against the simulated multi-node cluster")
    parser.add_argument("--trials", type=int, help="trials (default 6; 16 with --early-stopping)")
    parser.add_argument("--max-concurrent", type=int, action="append",
                        help="trials at once (repeatable; default 1 and 2; 2 with --early-stopping)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled configs")
    parser.add_argument("--workdir", help="work directory (default: a new temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra spec overrides")
    parser.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    args = parser.parse_args()
    args.trials = args.trials or (16 if args.early_stopping else 4 if args.cluster else 6)
    args.max_concurrent = args.max_concurrent or ([2] if args.early_stopping or args.cluster else [1, 2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray workers inherit it: one thread per trial
    torch.set_num_threads(1)
    tic = time.monotonic()
    out = cluster(args) if args.cluster else early_stopping(args) if args.early_stopping else overhead(args)
    out["wall_s"] = time.monotonic() - tic
    out["load_average"] = os.getloadavg()
    if out["mode"] == "cluster":
        placement = out["cluster"]["result"].get("placement", {})
        print(f"{out['trials']} trials of {out['epochs']} epochs, {out['max_concurrent']} at a time: one node "
              f"{out['single_node']['wall_s']:.1f}s, cluster {out['cluster']['wall_s']:.1f}s "
              f"(x{out['ratio']:.2f}, {out['difference_per_trial_s']:+.2f}s per trial)")
        print(f"  cluster steps: {placement.get('timings')} {placement.get('steps')}")
        print(f"  cold cluster run (teachers + stores on workers): {out['cluster_cold']['wall_s']:.1f}s, steps "
              f"{out['cluster_cold']['result'].get('placement', {}).get('steps')}")
        print(f"  trials per node: {placement.get('trials')}")
    elif out["mode"] == "overhead":
        print(f"{out['trials']} trials of {out['epochs']} epochs: in-process {out['in_process']['wall_s']:.1f}s")
        for name, run in out["sweeps"].items():
            print(f"  sweep {name}: {run['wall_s']:.1f}s, overhead {run['overhead_per_trial_s']:.2f}s/trial, "
                  f"x{run['ratio']:.2f}")
    else:
        for kind, run in out["runs"].items():
            print(f"  {kind:<5} {run['epochs_trained']:>4} epochs, {run['pruned']:>2} pruned, "
                  f"best val_acc {run['best_val_acc']:.4f}, {run['wall_s']:.0f}s")
        print(f"  saving x{out['saving']:.2f} ({out['early_stopped']} vs none), best val_acc delta "
              f"{out['best_val_delta']:+.4f}, rung Spearman {out['rung_spearman']} (promoted), "
              f"{out['rung_spearman_all_configs']} (all configs against their full runs)")
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()

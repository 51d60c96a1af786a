"""How the sweep driver's cost grows with the number of trials.

The same tiny trial (digits, ``cnn_small`` student, stored teacher logits, 3 epochs, ED with
its search space and the default sampler) is swept at each size, two at a time, with no early
stopping, tracking to a real ``mlflow server`` on loopback (SQLite backend, a fresh database
per size) as a cluster would. Each size runs in its own driver process (a clean peak RSS and
its own ``ray.init``); the work directory is warm (teachers and logit stores built first).

Per size: ``wall_s`` (the sweep, as ``run_sweep``), ``overhead_s_per_trial`` (wall minus the
same number of trials trained in-process, per trial; the in-process time per trial is the mean
of ``--in-process`` configs of the same space), ``suggest_ms_p50`` / ``suggest_ms_p99`` (Optuna's
suggest through Tune's searcher), ``tracking_ms_per_trial`` (the MLflow callback: child run,
epochs, close), ``state_save_ms_per_trial`` (Tune's experiment state saves, summed, per trial),
``driver_rss_mb`` (the driver's peak resident memory), ``figures_s`` (figures and the parent
run's closing records) and ``report_s`` (``edray report``'s HTML page from the server).

The timers wrap methods from outside (this process only): edray carries no hooks for them.

    python benchmarks/sweep_scale.py --trials 40,400 [--json]
    python benchmarks/sweep_scale.py --trials 1000 --json     # a quiet machine: ~1 h on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep_overhead import TEACHERS, _in_process, _log, _prepare, _spec_with, _sweep

# Three epochs, one per grade: the shortest trial that still runs ED's whole schedule.
SCALE = [*TEACHERS, "optim.epochs=3", "ed.switch_epochs=[1, 2]", "search.params[0].min_grade_epochs=1",
         "search.early_stopping.kind=none", "search.final_eval.seeds=0", "search.max_concurrent=2"]


@dataclass
class _Timer:
    """Wall time of every call of one method."""

    calls_ms: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(self.calls_ms) / 1000


@contextmanager
def _timed(targets: dict[str, tuple[Any, list[str]]]) -> Iterator[dict[str, _Timer]]:
    """Time the listed methods of the listed classes, or functions of modules (``label -> (class
    or module, names)``); they are put back on exit."""
    timers = {label: _Timer() for label in targets}
    saved: list[tuple[Any, str, Any]] = []
    for label, (cls, names) in targets.items():
        for name in names:
            fn = cls.__dict__.get(name) or getattr(cls, name)
            saved.append((cls, name, cls.__dict__.get(name)))

            def wrapped(*a, _fn=fn, _timer=timers[label], **kw):
                tic = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    _timer.calls_ms.append((time.perf_counter() - tic) * 1000)

            setattr(cls, name, wrapped)
    try:
        yield timers
    finally:
        for cls, name, original in reversed(saved):
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_size(args) -> dict[str, Any]:
    """One sweep of ``args.one`` trials against the server at ``args.tracking_uri`` (a child process)."""
    import ray
    from ray.tune.execution.tune_controller import TuneController

    import edray.report
    from edray.data import load_data
    from edray.distributed.searcher import PruneStoppedOptunaSearch
    from edray.distributed.space import sample_configs
    from edray.report import write_report
    from edray.tracking import TrackingCallback

    n, workdir = args.one, Path(args.workdir)
    spec = _spec_with([*SCALE, *args.overrides], [f"search.num_samples={n}", f"tracking.uri={args.tracking_uri}"])
    load_before = os.getloadavg()
    targets = {
        "suggest": (PruneStoppedOptunaSearch, ["suggest"]),
        "tracking": (TrackingCallback, ["on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"]),
        "state_save": (TuneController, ["save_to_dir"]),
    }
    with _timed(targets) as timers:
        run = _sweep(spec, workdir, num_samples=n, max_concurrent=2)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    res = run["result"]
    if res["completed"] != n:
        raise SystemExit(f"{res['completed']} of {n} trials completed ({res['errored']} errored)")
    ray.shutdown()
    tic = time.monotonic()
    out_html = workdir / f"report-{n}.html"
    with _timed({"report_read": (edray.report, ["load_sweep"])}) as read:  # MLflow reads, of the whole
        write_report(spec.tracking.experiment or spec.name, workdir, out_html, tracking_uri=args.tracking_uri)
    report_s = time.monotonic() - tic
    # Training alone: a sample of configs of the same space, in this process, one after another.
    data = load_data(spec.dataset)
    k = min(n, args.in_process)
    inproc = _in_process(spec, sample_configs(spec, k, seed=args.seed), workdir, data)
    train_s = inproc["per_trial_s"] * n
    suggest = timers["suggest"].calls_ms
    return {
        "trials": n, "epochs": spec.optim.epochs, "max_concurrent": 2, "wall_s": run["wall_s"],
        "in_process_per_trial_s": inproc["per_trial_s"], "in_process_sample": k,
        "overhead_s_per_trial": (run["wall_s"] - train_s) / n,
        "suggest_ms_p50": _percentile(suggest, 0.5), "suggest_ms_p99": _percentile(suggest, 0.99),
        "suggest_calls": len(suggest),
        "tracking_ms_per_trial": timers["tracking"].total_s * 1000 / n,
        "state_save_ms_per_trial": timers["state_save"].total_s * 1000 / n,
        "state_saves": len(timers["state_save"].calls_ms),
        "state_save_ms_max": max(timers["state_save"].calls_ms, default=None),
        "driver_rss_mb": rss_mb,
        "figures_s": run["phases"].get("final_records_s"), "report_s": report_s,
        "report_read_s": read["report_read"].total_s,
        "report_bytes": out_html.stat().st_size,
        "phases": run["phases"], "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on loopback (SQLite, artifacts served by it), in its own process
    group, stopped by that group; yields its URI."""
    import shutil
    import urllib.request

    shutil.rmtree(root, ignore_errors=True)  # a fresh database: an earlier run's records would be searched too
    root.mkdir(parents=True)
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server did not start (see {root / 'server.log'})") from None
                time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own group: the server and its worker
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="40,400", help="comma-separated sweep sizes (default 40,400)")
    parser.add_argument("--in-process", type=int, default=12, help="configs trained in-process per size (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="work directory (default: a new temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra spec overrides")
    parser.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process of one size
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray workers inherit it: one thread per trial
    import torch

    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(one_size(args)))
        return
    sizes = [int(s) for s in args.trials.split(",") if s.strip()]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edray-scale-"))
    _, setup = _prepare(_spec_with([*SCALE, *args.overrides], []), workdir)
    _log(f"teachers and stores {setup['teachers_and_stores_s']:.1f}s")
    out: dict[str, Any] = {"mode": "scale", "cpus": os.cpu_count(), "setup": setup, "sizes": {}}
    for n in sizes:
        with mlflow_server(workdir / f"mlflow-{n}") as uri:
            cmd = [sys.executable, __file__, "--one", str(n), "--workdir", str(workdir), "--tracking-uri", uri,
                   "--in-process", str(args.in_process), "--seed", str(args.seed),
                   *[a for o in args.overrides for a in ("--set", o)]]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {n}-trial sweep failed ({proc.returncode})")
        size = out["sizes"][str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
        _log(f"{n} trials: wall {size['wall_s']:.0f}s, overhead {size['overhead_s_per_trial']:.2f}s/trial, "
             f"suggest p50 {size['suggest_ms_p50']:.1f}ms p99 {size['suggest_ms_p99']:.1f}ms, tracking "
             f"{size['tracking_ms_per_trial']:.0f}ms/trial, state {size['state_save_ms_per_trial']:.0f}ms/trial, "
             f"rss {size['driver_rss_mb']:.0f}MB, figures {size['figures_s']:.1f}s, report {size['report_s']:.1f}s")
    if len(sizes) > 1:
        first, last = out["sizes"][str(sizes[0])], out["sizes"][str(sizes[-1])]
        out["overhead_growth"] = last["overhead_s_per_trial"] / first["overhead_s_per_trial"]
    out["load_average"] = os.getloadavg()
    for n, size in out["sizes"].items():
        print(f"{n:>5} trials: {size['wall_s']:7.1f}s, overhead {size['overhead_s_per_trial']:.2f}s/trial, suggest "
              f"p50/p99 {size['suggest_ms_p50']:.1f}/{size['suggest_ms_p99']:.1f}ms, rss {size['driver_rss_mb']:.0f}MB")
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()

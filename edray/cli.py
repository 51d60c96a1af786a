"""``edray`` command line: one subcommand per step, one-line errors, exit codes.

Exit 0 on success, 2 for a user mistake (bad spec, flag or data path), 1 for a failure
at run time. The traceback is shown only with ``--debug``.

:data:`COMMANDS` is the one table of subcommands: each row names its handler, which of
the shared options it takes (a spec, an experiment, ``--json``, ``--tracking-uri``) and
its own flags. Handlers call library functions (:mod:`edray.pipeline`,
:mod:`edray.distributed.sweep`, ...) and print; the one file a handler writes itself is
``train --save-model``'s. Each builds the command's one :class:`~edray.layout.Layout`
(``--workdir`` and ``EDRAY_SHARED``) and passes it down. A handler returns an exit code, or
a summary dict (exit 0) that ``--json`` prints as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edray import __version__
from edray.errors import RUNTIME_ERROR, EdrayError
from edray.logs import configure_logging

__all__ = ["COMMANDS", "build_parser", "main"]

Summary = dict[str, Any]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _workdir(args: argparse.Namespace) -> Path:
    from edray.workdir import resolve_workdir

    return resolve_workdir(args.workdir)


def _layout(args: argparse.Namespace, spec):
    """The command's one :class:`~edray.layout.Layout`: ``--workdir`` and ``EDRAY_SHARED``."""
    from edray.layout import Layout

    return Layout.from_env(_workdir(args), store_uri=spec.teachers.store_uri)


def _device(args: argparse.Namespace) -> str:
    from edray.device import choose_device

    return choose_device(args.device)


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise EdrayError(flag, f"must be >= 1, got {value}", "pass a positive count")


def _load(args: argparse.Namespace, *, check: bool = True):
    """The validated spec; ``check`` also runs :func:`~edray.preflight.preflight` (names
    that must exist, data on disk, grades that fit), so a mistake fails before any work."""
    from edray.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if check:
        from edray.preflight import preflight

        preflight(spec, search=args.command in ("validate", "sweep"),
                  offline=args.command == "validate" or getattr(args, "dry_run", False))
    return spec


# ---------------------------------------------------------------------- handlers


def _cmd_validate(args: argparse.Namespace) -> int:
    from edray.clusters import is_cluster_file, validate_cluster_file

    path = Path(args.spec)
    if is_cluster_file(path):
        kind = validate_cluster_file(path)
        print(f"ok: {path} is a valid {kind} cluster file")
        return 0
    spec = _load(args)
    print(f"ok: {path} ({spec.method} on {spec.dataset.name}, {spec.ed.grades} grades, {spec.optim.epochs} epochs)")
    return 0


def _cmd_teach(args: argparse.Namespace) -> Summary:
    from edray.pipeline import teach

    spec = _load(args)
    tic = time.monotonic()
    teachers = teach(spec, _layout(args, spec), force=args.force, device=_device(args),
                     progress=_log if _progress_enabled(args) else None)
    for i, t in enumerate(teachers):
        print(f"teacher {i}: {t.arch} over {len(t.classes)} classes, val_acc {t.val_acc:.4f} -> {t.path}")
    return {
        "teachers": [{"arch": t.arch, "classes": len(t.classes), "val_acc": t.val_acc, "path": str(t.path)}
                     for t in teachers],
        "wall_s": round(time.monotonic() - tic, 3),
    }


def _teacher_source(spec, layout) -> str:
    if spec.method == "ce":
        return "none"
    if spec.teachers.logits == "precomputed":
        return f"precomputed logits (Arrow stores under {layout.stores})"
    return "live"


def _cmd_train(args: argparse.Namespace) -> Summary:
    from edray.distill.loop import EpochMetrics
    from edray.pipeline import train

    spec = _load(args)
    layout = _layout(args, spec)

    def show(m: EpochMetrics) -> None:
        _log(
            f"epoch {m.epoch:>3}/{spec.optim.epochs}  grade {m.grade}  classes {m.seen_classes:>3}  "
            f"loss {m.train_loss:.4f}  val_acc {m.val_acc:.4f}  val_acc_seen {m.val_acc_seen:.4f}  {m.epoch_s:.1f}s"
        )

    if _progress_enabled(args):
        _log(f"training {spec.method} on {spec.dataset.name} ({spec.student.arch}, {spec.optim.epochs} epochs, "
             f"teachers: {_teacher_source(spec, layout)})")
    result = train(spec, layout, device=_device(args), progress=show if _progress_enabled(args) else None)
    if args.save_model and result.model is not None:
        from edray.atomic import write_torch

        write_torch(args.save_model, result.model, field="--save-model", fix="free space or choose another path")
    summary = result.summary()
    if not args.json:
        print(f"{summary['method']}: val_acc {summary['val_acc']:.4f}  test_acc {summary['test_acc']:.4f}  "
              f"({summary['epochs']} epochs, switches at {summary['switch_epochs']}, {summary['wall_s']:.1f}s)")
    return summary


def _cmd_sweep(args: argparse.Namespace) -> Summary:
    from dataclasses import asdict

    from edray.distributed.compare import format_compare, parse_methods, run_compare
    from edray.distributed.interrupt import catch_ctrl_c
    from edray.distributed.space import describe_space, sample_configs
    from edray.distributed.sweep import SweepOptions, plan_line, run_sweep

    methods = parse_methods(args.compare) if args.compare is not None else None  # a typo fails before the spec loads
    spec = _load(args, check=args.dry_run)  # run_sweep runs the same checks itself
    if spec.search is None:
        raise EdrayError("search", f"{args.spec} has no search section",
                         "add search.params (see search_spaces/digits.yaml)")
    _positive("--num-samples", args.num_samples)
    _positive("--max-concurrent", args.max_concurrent)
    if not args.wait_for_nodes > 0:
        raise EdrayError("--wait-for-nodes", f"must be > 0 seconds, got {args.wait_for_nodes:g}", "pass e.g. 1800")
    if args.dry_run:
        configs = sample_configs(spec, 3)
        print(f"search space of {args.spec} ({spec.search.num_samples} trials, {spec.search.sampler} sampler):")
        print(f"  cost: {plan_line(spec, args.num_samples or spec.search.num_samples)}")
        for line in describe_space(spec):
            print(f"  {line}")
        print("sampled configs:")
        for c in configs:
            print("  " + json.dumps(c))
        return {"dry_run": True, "space": describe_space(spec), "samples": configs}
    options = SweepOptions(
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, address=args.address, resume=args.resume,
        progress=_progress_enabled(args), final_eval=not args.no_final_eval, wait_for_nodes_s=args.wait_for_nodes,
        progress_lines=not args.quiet and not sys.stderr.isatty(),  # ray job logs: no live table, plain lines
    )
    log = _log if not args.quiet else (lambda _m: None)
    # Ctrl-C stops the sweep (exit 130, below). Tune's own SIGINT handler would only stop
    # the trials and let the sweep end as if it had finished (exit 0, a "best" of a part).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    catch_ctrl_c()
    methods = methods or spec.search.compare
    rows = None
    if methods:
        result, rows = run_compare(spec, _layout(args, spec), options, methods, log=log)
    else:
        result = run_sweep(spec, _layout(args, spec), options, log=log)
    _leave_ray()
    summary = result.summary()
    if rows is not None:
        summary["compare"] = [asdict(r) for r in rows]
    if not args.json:
        if rows is not None:
            print(format_compare(rows))
        print(f"{summary['trials']} trials: {summary['completed']} completed, {summary['pruned']} pruned, "
              f"{summary['errored']} errored; best val_acc {_rounded(summary['best_val_acc'])}")
        if summary["final_test_acc_mean"] is not None:
            print(f"final test accuracy of the best config: {summary['final_test_acc_mean']:.4f} "
                  f"± {summary['final_test_acc_std']:.4f}")
        print(f"best spec: {summary['best_spec_path']}; MLflow: {summary['tracking_uri']} "
              f"(experiment {summary['experiment']}, run {summary['parent_run_id']})")
    return summary


def _rounded(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _leave_ray() -> None:
    """Disconnect from Ray before the summary is printed: Ray's listener thread prints the
    cluster's warnings to stdout at any moment, and ``--json`` promises the last line."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _cmd_best(args: argparse.Namespace) -> int:
    from edray.tracking.best import write_best_spec

    best = write_best_spec(args.experiment, _workdir(args), Path(args.output), tracking_uri=args.tracking_uri)
    print(f"wrote {args.output}: run it with `edray train {args.output}`")
    if best.model_uri:
        print(f"its trained student: {best.model_uri} (mlflow.pytorch.load_model or mlflow.pyfunc.load_model)")
    return 0


def _cmd_precompute(args: argparse.Namespace) -> Summary:
    from edray.logits.reader import verify_store
    from edray.pipeline import load_run_data
    from edray.preparation import precompute_stores

    if args.views is not None:
        _positive("--views", args.views)
        args.overrides.append(f"teachers.views={args.views}")  # trials must then use the same V
    spec = _load(args)
    layout = _layout(args, spec)
    data = load_run_data(spec, layout)
    tic = time.monotonic()
    infos = precompute_stores(spec, data, layout, device=_device(args),
                              progress=_log if _progress_enabled(args) else None)
    rows = []
    for info in infos:
        line = f"teacher {info.teacher} {info.split}: {info.rows} rows x {info.views} views, {info.nbytes / 1e6:.2f} MB"
        if args.verify:
            verify_store(info.path)
            line += ", verified"
        print(f"{line} -> {info.path}")
        rows.append({"teacher": info.teacher, "split": info.split, "path": str(info.path), "rows": info.rows,
                     "views": info.views, "bytes": info.nbytes})
    return {"stores": rows, "wall_s": round(time.monotonic() - tic, 3)}


def _cmd_ui(args: argparse.Namespace) -> int:
    from edray.ui import serve_ui

    return serve_ui(_workdir(args), port=args.port, host=args.host, tracking_uri=args.tracking_uri)


def _cmd_report(args: argparse.Namespace) -> int:
    from edray.report import write_report

    out = write_report(args.experiment, _workdir(args), Path(args.output), tracking_uri=args.tracking_uri)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- the table


def _opt(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, kwargs


_FLAG = {"action": "store_true"}


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler, the shared options it takes, and its own flags.

    ``spec``: a SPEC argument and ``--set``; ``experiment``: an EXPERIMENT argument;
    ``output``: ``-o/--output`` with this default file; ``json``: ``--json``;
    ``tracking_uri``: ``--tracking-uri``. Every command takes ``--workdir``, ``--device``,
    ``--threads``, ``--quiet`` and ``--debug``.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | Summary]
    spec: bool = True
    experiment: bool = False
    output: str | None = None
    json: bool = False
    tracking_uri: bool = False
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


COMMANDS: tuple[Command, ...] = (
    Command("validate", "check a spec or a cluster file; exit 0, or one line and exit 2", _cmd_validate),
    Command("teach", "train the spec's teachers and save their checkpoints", _cmd_teach, json=True, options=(
        _opt("--force", **_FLAG, help="retrain teachers that already exist"),
    )),
    Command("train", "one training run of the spec's method (ed, kd, mtkd, ce)", _cmd_train, json=True, options=(
        _opt("--save-model", metavar="FILE", help="save the finished student (a plain torch module)"),
    )),
    Command("precompute", "store every teacher's logits in Arrow files for trials to read", _cmd_precompute,
            json=True, options=(
        _opt("--views", type=int, metavar="V", help="views per training sample (default: teachers.views)"),
        _opt("--verify", **_FLAG, help="check every store against its manifest checksums"),
    )),
    Command("sweep", "search ED recipes with Ray Tune + Optuna, every trial in MLflow", _cmd_sweep, json=True,
            options=(
        _opt("--num-samples", type=int, metavar="N", help="trials (default: search.num_samples)"),
        _opt("--max-concurrent", type=int, metavar="K", help="trials at once (default: search.max_concurrent)"),
        _opt("--address", metavar="ADDR", help="join a running Ray cluster (e.g. auto); default: start a local one"),
        _opt("--wait-for-nodes", type=float, default=1800.0, metavar="SECONDS",
             help="on a cluster, how long to wait for the autoscaler to start a worker node (default 1800)"),
        _opt("--resume", **_FLAG, help="continue the last sweep of this spec"),
        _opt("--dry-run", **_FLAG, help="validate, print the space and sampled configs, train nothing"),
        _opt("--no-final-eval", **_FLAG, help="skip the final test evaluation of the best config"),
        _opt("--compare", metavar="METHODS",
             help="also sweep these baselines like ED, same trials and budget, and tabulate (e.g. kd,mtkd,ce)"),
    )),
    Command("best", "write the best config of a sweep as a spec for `edray train`", _cmd_best, spec=False,
            experiment=True, output="best.yaml", tracking_uri=True),
    Command("ui", "open the MLflow UI on the work directory's store (127.0.0.1)", _cmd_ui, spec=False,
            tracking_uri=True, options=(
        _opt("--port", type=int, default=5000, metavar="P", help="port (default 5000)"),
        _opt("--host", default="127.0.0.1",
             help="address to bind (default 127.0.0.1; anything else is reachable from the network)"),
    )),
    Command("report", "write one self-contained HTML page about a sweep", _cmd_report, spec=False,
            experiment=True, output="report.html", tracking_uri=True),
)


def _add_shared(p: argparse.ArgumentParser, cmd: Command) -> None:
    if cmd.spec:
        p.add_argument("spec", metavar="SPEC", help="YAML spec, e.g. search_spaces/digits.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a spec field, e.g. --set ed.alpha=0.5 (repeatable)")
    if cmd.experiment:
        p.add_argument("experiment", metavar="EXPERIMENT", help="MLflow experiment (the spec's name)")
    if cmd.output:
        p.add_argument("-o", "--output", default=cmd.output, metavar="FILE",
                       help=f"where to write it (default {cmd.output})")
    if cmd.json:
        p.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    if cmd.tracking_uri:
        p.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow store (default: $MLFLOW_TRACKING_URI, else the workdir's mlflow.db)")
    p.add_argument("--workdir", metavar="DIR", help="where outputs go (default: $EDRAY_WORKDIR or ./edray-out)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's own; 1 is fastest for small models on a busy CPU)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edray", description="Tune Education Distillation recipes at cluster scale.")
    parser.add_argument("--version", action="version", version=f"edray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help)
        _add_shared(p, cmd)
        for flags, kwargs in cmd.options:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(command_row=cmd)
    return parser


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "threads", None) is not None:
        _positive("--threads", args.threads)
        import torch

        torch.set_num_threads(args.threads)
    out = args.command_row.run(args)
    if isinstance(out, dict):
        if getattr(args, "json", False):
            print(json.dumps(out))
        return 0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(quiet=args.quiet, debug=args.debug)
    try:
        return _run(args)
    except EdrayError as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # one line, always
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure at run time: one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())

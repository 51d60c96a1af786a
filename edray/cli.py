"""``edray`` command line: one subcommand per step, one-line errors, exit codes.

Exit 0 on success, 2 for a user mistake (bad spec, flag or data path), 1 for a failure
at run time. The traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from edray.errors import RUNTIME_ERROR, EdrayError

__all__ = ["main"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _add_common(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    if spec:
        p.add_argument("spec", metavar="SPEC", help="YAML spec, e.g. search_spaces/digits.yaml")
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
            help="override a spec field, e.g. --set ed.alpha=0.5 (repeatable)",
        )
    p.add_argument("--workdir", metavar="DIR", help="where outputs go (default: $EDRAY_WORKDIR or ./edray-out)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's own; 1 is fastest for small models on a busy CPU)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else the workdir's mlflow.db)")


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def _cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.spec)
    if _looks_like_cluster_file(path):
        from edray.clusters import validate_cluster_file

        kind = validate_cluster_file(path)
        print(f"ok: {path} is a valid {kind} cluster file")
        return 0
    spec = _load(args)
    print(f"ok: {path} ({spec.method} on {spec.dataset.name}, {spec.ed.grades} grades, {spec.optim.epochs} epochs)")
    return 0


def _looks_like_cluster_file(path: Path) -> bool:
    if not path.is_file():
        return False
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError:
        return False
    return any("provider" in d or "available_node_types" in d or str(d.get("apiVersion", "")).startswith("ray.io")
               for d in docs)


def _cmd_teach(args: argparse.Namespace) -> int:
    from edray.pipeline import teach
    from edray.workdir import resolve_workdir

    spec = _load(args)
    workdir = resolve_workdir(args.workdir)
    show = _progress_enabled(args)
    tic = time.monotonic()
    teachers = teach(spec, workdir, force=args.force, device=_device(args), progress=_log if show else None)
    for i, t in enumerate(teachers):
        print(f"teacher {i}: {t.arch} over {len(t.classes)} classes, val_acc {t.val_acc:.4f} -> {t.path}")
    if args.json:
        print(json.dumps({
            "teachers": [{"arch": t.arch, "classes": len(t.classes), "val_acc": t.val_acc, "path": str(t.path)}
                         for t in teachers],
            "wall_s": round(time.monotonic() - tic, 3),
        }))
    return 0


def _teacher_source(spec) -> str:
    if spec.method == "ce":
        return "none"
    if spec.teachers.logits == "precomputed":
        return "precomputed logits (Arrow stores under WORKDIR/logits)"
    return "live"


def _cmd_train(args: argparse.Namespace) -> int:
    from edray.distill.loop import EpochMetrics
    from edray.pipeline import train
    from edray.workdir import resolve_workdir

    spec = _load(args)
    workdir = resolve_workdir(args.workdir)

    def show(m: EpochMetrics) -> None:
        _log(
            f"epoch {m.epoch:>3}/{spec.optim.epochs}  grade {m.grade}  classes {m.seen_classes:>3}  "
            f"loss {m.train_loss:.4f}  val_acc {m.val_acc:.4f}  val_acc_seen {m.val_acc_seen:.4f}  {m.epoch_s:.1f}s"
        )

    if _progress_enabled(args):
        _log(f"training {spec.method} on {spec.dataset.name} ({spec.student.arch}, {spec.optim.epochs} epochs, "
             f"teachers: {_teacher_source(spec)})")
    result = train(spec, workdir, device=_device(args), progress=show if _progress_enabled(args) else None)
    if args.save_model and result.model is not None:
        import torch

        out = Path(args.save_model)
        tmp = out.with_name(f".{out.name}.tmp")
        buf = io.BytesIO()
        torch.save(result.model, buf)  # in memory: torch's zip writer reports a full disk as a RuntimeError
        try:  # beside the target, then renamed: a full disk leaves no half model that loads later
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buf.getbuffer())
            tmp.replace(out)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise EdrayError("--save-model", f"cannot write {out} ({err.strerror or err})",
                             "free space or choose another path") from None
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['method']}: val_acc {summary['val_acc']:.4f}  test_acc {summary['test_acc']:.4f}  "
              f"({summary['epochs']} epochs, switches at {summary['switch_epochs']}, {summary['wall_s']:.1f}s)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edray.distributed.compare import format_compare, parse_methods, run_compare
    from edray.distributed.space import describe_space, sample_configs
    from edray.distributed.sweep import SweepOptions, plan_line, run_sweep
    from edray.workdir import resolve_workdir

    methods = parse_methods(args.compare) if args.compare is not None else None  # a typo fails before the spec loads
    spec = _load(args, check=args.dry_run)  # run_sweep runs the same checks itself
    if spec.search is None:
        raise EdrayError("search", f"{args.spec} has no search section",
                         "add search.params (see search_spaces/digits.yaml)")
    if args.num_samples is not None and args.num_samples < 1:
        raise EdrayError("--num-samples", f"must be >= 1, got {args.num_samples}", "pass a positive count")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise EdrayError("--max-concurrent", f"must be >= 1, got {args.max_concurrent}", "pass a positive count")
    if args.dry_run:
        configs = sample_configs(spec, 3)
        print(f"search space of {args.spec} ({spec.search.num_samples} trials, {spec.search.sampler} sampler):")
        print(f"  cost: {plan_line(spec, args.num_samples or spec.search.num_samples)}")
        for line in describe_space(spec):
            print(f"  {line}")
        print("sampled configs:")
        for c in configs:
            print("  " + json.dumps(c))
        if args.json:
            print(json.dumps({"dry_run": True, "space": describe_space(spec), "samples": configs}))
        return 0
    workdir = resolve_workdir(args.workdir)
    options = SweepOptions(
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, address=args.address, resume=args.resume,
        progress=_progress_enabled(args), final_eval=not args.no_final_eval,
    )
    log = _log if not args.quiet else (lambda _m: None)
    methods = methods or spec.search.compare
    rows = None
    if methods:
        result, rows = run_compare(spec, workdir, options, methods, log=log)
    else:
        result = run_sweep(spec, workdir, options, log=log)
    summary = result.summary()
    if rows is not None:
        summary["compare"] = [asdict(r) for r in rows]
    if args.json:
        print(json.dumps(summary))
    else:
        if rows is not None:
            print(format_compare(rows))
        print(f"{summary['trials']} trials: {summary['completed']} completed, {summary['pruned']} pruned, "
              f"{summary['errored']} errored; best val_acc {summary['best_val_acc']}")
        if summary["final_test_acc_mean"] is not None:
            print(f"final test accuracy of the best config: {summary['final_test_acc_mean']:.4f} "
                  f"± {summary['final_test_acc_std']:.4f}")
        print(f"best spec: {summary['best_spec_path']}; MLflow: {summary['tracking_uri']} "
              f"(experiment {summary['experiment']}, run {summary['parent_run_id']})")
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from edray.tracking.best import best_spec_yaml
    from edray.workdir import resolve_workdir

    text = best_spec_yaml(args.experiment, resolve_workdir(args.workdir), tracking_uri=args.tracking_uri)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out}: run it with `edray train {out}`")
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    from edray.data import load_data
    from edray.logits.precompute import precompute_stores
    from edray.logits.reader import verify_store
    from edray.workdir import resolve_workdir

    if args.views is not None:
        if args.views < 1:
            raise EdrayError("--views", f"must be >= 1, got {args.views}", "pass a positive count")
        args.overrides.append(f"teachers.views={args.views}")  # trials must then use the same V
    spec = _load(args)
    workdir = resolve_workdir(args.workdir)
    data = load_data(spec.dataset)
    tic = time.monotonic()
    infos = precompute_stores(spec, data, workdir, device=_device(args),
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
    if args.json:
        print(json.dumps({"stores": rows, "wall_s": round(time.monotonic() - tic, 3)}))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from edray.ui import serve_ui
    from edray.workdir import resolve_workdir

    return serve_ui(resolve_workdir(args.workdir), port=args.port, host=args.host, tracking_uri=args.tracking_uri)


def _cmd_report(args: argparse.Namespace) -> int:
    from edray.report import write_report
    from edray.workdir import resolve_workdir

    out = write_report(args.experiment, resolve_workdir(args.workdir), Path(args.output),
                       tracking_uri=args.tracking_uri)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edray", description="Tune Education Distillation recipes at cluster scale.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a spec or a cluster file; exit 0, or one line and exit 2")
    _add_common(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("teach", help="train the spec's teachers and save their checkpoints")
    _add_common(p)
    p.add_argument("--force", action="store_true", help="retrain teachers that already exist")
    p.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    p.set_defaults(func=_cmd_teach)

    p = sub.add_parser("train", help="one training run of the spec's method (ed, kd, mtkd, ce)")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    p.add_argument("--save-model", metavar="FILE", help="save the finished student (a plain torch module)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("precompute", help="store every teacher's logits in Arrow files for trials to read")
    _add_common(p)
    p.add_argument("--views", type=int, metavar="V", help="views per training sample (default: teachers.views)")
    p.add_argument("--verify", action="store_true", help="check every store against its manifest checksums")
    p.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    p.set_defaults(func=_cmd_precompute)

    p = sub.add_parser("sweep", help="search ED recipes with Ray Tune + Optuna, every trial in MLflow")
    _add_common(p)
    p.add_argument("--num-samples", type=int, metavar="N", help="trials (default: search.num_samples)")
    p.add_argument("--max-concurrent", type=int, metavar="K", help="trials at once (default: search.max_concurrent)")
    p.add_argument("--address", metavar="ADDR",
                   help="join a running Ray cluster (e.g. auto); default: start a local one")
    p.add_argument("--resume", action="store_true", help="continue the last sweep of this spec")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the space and sampled configs, train nothing")
    p.add_argument("--no-final-eval", action="store_true", help="skip the final test evaluation of the best config")
    p.add_argument("--compare", metavar="METHODS",
                   help="also sweep these baselines like ED, same trials and budget, and tabulate (e.g. kd,mtkd,ce)")
    p.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("best", help="write the best config of a sweep as a spec for `edray train`")
    p.add_argument("experiment", metavar="EXPERIMENT", help="MLflow experiment (the spec's name)")
    p.add_argument("-o", "--output", default="best.yaml", metavar="FILE", help="where to write it (default best.yaml)")
    _add_tracking_uri(p)
    _add_common(p, spec=False)
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("ui", help="open the MLflow UI on the work directory's store (127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, metavar="P", help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else is "
                   "reachable from the network)")
    _add_tracking_uri(p)
    _add_common(p, spec=False)
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("report", help="write one self-contained HTML page about a sweep")
    p.add_argument("experiment", metavar="EXPERIMENT", help="MLflow experiment (the spec's name)")
    p.add_argument("-o", "--output", default="report.html", metavar="FILE",
                   help="where to write it (default report.html)")
    _add_tracking_uri(p)
    _add_common(p, spec=False)
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise EdrayError("--threads", f"must be >= 1, got {args.threads}", "pass a positive count")
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
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

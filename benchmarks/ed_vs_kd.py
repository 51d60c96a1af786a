"""ED vs KD vs MTKD vs CE on digits, made fair: paired seeds, teachers that help, a long enough budget.

What makes it fair, and what it reports:

- **Paired seeds.** Every method trains once per seed (``--seeds``, default 10) on the same
  split; the table gives mean ± std and, per method, the paired difference to ED (and to
  the authors' ED recipe) with its 95 % t-interval over seeds.
- **Does a teacher help at all?** KD - CE, paired, is printed first: where the interval is
  not above zero, the teachers do not help on this data, and no distillation method
  (ED included) can be expected to beat CE.
- **Low data cuts only the student's data.** Teachers are trained once on the full
  training split (as distillation is used) and given to the low-data runs by checkpoint;
  only the student sees ``--low-fraction`` of the training split.
- **Budget.** ``--epochs`` (default 80: KD has converged on digits by then) for every
  method. ED runs twice: edray's recipe (the spec's switches scaled to the budget, cosine
  LR) and the authors' (switches at 62.5 % / 75 % of the epochs, LR x0.1 at 62.5 / 75 /
  87.5 %, as their 240-epoch CIFAR schedule with 150 / 180 / 210).
- ``--student resnet20``: the authors' student (stem + stage 1 / stage 2 / stage 3 as
  the three segments) instead of the small CNN.
- ``--tuned N``: each method is first tuned with ``edray sweep --compare`` (N configs per
  method, same early stopping), and the seeded runs use each method's best config.

    python benchmarks/ed_vs_kd.py [--seeds 10] [--epochs 80] [--student resnet20] [--tuned 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from edray.data import load_data
from edray.layout import Layout
from edray.pipeline import teach, train
from edray.spec import Spec, load_spec, spec_from_dict
from edray.stats import paired_difference

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits.yaml"
METHODS = ["ed", "ed_authors", "kd", "mtkd", "ce"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4f} ± {statistics.pstdev(xs):.4f}" if xs else "-"


def _base(args) -> list[str]:
    """The spec every method shares: budget and student (switches scaled from the shipped 8/16 of 40)."""
    e = args.epochs
    return [*args.overrides, f"optim.epochs={e}", f"student.arch={args.student}",
            f"ed.switch_epochs=[{round(8 * e / 40)}, {round(16 * e / 40)}]"]


def _method_spec(base: Spec, method: str) -> Spec:
    raw = base.model_dump(mode="json")
    raw["search"] = None
    e = base.optim.epochs
    if method == "ed_authors":
        raw["method"] = "ed"
        raw["ed"]["switch_epochs"] = [round(0.625 * e), round(0.75 * e)]
        raw["optim"]["schedule"] = {"kind": "multistep", "milestones": [round(0.625 * e), round(0.75 * e),
                                                                        round(0.875 * e)], "gamma": 0.1}
    else:
        raw["method"] = method
    return spec_from_dict(raw)


def _tuned_specs(args, base_overrides: list[str], workdir: Path) -> dict[str, dict[str, Any]]:
    """Each method's best config (its sweep's ``best.yaml``) from ``--compare`` sweeps of ``--tuned`` configs
    each, on the full data."""
    import yaml

    from edray.distributed.compare import method_spec, run_compare
    from edray.distributed.sweep import SweepOptions

    spec = load_spec(DIGITS, base_overrides)
    options = SweepOptions(num_samples=args.tuned, progress=False, final_eval=False)
    _, rows = run_compare(spec, Layout.at(workdir), options, ["kd", "mtkd", "ce"], log=_log)
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = spec.name if row.method == "ed" else method_spec(spec, row.method).name
        best = yaml.safe_load((workdir / "sweeps" / name / "best.yaml").read_text())
        out[row.method] = {"best": best, "best_val_acc": row.best_val_acc, "epochs": row.epochs}
    return out


def run_setting(name: str, specs: dict[str, Spec], seeds: int, workdir: Path, data) -> dict:
    out: dict = {"setting": name, "methods": {}}
    for method, spec in specs.items():
        accs, grades, tic = [], {}, time.monotonic()
        for seed in range(seeds):
            s = spec_from_dict({**spec.model_dump(mode="json"), "seed": seed})
            result = train(s, Layout.at(workdir), data=data)
            accs.append(result.test_acc)
            for g, acc in result.summary()["val_acc_seen_per_grade"].items():
                grades.setdefault(g, []).append(acc)
        out["methods"][method] = {"test_acc": accs, "per_grade": grades, "wall_s": time.monotonic() - tic}
        _log(f"  {name:<9} {method:<10} test_acc {_fmt(accs)}  ({time.monotonic() - tic:.0f}s)")
    return out


def _paired(methods: dict, a: str, b: str) -> dict[str, float | None] | None:
    if a not in methods or b not in methods:
        return None
    d = paired_difference(methods[a]["test_acc"], methods[b]["test_acc"])
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n}


def _settings(args, workdir: Path) -> list[tuple[str, dict[str, Spec], Any]]:
    """(name, method -> spec, data) for the full and the low-data setting; teachers trained on full data."""
    base = load_spec(DIGITS, _base(args))
    full_data = load_data(base.dataset)
    checkpoints = teach(base, Layout.at(workdir), data=full_data)
    from edray.distill.teachers import teacher_path

    paths = [str(teacher_path(base, i, full_data, Layout.at(workdir))) for i in range(len(checkpoints))]
    tuned = _tuned_specs(args, _base(args), workdir / "tuning") if args.tuned else {}
    out = []
    for name, fraction in (("full", None), ("low-data", args.low_fraction)):
        specs = {}
        for method in args.methods:
            source = tuned.get("ed" if method == "ed_authors" else method)
            raw = (source["best"] if source else base.model_dump(mode="json")) | {}
            raw = json.loads(json.dumps(raw))
            raw["search"] = None
            for i, path in enumerate(paths):  # the full-data teachers, by checkpoint
                raw["teachers"]["models"][i]["checkpoint"] = path
            if fraction is not None:
                raw["dataset"]["train_fraction"] = fraction
            specs[method] = _method_spec(spec_from_dict(raw), method)
        data = full_data if fraction is None else load_data(specs[args.methods[0]].dataset)
        out.append((name, specs, data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=80, help="epoch budget of every method")
    parser.add_argument("--low-fraction", type=float, default=0.1, help="student's train_fraction in the low-data run")
    parser.add_argument("--student", default="cnn_small", help="student architecture (e.g. resnet20)")
    parser.add_argument("--tuned", type=int, default=0, metavar="N", help="tune every method with N configs first")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--settings", default="full,low-data", help="full, low-data or both")
    parser.add_argument("--workdir", help="work directory (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra spec overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(1)
    tic = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edray-edkd-"))
    wanted = set(args.settings.split(","))
    results = []
    for name, specs, data in _settings(args, workdir):
        if name in wanted:
            results.append(run_setting(name, specs, args.seeds, workdir, data))

    print(f"\nED vs baselines on digits: {args.seeds} paired seeds, {args.epochs} epochs, student {args.student}, "
          f"teachers trained on the full training split{', every method tuned' if args.tuned else ''}")
    print(f"{'setting':<10}" + "".join(f"{m:>20}" for m in args.methods))
    for r in results:
        print(f"{r['setting']:<10}" + "".join(f"{_fmt(r['methods'][m]['test_acc']):>20}" for m in args.methods))
    summary: dict[str, Any] = {"seeds": args.seeds, "epochs": args.epochs, "student": args.student,
                               "tuned": args.tuned, "settings": {}}
    for r in results:
        m = r["methods"]
        teacher = _paired(m, "kd", "ce")
        print(f"\n{r['setting']}: paired differences in test accuracy, mean [95 % interval] over seeds")
        if teacher is not None:
            helps = teacher["low"] is not None and teacher["low"] > 0
            verdict = ("the teachers help" if helps else
                       "the teachers do NOT help here: no distillation method can be expected to beat CE")
            print(f"  teacher check, KD - CE: {teacher['mean']:+.4f} [{teacher['low']:+.4f}, {teacher['high']:+.4f}]"
                  f" -> {verdict}")
        diffs = {}
        for other in args.methods:
            for ref in ("ed", "ed_authors"):
                if other != ref and ref in m and not (ref == "ed_authors" and other == "ed"):
                    d = _paired(m, other, ref)
                    diffs[f"{other}-{ref}"] = d
                    print(f"  {other} - {ref}: {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        summary["settings"][r["setting"]] = {
            "methods": {k: {"mean": statistics.fmean(v["test_acc"]), "std": statistics.pstdev(v["test_acc"]),
                            "test_acc": v["test_acc"], "per_grade": v["per_grade"]} for k, v in m.items()},
            "teacher_check_kd_minus_ce": teacher, "paired": diffs,
        }
    print(f"\nwall {time.monotonic() - tic:.0f}s")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

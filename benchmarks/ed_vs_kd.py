"""ED vs KD vs MTKD vs CE at the same epoch budget on digits, over several seeds.

Every method runs in the same loop, on the same data split, with the same teachers and
the same number of epochs; only the method differs. Two settings: the full training
set, and a low-data one (``--low-fraction`` of it). Prints mean ± std test accuracy and
ED's per-grade validation accuracy on the classes seen in that grade.

    python benchmarks/ed_vs_kd.py --seeds 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edray.data import load_data
from edray.pipeline import teach, train
from edray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["ed", "kd", "mtkd", "ce"]


def _fmt(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4f} ± {statistics.pstdev(xs):.4f}" if xs else "-"


def run_setting(name: str, base: list[str], seeds: int, workdir: Path) -> dict:
    out: dict = {"setting": name, "methods": {}}
    spec = load_spec(ROOT / "search_spaces" / "digits.yaml", base)
    data = load_data(spec.dataset)
    teach(spec, workdir, data=data)
    for method in METHODS:
        accs, grades = [], {}
        for seed in range(seeds):
            s = load_spec(ROOT / "search_spaces" / "digits.yaml", [*base, f"method={method}", f"seed={seed}"])
            result = train(s, workdir, data=data)
            accs.append(result.test_acc)
            for g, acc in result.summary()["val_acc_seen_per_grade"].items():
                grades.setdefault(g, []).append(acc)
        out["methods"][method] = {"test_acc": accs, "per_grade": grades}
        print(f"  {name:<9} {method:<5} test_acc {_fmt(accs)}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--low-fraction", type=float, default=0.1, help="train_fraction of the low-data setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra spec overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tic = time.monotonic()
    low = [*args.overrides, f"dataset.train_fraction={args.low_fraction}"]
    settings = [("full", list(args.overrides)), ("low-data", low)]
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name, base in settings:
            results.append(run_setting(name, base, args.seeds, Path(d) / name))

    print(f"\nED vs baselines on digits, {args.seeds} seeds, same epochs and teachers (test accuracy, mean ± std)")
    print(f"{'setting':<10}" + "".join(f"{m:>20}" for m in METHODS))
    for r in results:
        print(f"{r['setting']:<10}" + "".join(f"{_fmt(r['methods'][m]['test_acc']):>20}" for m in METHODS))
    print("\nED per-grade validation accuracy on the classes seen in that grade (end of grade):")
    for r in results:
        grades = r["methods"]["ed"]["per_grade"]
        print(f"{r['setting']:<10}" + "".join(f"  grade {g}: {_fmt(v)}" for g, v in sorted(grades.items())))
    print(f"\nwall {time.monotonic() - tic:.0f}s")
    if args.json:
        summary = {
            r["setting"]: {m: {"mean": statistics.fmean(v["test_acc"]), "std": statistics.pstdev(v["test_acc"])}
                           for m, v in r["methods"].items()}
            for r in results
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

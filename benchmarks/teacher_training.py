"""Wall time and validation accuracy of ``edray teach`` on digits (every teacher trained afresh).

Run it on two checkouts one after the other, on the same machine, to compare teacher
training before and after a change (``PYTHONPATH`` picks the checkout):

    PYTHONPATH=/path/to/checkout python benchmarks/teacher_training.py [--repeats 3] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edray
from edray.data import load_data
from edray.layout import Layout
from edray.pipeline import teach
from edray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="spec override")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(ROOT / "search_spaces" / "digits.yaml", args.set)
    data = load_data(spec.dataset)
    walls, cpus, accs = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as workdir:
            tic, cpu = time.perf_counter(), time.process_time()
            teachers = teach(spec, Layout.at(workdir), data=data, force=True)
            walls.append(time.perf_counter() - tic)
            cpus.append(time.process_time() - cpu)  # CPU time: fairer than wall time on a shared machine
            accs.append([round(t.val_acc, 4) for t in teachers])
    print(json.dumps({
        "code": str(Path(edray.__file__).resolve().parents[1]),
        "teachers": [f"{t.arch} x{t.train.epochs} epochs" for t in spec.teachers.models],
        "wall_s": [round(w, 2) for w in walls], "wall_s_median": round(statistics.median(walls), 2),
        "cpu_s": [round(c, 2) for c in cpus], "cpu_s_median": round(statistics.median(cpus), 2),
        "val_acc": accs,
    }))


if __name__ == "__main__":
    main()

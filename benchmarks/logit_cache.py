"""What the Arrow logit store buys: epoch time with no teacher, live teachers, and the store.

One run, side by side: the same student (``cnn_small``), the same data (synthetic, 10
classes, 32 px, 3 channels, held in memory so that image synthesis does not hide the
teachers' cost), the same loop and epochs. Three variants of ``mtkd`` (the full student
from epoch 0, three shared ``cnn_large`` teachers averaged on every sample):

- ``ce``: no teacher (the floor);
- ``live``: the three teachers run on every batch;
- ``cached``: their logits are read from the Arrow stores ``edray precompute`` builds.

The variants run in turns, ``--rounds`` times ``--epochs`` epochs each, so load from other
processes spreads over all three; each variant's epoch time is the median. Then the store's
read throughput is set against a plain NumPy memory map of the same float16 bytes, doing
the same random row/view gather into a float32 tensor, and the bytes one sample-view costs.

    python benchmarks/logit_cache.py [--rounds 2] [--epochs 3] [--views 8] [--json]

Targets on a laptop-class CPU, one torch thread: cached_over_ce <= 1.15,
live_over_cached >= 2.0, store read >= half the memory-map rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edray.data import DataSplits, TensorImageSet, load_data
from edray.distill.loop import run_ed
from edray.layout import Layout
from edray.logits import StoreKey, open_store, write_store
from edray.models import build_backbone
from edray.models.flops import count_macs
from edray.pipeline import make_teacher_logits, teach
from edray.preparation import precompute_stores
from edray.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
STUDENT, TEACHER = "cnn_small", "cnn_large"


def _spec(args: argparse.Namespace, *extra: str) -> Spec:
    overrides = [
        "method=mtkd", f"student.arch={STUDENT}", f"teachers.views={args.views}",
        "dataset.name=synthetic", "dataset.num_classes=10", f"dataset.samples_per_class={args.per_class}",
        "dataset.channels=3", "dataset.image_size=32", "dataset.augmentation.crop_padding=2",
        "dataset.augmentation.hflip=true", f"optim.epochs={args.epochs}", "optim.batch_size=64",
        "ed.grades=1", "ed.split_ratios=[1.0]", "ed.temperatures=[4.0]", "ed.switch_epochs=[]",
        *(f"teachers.models[{i}].{f}" for i in range(3) for f in (f"arch={TEACHER}", "train.epochs=1")),
        *extra,
    ]
    return load_spec(ROOT / "search_spaces" / "digits.yaml", overrides)


def _in_memory(data: DataSplits) -> DataSplits:
    """The same splits (same rows, labels and fingerprint) with pixels synthesised once."""

    def held(images):
        x = images.load(torch.arange(len(images)))
        return TensorImageSet(x, images.labels, mean=0.0, std=1.0)  # already normalised

    return dataclasses.replace(data, train=held(data.train), val=held(data.val), test=held(data.test))


def _epoch_times(spec: Spec, data: DataSplits, teachers) -> tuple[list[float], list[float]]:
    """Wall seconds (the loop's own ``epoch_s``) and this process's CPU seconds of each epoch.

    With one torch thread the CPU time is the work done, whatever else the machine runs;
    the wall time is what a user waits.
    """
    wall: list[float] = []
    cpu: list[float] = []
    last = time.process_time()

    def progress(m) -> None:
        nonlocal last
        now = time.process_time()
        wall.append(m.epoch_s)
        cpu.append(now - last)
        last = now

    run_ed(spec, data, teachers, progress=progress, evaluate_test=False)
    return wall, cpu


def _macs_ratio(data: DataSplits) -> tuple[int, int]:
    shape = (data.in_channels, data.image_size, data.image_size)
    kw = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    return count_macs(build_backbone(STUDENT, **kw), shape), count_macs(build_backbone(TEACHER, **kw), shape)


def _time_reads(read, batches: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> float:
    """CPU seconds of the fastest of ``repeats`` passes over ``batches``, after a warm-up pass
    (page cache warm): the least disturbed by other processes, as usual for a micro-benchmark."""
    for rows, views in batches:
        read(rows, views)
    runs = []
    for _ in range(repeats):
        tic = time.process_time()
        for rows, views in batches:
            read(rows, views)
        runs.append(time.process_time() - tic)
    return min(runs)


def read_throughput(workdir: Path, *, rows: int, views: int, outputs: int, batch: int, repeats: int = 7) -> dict:
    """GB/s of the store's random (row, view) gather vs a NumPy memory map of the same bytes."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, views, outputs), dtype=np.float32).astype(np.float16)
    key = StoreKey(
        teacher_arch="bench", teacher_sha256="0" * 64, dataset_name="bench", dataset_split="train",
        dataset_samples=rows, dataset_fingerprint="bench", crop_padding=0, hflip=False, image_size=None,
        normalisation="", views=views, seed=0,
    )
    path = write_store(workdir / "read", key, rows=rows, views=views, outputs=outputs, sample_ids=np.arange(rows),
                       compute_shard=lambda a, b: logits[a:b])
    store = open_store(path, key)
    np.save(workdir / "read.npy", logits)
    mapped = np.asarray(np.load(workdir / "read.npy", mmap_mode="r"))  # a plain ndarray over the map
    order = rng.permutation(rows)
    batches = [(order[s : s + batch], rng.integers(0, views, len(order[s : s + batch])))
               for s in range(0, rows, batch)]

    def from_memmap(r: np.ndarray, v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(mapped[r, v]).float()

    assert torch.equal(store.logits(*batches[0]), from_memmap(*batches[0]))
    gathered = rows * outputs * 2  # float16 bytes each pass brings in
    store_s = _time_reads(store.logits, batches, repeats)
    memmap_s = _time_reads(from_memmap, batches, repeats)
    return {
        "read_rows": rows, "read_views": views, "read_outputs": outputs, "read_batch": batch,
        "store_read_gbps": gathered / store_s / 1e9, "memmap_read_gbps": gathered / memmap_s / 1e9,
        "read_store_bytes": store.nbytes, "read_raw_bytes": logits.nbytes, "read_shards": len(store.manifest.shards),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="turns of (ce, live, cached) runs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--views", type=int, default=8, help="stored views per training sample")
    parser.add_argument("--per-class", type=int, default=60, help="synthetic training samples per class")
    parser.add_argument("--read-rows", type=int, default=50_000, help="rows of the read-throughput store")
    parser.add_argument("--read-outputs", type=int, default=100, help="logits per view of that store")
    parser.add_argument("--read-batch", type=int, default=1024, help="rows per gather")
    parser.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tic = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        spec, live_spec = _spec(args, "teachers.logits=precomputed"), _spec(args, "teachers.logits=live")
        data = _in_memory(load_data(spec.dataset))
        student_macs, teacher_macs = _macs_ratio(data)
        log(f"data: {len(data.train)} train images {data.in_channels}x{data.image_size}x{data.image_size}; "
            f"{TEACHER} teacher = {teacher_macs / student_macs:.1f}x the MACs of the {STUDENT} student")
        teach(spec, Layout.at(workdir), data=data)
        t0, c0 = time.monotonic(), time.process_time()
        infos = precompute_stores(spec, data, Layout.at(workdir))
        precompute_s, precompute_cpu_s = time.monotonic() - t0, time.process_time() - c0
        train_stores = [i for i in infos if i.split == "train"]
        log(f"precompute: {len(infos)} stores in {precompute_s:.1f}s ({precompute_cpu_s:.1f}s cpu)")

        sources = {
            "ce": (_spec(args, "method=ce"), None),
            "live": (live_spec, make_teacher_logits(live_spec, data, Layout.at(workdir))),
            "cached": (spec, make_teacher_logits(spec, data, Layout.at(workdir))),
        }
        times: dict[str, list[float]] = {name: [] for name in sources}
        cpu_times: dict[str, list[float]] = {name: [] for name in sources}
        for s, teachers in sources.values():  # warm-up: first-call allocations and kernel set-up, not timed
            _epoch_times(s.model_copy(update={"optim": s.optim.model_copy(update={"epochs": 1})}), data, teachers)
        for r in range(args.rounds):
            for name, (s, teachers) in sources.items():
                wall, cpu = _epoch_times(s, data, teachers)
                times[name] += wall
                cpu_times[name] += cpu
                shown = " ".join(f"{w:.2f}s ({c:.2f}s cpu)" for w, c in zip(wall, cpu))
                log(f"round {r + 1}/{args.rounds} {name:<6} epochs {shown}")
        epoch = {name: statistics.median(ts) for name, ts in times.items()}
        epoch_cpu = {name: statistics.median(ts) for name, ts in cpu_times.items()}
        reads = read_throughput(workdir, rows=args.read_rows, views=args.views, outputs=args.read_outputs,
                                batch=args.read_batch)

    store = train_stores[0]
    per_view = store.nbytes / (store.rows * store.views)
    summary = {
        "student": STUDENT, "teacher": TEACHER, "teachers": 3, "teacher_over_student_macs": teacher_macs / student_macs,
        "train_rows": len(data.train), "views": args.views, "epochs_per_variant": args.rounds * args.epochs,
        "epoch_s_ce": epoch["ce"], "epoch_s_live": epoch["live"], "epoch_s_cached": epoch["cached"],
        "cached_over_ce": epoch["cached"] / epoch["ce"], "live_over_cached": epoch["live"] / epoch["cached"],
        "epoch_cpu_s_ce": epoch_cpu["ce"], "epoch_cpu_s_live": epoch_cpu["live"],
        "epoch_cpu_s_cached": epoch_cpu["cached"], "cpu_cached_over_ce": epoch_cpu["cached"] / epoch_cpu["ce"],
        "cpu_live_over_cached": epoch_cpu["live"] / epoch_cpu["cached"],
        "precompute_s": precompute_s, "precompute_cpu_s": precompute_cpu_s,
        "break_even_epochs": precompute_cpu_s / max(1e-9, epoch_cpu["live"] - epoch_cpu["cached"]),
        "bytes_per_sample_view": per_view, "raw_bytes_per_sample_view": 2 * data.num_classes,
        **reads, "read_store_over_memmap": reads["store_read_gbps"] / reads["memmap_read_gbps"],
        "wall_s": time.monotonic() - tic,
    }
    print(f"\nlogit cache on {len(data.train)} synthetic 32 px images, {STUDENT} student, 3 x {TEACHER} teachers "
          f"({summary['teacher_over_student_macs']:.1f}x the student's MACs each), mtkd, 1 thread")
    print(f"  epoch time (median of {summary['epochs_per_variant']}):  ce {epoch['ce']:.2f}s   "
          f"live {epoch['live']:.2f}s   cached {epoch['cached']:.2f}s")
    print(f"  epoch CPU time (median):        ce {epoch_cpu['ce']:.2f}s   live {epoch_cpu['live']:.2f}s   "
          f"cached {epoch_cpu['cached']:.2f}s")
    print(f"  cached / ce   {summary['cached_over_ce']:.3f} wall, {summary['cpu_cached_over_ce']:.3f} cpu   "
          "(target <= 1.15)")
    print(f"  live / cached {summary['live_over_cached']:.2f} wall, {summary['cpu_live_over_cached']:.2f} cpu     "
          "(target >= 2.0)")
    print(f"  precompute {precompute_s:.1f}s, {precompute_cpu_s:.1f}s cpu ({args.views} views): pays off after "
          f"{summary['break_even_epochs']:.1f} epochs of one run (by cpu time), and every run of a sweep reuses it")
    print(f"  store read {reads['store_read_gbps']:.2f} GB/s vs NumPy memmap {reads['memmap_read_gbps']:.2f} GB/s "
          f"= {summary['read_store_over_memmap']:.2f} (target >= 0.5); random gathers of {args.read_batch} rows, "
          f"{args.read_rows} x {args.views} x {args.read_outputs} float16 in {reads['read_shards']} shards")
    print(f"  bytes per sample-view: {per_view:.1f} in the store, {2 * data.num_classes} of raw float16 logits "
          f"({store.rows} rows x {store.views} views x {data.num_classes} classes)")
    print(f"  wall {summary['wall_s']:.0f}s")
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    main()

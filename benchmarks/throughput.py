"""Input and step throughput on a JPEG folder: plain torchvision vs edray, fp32 vs mixed precision.

Makes a JPEG folder in the Caltech-256 layout under a temp dir (``--classes`` folders,
``--images`` images of varied sizes, 150-600 px a side), then measures, side by side:

- ``imagefolder_img_s``: torchvision ``ImageFolder`` + ``DataLoader`` (Resize(224),
  CenterCrop(224), ToTensor, Normalize; ``--workers`` processes): what a user writes by hand;
- ``edray_decode_img_s``: edray's file pipeline with the cache off (same workers), views applied;
- ``cache_build_s``, ``cache_bytes_per_image``: decoding every image once into the cache;
- ``edray_cache_img_s``: edray reading the decoded cache (uint8 rows gathered from the
  memory map), views (crop 16 px padding + flip) cut and normalised, in the training
  process as a CPU run does (on ``--workers`` threads, not processes: for in-memory rows a
  process costs more CPU than it saves); a GPU run cuts the views on the device;
- ``step_fp32_img_s``, ``step_amp_img_s``: resnet18 training steps at 224 px from an
  in-memory batch on the best device present (CUDA: bf16 or fp16 autocast, channels_last;
  CPU: bf16 autocast);
- on CUDA only, ``ed_epoch_cached_s`` / ``ed_epoch_memory_s``: one ED epoch of resnet18 fed
  from the cache vs from in-memory tensors of the same pixels (their ratio says whether the
  GPU, not the input, sets the pace).

Each input figure is the best of ``--rounds`` full passes (other processes share the CPUs),
with the CPU milliseconds per image it cost (this process and its loader workers): the
wall rates depend on what else the machine runs, the CPU costs do not.

    python benchmarks/throughput.py [--images 3000] [--classes 257] [--workers N] [--json]

Targets: edray_cache_img_s >= 5 x imagefolder_img_s on a 2-core machine; on a CUDA GPU,
step_amp_img_s >= 2 x step_fp32_img_s and ed_epoch_cached_s <= 1.15 x ed_epoch_memory_s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edray.data import BatchLoader, LoaderSettings
from edray.data.folders import load_caltech256
from edray.data.image_cache import cache_image_set
from edray.distill.precision import configure_backends, prepare_model, resolve_precision, to_device
from edray.models import build_backbone
from edray.spec import AugmentSpec, DatasetSpec

SIZE = 224
AUG = AugmentSpec(crop_padding=16, hflip=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_folder(root: Path, *, classes: int, images: int, seed: int = 0) -> Path:
    """Caltech-256 layout: ``256_ObjectCategories/NNN.name/NNN_XXXX.jpg``, photo-like JPEGs.

    Each image is smooth colour structure (a small random image upscaled) plus grain, so
    it compresses like a photograph rather than like noise or a flat field.
    """
    rng = np.random.default_rng(seed)
    base = root / "256_ObjectCategories"
    for i in range(images):
        c = i % classes
        folder = base / f"{c + 1:03d}.class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(150, 601, 2))
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        grain = rng.normal(0, 12, (h, w, 3))
        pixels = np.clip(np.asarray(small, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{c + 1:03d}_{i:04d}.jpg", quality=90)
    return root


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (loader workers end with their pass)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _best_rate(n: int, passes, rounds: int) -> tuple[float, float]:
    """(images per wall second, CPU milliseconds per image) of the fastest of ``rounds`` passes.

    The CPU figure does not depend on what else the machine runs; the wall figure does.
    """
    best, cpu = float("inf"), float("nan")
    for _ in range(rounds):
        tic, cpu0 = time.perf_counter(), _cpu_s()
        passes()
        wall = time.perf_counter() - tic
        if wall < best:
            best, cpu = wall, _cpu_s() - cpu0
    return n / best, 1e3 * cpu / n


def imagefolder_rate(root: Path, *, workers: int, batch: int, rounds: int) -> tuple[float, float]:
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = torchvision.datasets.ImageFolder(str(root / "256_ObjectCategories"), transform=tf)
    # Workers end with each pass, so their CPU time is counted (the spawn is a few ms of a pass).
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)

    def one_pass() -> None:
        for x, _ in loader:
            x.sum()  # touch it, as a training step would

    return _best_rate(len(dataset), one_pass, rounds)


def edray_rate(images, *, workers: int, batch: int, rounds: int) -> tuple[float, float]:
    """A CPU run's input: the loader's workers read (or decode) rows and cut the views."""
    loader = BatchLoader(images, LoaderSettings(num_workers=workers, prefetch_factor=2 if workers else None),
                         views=(0, AUG))
    epoch = [0]

    def one_pass() -> None:
        epoch[0] += 1
        gen = torch.Generator().manual_seed(epoch[0])
        order = torch.randperm(len(images), generator=gen)
        views = torch.randint(1, 2**31 - 1, (len(images),), generator=gen)
        for x, _, _ in loader.batches(order, batch, views=views):
            x.sum()  # touch it, as a training step would

    return _best_rate(len(images), one_pass, rounds)


def step_rates(device: str, *, batch: int, steps: int) -> tuple[float, float, str]:
    """(fp32 img/s, amp img/s, amp name) of resnet18 training steps at 224 px."""
    configure_backends(deterministic=False, device=device)
    amp = resolve_precision("auto" if device == "cuda" else "bf16", device)
    rates = []
    for precision in (resolve_precision("fp32", device), amp):
        torch.manual_seed(0)
        model = prepare_model(build_backbone("resnet18", num_classes=257, in_channels=3, image_size=SIZE), device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = precision.grad_scaler()
        x = to_device(torch.randn(batch, 3, SIZE, SIZE), device)
        y = torch.randint(0, 257, (batch,), device=device)

        def step() -> None:
            with precision.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        for _ in range(1 if device == "cpu" else 10):  # warm-up (cudnn.benchmark picks kernels here)
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - tic))
        _log(f"  resnet18 step {precision.name}: {rates[-1]:.1f} img/s")
    return rates[0], rates[1], amp.name


def ed_epochs(root: Path, workdir: Path, *, device: str = "cuda", size: int = SIZE) -> tuple[float, float]:
    """One ED epoch of resnet18 on the cached data vs the same pixels held as tensors (run on CUDA)."""
    import dataclasses

    from edray.data import TensorImageSet, load_data
    from edray.data.imagesets import SubsetImageSet
    from edray.distill.loop import run_ed
    from edray.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "caltech256.yaml", [
        f"dataset.root={root}", f"dataset.image_size={size}", "method=ce", "optim.epochs=2", "ed.switch_epochs=[1]",
        "ed.grades=2", "ed.split_ratios=[0.5, 0.5]", "ed.temperatures=[4.0, 4.0]", "deterministic=false",
        "scaling.resources_per_worker={CPU: %d, GPU: 1}" % _cpus(),
    ])
    cached = load_data(spec.dataset, image_cache=workdir / "images")
    base = cached.train.base
    pixels = torch.from_numpy(base.load_uint8(torch.arange(len(base)))).permute(0, 3, 1, 2).contiguous()
    held = TensorImageSet(pixels, base.labels, mean=base.mean.flatten().tolist(), std=base.std.flatten().tolist())
    memory = dataclasses.replace(cached, train=SubsetImageSet(held, cached.train.rows),
                                 val=SubsetImageSet(held, cached.val.rows))
    times = []
    for data in (cached, memory):
        result = run_ed(spec, data, None, device=device, evaluate_test=False)
        times.append(result.history[-1].epoch_s)  # the second epoch: kernels picked, workers warm
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=257)
    parser.add_argument("--workers", type=int, default=_cpus(), help="loader processes (default: usable CPUs)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="passes per input measurement (best is kept)")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps (default: 3 on CPU, 50 on CUDA)")
    parser.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    args = parser.parse_args()
    # The input measurements run the training process on one torch thread (as Ray gives a
    # one-CPU worker; more threads spin against the loader processes on 2 busy cores);
    # the training steps use every core.
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({_cpus()} cores)"
    out: dict = {"device": name, "images": args.images, "classes": args.classes, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="edray-throughput-") as tmp:
        root = Path(tmp) / "data"
        tic = time.perf_counter()
        make_folder(root, classes=args.classes, images=args.images)
        _log(f"made {args.images} JPEGs in {args.classes} classes in {time.perf_counter() - tic:.1f}s")

        rate, cpu = imagefolder_rate(root, workers=args.workers, batch=args.batch, rounds=args.rounds)
        out.update(imagefolder_img_s=rate, imagefolder_cpu_ms_per_img=cpu)
        _log(f"torchvision ImageFolder: {rate:.1f} img/s, {cpu:.2f} CPU ms/image")

        spec = DatasetSpec(name="caltech256", root=str(root), image_size=SIZE)
        files = load_caltech256(spec)
        rate, cpu = edray_rate(files.train, workers=args.workers, batch=args.batch, rounds=args.rounds)
        out.update(edray_decode_img_s=rate, edray_decode_cpu_ms_per_img=cpu)
        _log(f"edray, cache off: {rate:.1f} img/s, {cpu:.2f} CPU ms/image")

        tic = time.perf_counter()
        cached = cache_image_set(files.train, Path(tmp) / "images", dataset_name="caltech256",
                                 dataset_identity=files.identity, num_workers=args.workers, say=_log)
        out["cache_build_s"] = time.perf_counter() - tic
        out["cache_bytes_per_image"] = cached.nbytes / len(cached)
        rate, cpu = edray_rate(cached, workers=args.workers, batch=args.batch, rounds=args.rounds)
        out.update(edray_cache_img_s=rate, edray_cache_cpu_ms_per_img=cpu)
        _log(f"edray, cache: {rate:.1f} img/s, {cpu:.2f} CPU ms/image (built in {out['cache_build_s']:.1f}s, "
             f"{out['cache_bytes_per_image'] / 1e3:.0f} kB/image)")
        out["cache_over_imagefolder"] = out["edray_cache_img_s"] / out["imagefolder_img_s"]
        out["cache_over_imagefolder_cpu"] = out["imagefolder_cpu_ms_per_img"] / out["edray_cache_cpu_ms_per_img"]

        steps = args.steps or (3 if device == "cpu" else 50)
        batch = 16 if device == "cpu" else 256
        torch.set_num_threads(_cpus())
        fp32, amp, amp_name = step_rates(device, batch=batch, steps=steps)
        out.update(step_fp32_img_s=fp32, step_amp_img_s=amp, step_amp_precision=amp_name, step_batch=batch,
                   amp_over_fp32=amp / fp32)
        if device == "cuda":
            cached_s, memory_s = ed_epochs(root, Path(tmp))
            out.update(ed_epoch_cached_s=cached_s, ed_epoch_memory_s=memory_s,
                       ed_cached_over_memory=cached_s / memory_s)
        else:
            out.update(ed_epoch_cached_s=None, ed_epoch_memory_s=None, ed_cached_over_memory=None)

    out = {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}
    print(f"\nthroughput on {name}, {args.images} JPEGs 150-600 px -> 224 px, {args.workers} loader workers")
    for key in ("imagefolder_img_s", "edray_decode_img_s", "edray_cache_img_s", "cache_over_imagefolder",
                "imagefolder_cpu_ms_per_img", "edray_decode_cpu_ms_per_img", "edray_cache_cpu_ms_per_img",
                "cache_over_imagefolder_cpu",
                "cache_build_s", "cache_bytes_per_image", "step_fp32_img_s", "step_amp_img_s", "amp_over_fp32",
                "ed_epoch_cached_s", "ed_epoch_memory_s", "ed_cached_over_memory"):
        print(f"  {key:<24} {out[key]}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()

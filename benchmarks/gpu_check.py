"""What one CUDA GPU does with edray's training path, in a few minutes, with torch and torchvision.

Made for a GPU machine lent briefly: it needs torch, torchvision and edray's light
dependencies (numpy, pyarrow, pydantic, pyyaml, pillow; run from the repository root), and
never imports Ray, Optuna or MLflow, directly or through edray (the JSON lists any that
got loaded: ``heavy_modules_loaded``). Sections:

- ``cache_vs_memory``: the ED loop's epoch (``run_ed``, resnet18 at 224 px) fed from the
  decoded-image cache (JPEG files decoded once into ``images/``) against the same epoch
  from in-memory uint8 tensors; ``ratio`` = cache / memory (target <= 1.15).
- ``precision``: train steps per second of resnet18 at 224 px in fp32, bf16 autocast and
  fp16 autocast with the grad scaler; then a short run on edray's synthetic dataset in
  each, final test accuracy against fp32 (target: within 1 point).
- ``channels_last``: the same steps with NHWC memory format on and off.
- ``gpu_views``: the crop/flip views cut and normalised from uint8 pixels on the device
  (``pixel_views``) against the same on the CPU, images per second.
- ``sharing``: 1, 2 and 4 processes, each a small student (cnn_small, 32 px) training at
  a quarter of the GPU's memory, for a fixed time: total images per second (do
  fractional-GPU trials pay for small students?).

``--dry-run`` runs every section on the CPU at toy size (CI keeps the script alive).

    python benchmarks/gpu_check.py --json            # one CUDA GPU: under 8 minutes on an H100
    python benchmarks/gpu_check.py --dry-run --json  # CPU, toy size, under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # edray from this checkout, installed or not

import torch  # noqa: E402

HEAVY = ("ray", "optuna", "mlflow")
DIGITS = ROOT / "search_spaces" / "digits.yaml"
# One grade, no teachers: the loop's input path and steps are what is timed.
CE = ["method=ce", "ed.grades=1", "ed.switch_epochs=[]", "ed.split_ratios=[1.0]", "ed.temperatures=[4.0]",
      "search=null"]


@dataclasses.dataclass(frozen=True)
class Size:
    """How big each section runs (full on a GPU, toy with --dry-run)."""

    device: str
    arch: str  # the model of the timed steps and the cache epoch
    image_size: int
    epochs: int  # of the cache epoch's runs: the last one is timed
    folder_images: int  # JPEGs written for the cache epoch
    batch: int
    steps: int  # timed steps per precision / memory format
    synthetic_per_class: int
    synthetic_epochs: int
    share_seconds: float
    share_processes: tuple[int, ...]


FULL = Size("cuda", "resnet18", 224, 2, 6400, 128, 30, 300, 6, 20.0, (1, 2, 4))
DRY = Size("cpu", "cnn_small", 16, 1, 40, 8, 2, 8, 1, 0.5, (1, 2))


def _spec(*overrides: str):
    from edray.spec import load_spec

    return load_spec(DIGITS, [*CE, *overrides])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- the cache against memory


def _write_folder(root: Path, count: int, size: int, classes: int = 10) -> None:
    """``root/train/<class>/*.jpg``: each class a colour with noise (learnable, decodes like photos)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    colours = torch.randint(40, 216, (classes, 3), generator=gen)
    for i in range(count):
        c = i % classes
        folder = root / "train" / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = torch.randint(-40, 41, (size, size, 3), generator=gen)
        pixels = (colours[c] + noise).clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def _in_memory(images):
    """The same rows as uint8 tensors in memory (what a small dataset loads)."""
    from edray.data.imagesets import TensorImageSet

    pixels = images.load_pixels(torch.arange(len(images)))  # uint8 [N, H, W, C]
    mean, std = images.stats
    return TensorImageSet(pixels.permute(0, 3, 1, 2).contiguous(), images.labels, mean=mean.reshape(-1).tolist(),
                          std=std.reshape(-1).tolist())


def cache_vs_memory(size: Size, work: Path) -> dict[str, Any]:
    from edray.data import load_data
    from edray.distill.loop import run_ed

    tic = time.monotonic()
    _write_folder(work / "folder", size.folder_images, size.image_size)
    spec = _spec("dataset.name=imagefolder", f"dataset.root={work / 'folder'}", f"dataset.image_size={size.image_size}",
                 "dataset.augmentation.hflip=true", f"student.arch={size.arch}", f"optim.epochs={size.epochs}",
                 f"optim.batch_size={size.batch}")
    cached = load_data(spec.dataset, image_cache=work / "images")
    prepare_s = time.monotonic() - tic
    memory = dataclasses.replace(cached, train=_in_memory(cached.train), val=_in_memory(cached.val),
                                 test=_in_memory(cached.test))
    out: dict[str, Any] = {"arch": size.arch, "images": len(cached.train), "image_size": size.image_size,
                           "prepare_s": prepare_s,
                           "train_set": type(cached.train).__name__}
    for name, data in (("memory", memory), ("cache", cached)):
        result = run_ed(spec, data, None, device=size.device, evaluate_test=False)
        out[f"{name}_epoch_s"] = result.history[-1].epoch_s  # on a GPU the second: kernels chosen, workers warm
    out["ratio"] = out["cache_epoch_s"] / out["memory_epoch_s"]
    out["target_ratio"] = 1.15
    return out


# ---------------------------------------------------------------------- precision and memory format


def _steps_per_s(size: Size, precision: str, channels_last: bool) -> float:
    """Train steps per second of ``size.arch`` on random batches."""
    from edray.distill.precision import resolve_precision
    from edray.models import build_backbone

    device = size.device
    model = build_backbone(size.arch, num_classes=100, in_channels=3, image_size=size.image_size).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    prec = resolve_precision(precision, device)
    scaler = prec.grad_scaler()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(size.batch, 3, size.image_size, size.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 100, (size.batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):  # cudnn picks its kernels
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(size.steps):
        step()
    _sync(device)
    return size.steps / (time.perf_counter() - tic)


def precision(size: Size) -> dict[str, Any]:
    from edray.data import load_data
    from edray.distill.loop import run_ed

    modes = ["fp32", "bf16", "fp16"] if size.device == "cuda" else ["fp32", "bf16"]  # fp16 is CUDA only
    out: dict[str, Any] = {"arch": size.arch, "batch": size.batch, "image_size": size.image_size, "steps_per_s": {},
                           "test_acc": {}}
    for mode in modes:
        out["steps_per_s"][mode] = _steps_per_s(size, mode, channels_last=size.device == "cuda")
    out["speedup"] = {m: v / out["steps_per_s"]["fp32"] for m, v in out["steps_per_s"].items()}
    spec = _spec("dataset.name=synthetic", f"dataset.samples_per_class={size.synthetic_per_class}",
                 "student.arch=cnn_small", f"optim.epochs={size.synthetic_epochs}", "optim.batch_size=64")
    data = load_data(spec.dataset)
    for mode in modes:
        run = run_ed(spec.model_copy(update={"optim": spec.optim.model_copy(update={"precision": mode})}), data,
                     None, device=size.device)
        out["test_acc"][mode] = run.test_acc
    out["acc_delta_points"] = {m: 100 * (a - out["test_acc"]["fp32"]) for m, a in out["test_acc"].items()}
    out["within_1_point"] = all(abs(d) <= 1.0 for d in out["acc_delta_points"].values())
    return out


def channels_last(size: Size) -> dict[str, Any]:
    mode = "bf16" if size.device == "cuda" else "fp32"
    on, off = _steps_per_s(size, mode, True), _steps_per_s(size, mode, False)
    return {"precision": mode, "on_steps_per_s": on, "off_steps_per_s": off, "speedup": on / off}


# ---------------------------------------------------------------------- views on the device


def gpu_views(size: Size) -> dict[str, Any]:
    from edray.data.views import pixel_views, view_params
    from edray.spec import AugmentSpec

    aug = AugmentSpec(crop_padding=4, hflip=True)
    n, s = size.batch, size.image_size
    pixels = torch.randint(0, 256, (n, s, s, 3), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.5, 0.5]).reshape(1, 3, 1, 1), torch.tensor([0.25] * 3).reshape(1, 3, 1, 1)
    params = view_params(0, torch.arange(n), 1, aug)
    out: dict[str, Any] = {"batch": n, "image_size": s}
    for where in ("cpu", size.device) if size.device != "cpu" else ("cpu",):
        src, m, sd = pixels.to(where), mean.to(where), std.to(where)
        pixel_views(src, params, aug, m, sd)  # warm
        _sync(where)
        reps = max(3, size.steps)
        tic = time.perf_counter()
        for _ in range(reps):
            views = pixel_views(src, params, aug, m, sd)
        _sync(where)
        out[f"{where}_images_per_s"] = reps * n / (time.perf_counter() - tic)
    if size.device != "cpu":  # the device's views equal the CPU's (same integer crops, same affine)
        cpu = pixel_views(pixels, params, aug, mean, std)
        out["max_abs_diff_vs_cpu"] = float((views.cpu() - cpu).abs().max())
        out["speedup"] = out[f"{size.device}_images_per_s"] / out["cpu_images_per_s"]
    return out


# ---------------------------------------------------------------------- trials sharing a GPU


def _share_worker(device: str, seconds: float, fraction: float, queue) -> None:
    """One small trial: cnn_small on 32 px batches for ``seconds``; puts images trained."""
    from edray.models import build_backbone

    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction)
    model = build_backbone("cnn_small", num_classes=10, in_channels=3, image_size=32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(128, 3, 32, 32, device=device), torch.randint(0, 10, (128,), device=device)
    every = 20 if device == "cuda" else 1  # steps between looks at the clock (a look syncs the GPU)
    images, start = 0, None
    while True:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if start is None:  # the first step (allocations, kernels) is not timed
            _sync(device)
            start = time.perf_counter()
            continue
        images += len(x)
        if images % (len(x) * every) == 0:
            _sync(device)
            if time.perf_counter() - start >= seconds:
                break
    queue.put(images / (time.perf_counter() - start))


def sharing(size: Size) -> dict[str, Any]:
    ctx = mp.get_context("spawn" if size.device == "cuda" else "fork")  # a CUDA context does not survive fork
    out: dict[str, Any] = {"seconds": size.share_seconds, "memory_fraction": 0.25, "total_images_per_s": {}}
    for procs in size.share_processes:
        queue = ctx.Queue()
        workers = [ctx.Process(target=_share_worker, args=(size.device, size.share_seconds, 0.25, queue))
                   for _ in range(procs)]
        for w in workers:
            w.start()
        rates = [queue.get(timeout=600) for _ in workers]
        for w in workers:
            w.join()
        out["total_images_per_s"][str(procs)] = sum(rates)
    base = out["total_images_per_s"][str(size.share_processes[0])]
    out["scaling"] = {k: v / base for k, v in out["total_images_per_s"].items()}
    return out


# ---------------------------------------------------------------------- main


SECTIONS = ("cache_vs_memory", "precision", "channels_last", "gpu_views", "sharing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy size")
    parser.add_argument("--json", action="store_true", help="last line of stdout is a JSON summary")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    args = parser.parse_args()
    size = DRY if args.dry_run else FULL
    if size.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --dry-run runs on the CPU")
    if args.dry_run:
        torch.set_num_threads(1)
    out: dict[str, Any] = {"dry_run": args.dry_run, "torch": torch.__version__, "device": size.device,
                           "device_name": torch.cuda.get_device_name() if size.device == "cuda" else "cpu"}
    tic = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edray-gpu-check-") as tmp:
        runs = {"cache_vs_memory": lambda: cache_vs_memory(size, Path(tmp)), "precision": lambda: precision(size),
                "channels_last": lambda: channels_last(size), "gpu_views": lambda: gpu_views(size),
                "sharing": lambda: sharing(size)}
        for name in args.only or SECTIONS:
            start = time.monotonic()
            out[name] = runs[name]()
            out[name]["wall_s"] = time.monotonic() - start
            print(f"{name}: {json.dumps(out[name], default=str)}", file=sys.stderr, flush=True)
    out["wall_s"] = time.monotonic() - tic
    out["heavy_modules_loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    if args.dry_run:
        out["modules"] = sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")})
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()

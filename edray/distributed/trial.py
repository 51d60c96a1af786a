"""One sweep trial: the ED loop wrapped for Ray Tune, inline or through Ray Train.

Two ways to run a trial, chosen by ``scaling.trainer``:

- ``inline`` (``auto`` with one worker): the Tune function trainable runs the loop
  itself. No nested trainer, no second actor: a few seconds of start-up less per trial,
  which on a small dataset is most of the trial.
- ``torch_trainer`` (``auto`` with several workers): the trainable launches a Ray Train
  ``TorchTrainer`` (Train V2) whose workers run the same loop data-parallel over gloo or
  NCCL, reporting back to Tune through ``TuneReportCallback``. The trial driver itself
  reserves no CPU, or trials deadlock a small machine.

Either way each epoch reports its metrics and a checkpoint (the loop's whole state), so
a restarted trial continues from its last epoch, in the same grade.
"""

from __future__ import annotations

import functools
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edray.cache import node_name
from edray.data import DataSplits, load_data
from edray.device import choose_device
from edray.distill.loop import DistContext, run_ed
from edray.distill.plan import make_plan
from edray.distributed.node_check import NodeCheck
from edray.distributed.space import resolve_config
from edray.layout import Layout
from edray.pipeline import local_dataset, make_teacher_logits
from edray.spec import DatasetSpec, Spec
from edray.storage import join, ray_storage, write_bytes

__all__ = ["TrialContext", "TrialReportFn", "run_trial", "train_trial", "uses_torch_trainer"]

_STATE = "state.pt"
log = logging.getLogger(__name__)

TrialReportFn = Callable[[dict[str, Any], str | None], None]


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config (small; it crosses to Ray pickled)."""

    base_spec: dict[str, Any]
    layout: Layout  # teachers, stores and images: read through this node's cache when shared
    models_dir: str  # a path or a URI (the shared location on a cluster)
    node_check: NodeCheck | None = None  # on a cluster: run once on each node a trial lands on


def uses_torch_trainer(spec: Spec) -> bool:
    if spec.scaling.trainer == "auto":
        return spec.scaling.num_workers > 1
    return spec.scaling.trainer == "torch_trainer"


@functools.lru_cache(maxsize=4)
def _cached_data(dataset_json: str, image_cache: str | None = None) -> DataSplits:
    # A reused Tune actor (reuse_actors=True) keeps its data between trials. The driver
    # built the decoded-image cache before any trial started (on a cluster: the first trial
    # on each node builds that node's copy); trials only map it.
    return load_data(DatasetSpec.model_validate_json(dataset_json), image_cache=image_cache)


def _extra_metrics(spec: Spec, metrics: dict[str, Any], num_classes: int, total_epochs: int) -> dict[str, Any]:
    plan = make_plan(spec, num_classes)
    last_start = plan.grades[-1].start_epoch
    # Grade-aware early stopping counts epochs facing all classes: a trial still in an
    # early grade sits at 0 and never meets a rung (docs/design.md#the-sweep). ``total_epochs`` is the
    # config's own budget: a short copy of it (successive halving) ends before it, so by
    # the one rule (edray.trial_status) the copy is a stopped trial, pruned.
    return {**metrics, "final_grade_epochs": max(0, metrics["epoch"] - last_start), "total_epochs": total_epochs,
            "budget_epochs": spec.optim.epochs, "node": node_name()}


def _save_model(ctx: TrialContext, trial_id: str, state: dict[str, Any]) -> str:
    """The trained student, written whole to ``models_dir`` (on a cluster the shared
    location, so the driver logs it to MLflow without reading this node's disk)."""
    location = join(ctx.models_dir, f"{trial_id}.pt")
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(location, buf.getbuffer())
    return location


def _model_file(spec: Spec, data: DataSplits, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The student and what logging it as an MLflow model needs besides (shape, two input
    images, class names, normalisation): the driver of a cluster has no data to read them from."""
    example = data.val.load(torch.arange(min(2, len(data.val))))
    return {"arch": spec.student.arch, "num_classes": data.num_classes, "state_dict": state_dict,
            "in_channels": data.in_channels, "image_size": data.image_size, "example": example,
            "class_names": list(data.class_names), "normalisation": data.normalisation}


def _load_state(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state_file = Path(d) / _STATE
        if not state_file.is_file():
            # An empty checkpoint directory (on S3, a marker an upload or delete cut short leaves
            # behind): restarting from it would fail the same way each time, and the trial end
            # errored. Training it again from its first epoch costs only time.
            log.warning("trial checkpoint %s holds no %s: the trial starts over from its first epoch",
                        getattr(checkpoint, "path", d), _STATE)
            return None
        return torch.load(state_file, map_location="cpu", weights_only=False)


def train_trial(spec: Spec, ctx: TrialContext, *, trial_id: str, report_fn: TrialReportFn,
                dist: DistContext = DistContext(), checkpoint=None) -> None:
    """Train one trial's resolved ``spec``, handing each epoch to ``report_fn``.

    ``report_fn(metrics, directory)`` gets the loop's metrics plus what Tune's scheduler
    counts (``final_grade_epochs``, ``total_epochs``, and ``model_path`` after the last
    epoch), and a directory holding the checkpoint (None on ranks other than 0). A Tune
    trial, a Ray Train worker, or a test calls it alike. ``checkpoint`` (a Ray
    ``Checkpoint``) resumes the trial after its epoch.
    """
    if ctx.node_check is not None:
        ctx.node_check.ensure(ctx.layout)
    # Decoded images in this node's cache (the work directory on one machine): on a
    # cluster each node decodes its own copy once, under a lock, for its trials to map.
    device = choose_device(use_gpu=spec.scaling.use_gpu)
    data = _cached_data(local_dataset(spec.dataset, ctx.layout).model_dump_json(), str(ctx.layout.images()))
    teachers = make_teacher_logits(spec, data, ctx.layout, device=device)
    resume = _load_state(checkpoint)

    total_epochs = int(ctx.base_spec["optim"]["epochs"])

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        metrics = _extra_metrics(spec, metrics, data.num_classes, total_epochs)
        final = state.pop("final_model", None) if state else None
        if final is not None and dist.rank == 0 and spec.optim.epochs == total_epochs:  # a short copy: no model
            metrics["model_path"] = _save_model(ctx, trial_id, _model_file(spec, data, final))
        if dist.rank != 0:
            report_fn(metrics, None)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / _STATE)
            report_fn(metrics, d)

    result = run_ed(spec, data, teachers, report=report, resume=resume, device=device, evaluate_test=False,
                    dist=dist)
    if resume is not None and resume["epoch"] >= spec.optim.epochs and resume["history"] and result.model is not None:
        # Restored after its last epoch (a resumed sweep whose saved state named a checkpoint deleted
        # since, put back from the last one: tune_restore): nothing was left to train, so no epoch
        # reported. Report the last one again, with the student, or Tune would keep the older
        # result it had (counted as pruned) and the trial's model would never be saved.
        report(dict(resume["history"][-1]), {**resume, "final_model": result.model.state_dict()})


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: resolve the trial's spec, then train."""
    from ray import tune

    spec = resolve_config(ctx.base_spec, config)
    trial_id = tune.get_context().get_trial_id()
    if uses_torch_trainer(spec):
        _run_torch_trainer(spec, ctx, trial_id)
        return

    def report_fn(metrics: dict[str, Any], directory: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    train_trial(spec, ctx, trial_id=trial_id, report_fn=report_fn, checkpoint=tune.get_checkpoint())


def _run_torch_trainer(spec: Spec, ctx: TrialContext, trial_id: str) -> None:
    from ray import train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    scaling = spec.scaling
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec.model_dump_json(), "ctx": ctx, "trial_id": trial_id},
        scaling_config=train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=scaling.resources_per_worker
        ),
        # Same name and storage on a restart: Train V2 resumes from the run's last checkpoint.
        run_config=train.RunConfig(
            name=f"trial-{trial_id}",
            **ray_storage(ctx.layout.ray_train),
            failure_config=train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=train.CheckpointConfig(num_to_keep=2),
            # Ray's static types see Train V1's RunConfig (callbacks: Tune's Callback); at runtime Train V2's
            # RunConfig takes this UserCallback.
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    trainer.fit()


def _train_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: the same loop, on this worker's slice of each batch."""
    from ray import train

    spec = Spec.model_validate_json(config["spec"])
    ctx: TrialContext = config["ctx"]
    context = train.get_context()
    dist = DistContext(rank=context.get_world_rank(), world_size=context.get_world_size())

    def report_fn(metrics: dict[str, Any], directory: str | None) -> None:
        train.report(metrics, checkpoint=train.Checkpoint.from_directory(directory) if directory else None)

    train_trial(spec, ctx, trial_id=config["trial_id"], report_fn=report_fn, dist=dist,
                checkpoint=train.get_checkpoint())

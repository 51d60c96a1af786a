"""The heavy steps around the search, as Ray work on worker nodes (docs/design.md#clusters).

On a cluster the sweep driver only plans, waits and records. Here is what it waits on:

- :func:`probe_nodes`: one tiny task per worker node: can it read the shared location,
  and does it have the dataset? A node that cannot fails the sweep at once, in one line
  naming the node, the path and the fix, instead of every trial failing on it later.
- :func:`train_teachers`: each missing teacher as a Ray Train job (``TorchTrainer``, GPU
  workers when ``scaling.use_gpu``), all at once; checkpoints go to ``<shared>/teachers``
  with a ``.json`` record (node, val_acc) and a ``.sha256`` beside each (written last: it
  is what says "trained").
- :func:`build_stores`: every logit store as Ray tasks, one per row shard, spread over the
  nodes and writing into one store on the shared location; the driver writes the
  manifest when every shard is in (:mod:`edray.logits.writer`).
- :func:`final_eval`: the best config on the test split, one task per seed, with the
  trials' resources.

Each step returns which node did what, for the sweep's summary.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray

from edray.cache import node_name, unreachable
from edray.data import DataSplits
from edray.errors import RUNTIME_ERROR, EdrayError
from edray.layout import Layout
from edray.names import SHA256_SUFFIX
from edray.spec import Spec
from edray.storage import discard, exists, is_uri, join, list_files, ray_storage, read_bytes, write_bytes
from edray.workdir import images_dir

__all__ = ["build_stores", "final_eval", "probe_nodes", "require_shared", "train_teachers", "worker_nodes"]

_RECORD = ".json"  # beside a teacher checkpoint: the node that trained it, its val_acc


def worker_nodes() -> list[dict[str, Any]]:
    """The live nodes that offer CPUs or GPUs to tasks (a ``--num-cpus=0`` head is not one)."""
    return [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU", 0) or n["Resources"].get("GPU", 0))]


def require_shared(layout: Layout) -> None:
    """A Ray cluster of several nodes needs ``EDRAY_SHARED``: no node sees the driver's disk.

    Raises:
        EdrayError: more than one node and no shared location.
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not layout.on_cluster:
        raise EdrayError(
            "EDRAY_SHARED", f"this Ray cluster has {len(nodes)} nodes, but EDRAY_SHARED is not set, so their "
            f"trials cannot see the driver's {layout.workdir}",
            "set EDRAY_SHARED on every node and the driver (an s3:// or gs:// prefix, or a path mounted on all)",
        )


def _get(refs: list, step: str) -> list:
    """``ray.get`` that turns a task's :class:`EdrayError` back into itself (one line, no
    remote traceback) and any other task failure into one line naming the step."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, EdrayError):
            raise EdrayError(cause.path, cause.problem, cause.fix, exit_code=cause.exit_code) from None
        raise EdrayError(step, f"failed on a worker node: {type(cause).__name__}: {cause}",
                         "see the worker's log (ray logs) and run the sweep again", exit_code=RUNTIME_ERROR) from None


def _get_all(refs: list, step: str, *, skip_lost_nodes: bool = False) -> list:
    """Like :func:`_get`, but waits for every task first (a failure on one node does not
    leave the others running, or their errors printed unhandled at exit); raises the first.

    With ``skip_lost_nodes``, a task pinned to a node that has left the cluster (listed
    alive a moment ago: the GCS notices a lost node only after its health checks fail)
    is left out instead of failing the step.
    """
    ray.wait(refs, num_returns=len(refs))
    out, errors = [], []
    for ref in refs:
        try:
            out.extend(_get([ref], step))
        except EdrayError as err:
            errors.append(err)
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
            if not skip_lost_nodes:
                raise
    if errors:
        raise errors[0]
    return out


# ------------------------------------------------------------------------------ probe


def probe_nodes(spec: Spec, layout: Layout) -> list[str]:
    """Check from every worker node that the shared location and the dataset are there.

    Returns:
        the names of the nodes checked.

    Raises:
        EdrayError: the first node that cannot read the shared location or has no dataset.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = worker_nodes()
    if not nodes:
        raise EdrayError("--address", "the Ray cluster has no node that offers CPUs or GPUs",
                         "start worker nodes (ray up / ray start --address ...) and run again", exit_code=RUNTIME_ERROR)
    token = uuid.uuid4().hex
    probe = join(layout.root, ".edray-probe", token)
    try:
        write_bytes(probe, token.encode())
    except Exception as err:
        raise EdrayError(layout.root, f"the driver cannot write the shared location ({err})",
                         "check EDRAY_SHARED and the driver's credentials") from None
    task = ray.remote(_probe)
    refs = [task.options(num_cpus=0, max_retries=0,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(probe, token, spec.dataset.root) for n in nodes]
    try:
        checked = _get_all(refs, "probe", skip_lost_nodes=True)
    finally:
        discard(probe)  # only once every node has read it
    if not checked:
        raise EdrayError("--address", "every worker node left the Ray cluster while it was being checked",
                         "start worker nodes (ray up / ray start --address ...) and run again", exit_code=RUNTIME_ERROR)
    return checked


def _probe(probe: str, token: str, dataset_root: str | None) -> str:
    try:
        seen = read_bytes(probe).decode()
    except Exception as err:
        raise unreachable(probe, err) from None
    if seen != token:
        raise EdrayError(probe, f"node {node_name()} reads another file than the driver wrote",
                         "point EDRAY_SHARED at the same location on every node")
    if dataset_root and is_uri(dataset_root):
        try:
            files = list_files(dataset_root)
        except Exception as err:
            raise unreachable(dataset_root, err) from None
        if not files:
            raise EdrayError("dataset.root", f"no files under {dataset_root} (seen from node {node_name()})",
                             "upload the dataset there first, or fix dataset.root")
    elif dataset_root and not Path(dataset_root).expanduser().is_dir():
        raise EdrayError("dataset.root", f"node {node_name()} has no dataset at {dataset_root}",
                         "copy it to that path on every node (the cluster files' setup commands do), or put it "
                         "under EDRAY_SHARED and give dataset.root as its URI")
    return node_name()


# ------------------------------------------------------------------------------ teachers


def _teacher_location(layout: Layout, spec: Spec, index: int, data: DataSplits) -> str:
    from edray.distill.teachers import teacher_path

    return join(layout.teachers, teacher_path(spec, index, data, Path(layout.workdir)).name)


def train_teachers(spec: Spec, layout: Layout, data: DataSplits, log: Callable[[str], None]) -> dict[int, str]:
    """Train every teacher with a recipe and no checkpoint on the shared location, as
    Ray Train jobs running at the same time. Returns teacher index -> node that trained it.
    """
    missing = [i for i, t in enumerate(spec.teachers.models)
               if t.checkpoint is None and not exists(_teacher_location(layout, spec, i, data) + SHA256_SUFFIX)]
    if not missing:
        return {}
    log(f"training teachers {missing} on worker nodes (Ray Train)")
    # max_calls=1: the waiting process exits after its job, and with it the Train controller
    # actors it owns (~0.7 GB each), which would otherwise live as long as the sweep.
    job = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(_teacher_job)
    refs = [job.remote(spec.model_dump_json(), layout, i) for i in missing]
    _get(refs, f"teachers.models{missing}")
    out = {}
    for i in missing:  # the record each job left beside its checkpoint: who trained it
        try:
            out[i] = json.loads(read_bytes(_teacher_location(layout, spec, i, data) + _RECORD))["node"]
        except Exception:
            out[i] = "?"
    return out


def _teacher_job(spec_json: str, layout: Layout, index: int) -> None:
    """Waits on one teacher's TorchTrainer (this task holds no CPU)."""
    from ray import train
    from ray.train.torch import TorchTrainer

    spec = Spec.model_validate_json(spec_json)
    scaling = spec.scaling
    trainer = TorchTrainer(
        _teacher_worker,
        train_loop_config={"spec": spec_json, "layout": layout.__dict__, "index": index},
        scaling_config=train.ScalingConfig(num_workers=1, use_gpu=scaling.use_gpu,
                                           resources_per_worker=scaling.resources_per_worker),
        run_config=train.RunConfig(name=f"teacher-{spec.name}-{index}-{uuid.uuid4().hex[:6]}",
                                   **ray_storage(layout.ray_train),
                                   failure_config=train.FailureConfig(max_failures=scaling.max_failures)),
    )
    trainer.fit()


def _teacher_worker(config: dict[str, Any]) -> None:
    """In the Train worker: train the teacher into this node's cache, then publish it."""
    import torch
    from ray import train

    from edray.data import load_data
    from edray.distill.teachers import train_teacher
    from edray.pipeline import local_dataset

    spec = Spec.model_validate_json(config["spec"])
    layout = Layout(**config["layout"])
    index = config["index"]
    device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    data = load_data(local_dataset(spec.dataset, layout), image_cache=images_dir(layout.cache()))  # decoded once a node
    teacher = train_teacher(spec, index, data, layout.cache(), device=device)
    blob = teacher.path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    location = join(layout.teachers, teacher.path.name)
    write_bytes(location, blob)
    record = {"node": node_name(), "val_acc": teacher.val_acc, "sha256": sha}
    write_bytes(location + _RECORD, json.dumps(record).encode())
    write_bytes(location + SHA256_SUFFIX, f"{sha}\n".encode())  # last: it is what says "trained"
    teacher.path.with_name(teacher.path.name + SHA256_SUFFIX).write_text(f"{sha}\n")  # this node's cache has it too
    train.report({"val_acc": teacher.val_acc, "node": node_name()})


# ------------------------------------------------------------------------------ stores


def build_stores(spec: Spec, layout: Layout, data: DataSplits, log: Callable[[str], None]) -> dict[str, list[str]]:
    """Build the missing logit stores under ``<shared>/logits`` with one task per row shard,
    spread over the worker nodes. Returns store name -> node of each shard (built now).
    """
    import torch

    from edray.distill.plan import make_plan
    from edray.distill.precompute import store_key
    from edray.distill.teachers import load_teacher
    from edray.logits.writer import building, default_rows_per_shard, finish_store
    from edray.pipeline import local_teachers

    teacher_dir = local_teachers(spec, data, Path(layout.workdir), layout)  # the driver reads checkpoints to key
    nodes = max(1, len(worker_nodes()))
    task = ray.remote(_shard_task).options(**_task_resources(spec), scheduling_strategy="SPREAD")
    spec_json = spec.model_dump_json()
    built: dict[str, list[str]] = {}
    with ExitStack() as stack:
        jobs = []
        for i in make_plan(spec, data.num_classes).teachers_used:
            teacher = load_teacher(spec, i, data, teacher_dir)
            for split, views in (("train", spec.teachers.views), ("val", 1)):
                key = store_key(spec, teacher, data, split, views=views)
                rows, outputs = len(getattr(data, split)), len(teacher.classes)
                # One shard per node at least (the work spreads), never above the writer's size.
                per = min(default_rows_per_shard(views, outputs), math.ceil(rows / nodes))
                plan = stack.enter_context(building(layout.logits, key, rows=rows, views=views, outputs=outputs,
                                                    sample_ids=torch.arange(rows), rows_per_shard=per))
                if plan.final is not None or not plan.todo:
                    continue
                log(f"building store {key.name} (teacher {i}, {split}): {len(plan.todo)} shards on worker nodes")
                ref = ray.put(plan)
                jobs.append((plan, [task.remote(ref, spec_json, layout, i, split, views, s) for s in plan.todo]))
        for plan, refs in jobs:
            infos = dict(_get(refs, f"precompute {plan.name}"))
            finish_store(plan, infos)
            built[plan.name] = [infos[s].node for s in sorted(infos)]
    return built


def _shard_task(plan, spec_json: str, layout: Layout, teacher: int, split: str, views: int, index: int):
    import torch

    from edray.data import load_data
    from edray.distill.precompute import teacher_logits
    from edray.distill.teachers import load_teacher
    from edray.logits.writer import write_shard
    from edray.pipeline import local_dataset, local_teachers

    spec = Spec.model_validate_json(spec_json)
    device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    data = load_data(local_dataset(spec.dataset, layout), image_cache=images_dir(layout.cache()))  # decoded once a node
    checkpoint = load_teacher(spec, teacher, data, local_teachers(spec, data, Path(layout.workdir), layout, [teacher]),
                              device=device)
    start, stop = plan.shard_span(index)
    block = teacher_logits(spec, checkpoint, getattr(data, split), views, device)(start, stop)
    return index, write_shard(plan, index, block, node=node_name())


# ------------------------------------------------------------------------------ final evaluation


def _task_resources(spec: Spec) -> dict[str, float]:
    """One trial worker's resources (what a single-process run of the spec needs)."""
    res = {k.upper(): float(v) for k, v in spec.scaling.resources_per_worker.items()}
    out: dict[str, Any] = {"num_cpus": res.pop("CPU", 1.0), "num_gpus": res.pop("GPU", 0.0)}
    if spec.scaling.use_gpu and not out["num_gpus"]:
        out["num_gpus"] = 1.0
    if res:
        out["resources"] = res
    return out


def final_eval(spec: Spec, best: dict[str, Any], seeds: int, layout: Layout) -> list[tuple[float, str]]:
    """Test accuracy of ``best`` for ``seeds`` seeds, one task each, with the trials'
    resources (a GPU when ``use_gpu``). Returns ``(test_acc, node)`` per seed."""
    task = ray.remote(_evaluate).options(**_task_resources(spec))
    refs = [task.remote(best, best.get("seed", 0) + s, layout) for s in range(seeds)]
    return [tuple(r) for r in _get(refs, "final evaluation")]


def _evaluate(raw: dict[str, Any], seed: int, layout: Layout) -> tuple[float, str]:
    import torch

    from edray.pipeline import train
    from edray.spec import spec_from_dict

    spec = spec_from_dict({**raw, "seed": seed})
    device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    on_cluster = layout if layout.on_cluster else None
    return float(train(spec, Path(layout.workdir), device=device, layout=on_cluster).test_acc), node_name()

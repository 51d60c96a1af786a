"""The heavy steps around the search, as Ray work on worker nodes (docs/design.md#clusters).

On a cluster the sweep driver only plans, waits and records. Here is what it waits on:

- :func:`probe_nodes`: the node check (:mod:`~edray.distributed.node_check`) as one tiny
  task on each worker node alive when the sweep starts: can it read the shared location,
  and does it have the dataset? A node that cannot fails the sweep at once, in one line
  naming the node, the path and the fix. Every unit of work below runs the same check
  first on a node that joined since (an autoscaler's node), once per node.
- :class:`RayRunner`: the runner of a preparation plan (:mod:`edray.preparation`) on the
  nodes. Each missing teacher is a Ray Train job (``TorchTrainer``, GPU workers when
  ``scaling.use_gpu``), all at once; each publishes its checkpoint to ``<shared>/teachers``
  with a ``.json`` record (node, val_acc) and a ``.sha256`` (written last: it is what says
  "trained"). Every logit store is built as Ray tasks, one per row shard, spread over the
  nodes and writing into one store on the shared location; the driver writes the
  manifest when every shard is in (:mod:`edray.logits.writer`).
- :func:`final_eval`: the best config on the test split, one task per seed, with the
  trials' resources.

Each step says which node did what, for the sweep's summary.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from edray.cache import node_name
from edray.data import DataSplits
from edray.device import choose_device
from edray.distributed.node_check import NodeCheck
from edray.distributed.resources import task_options
from edray.errors import RUNTIME_ERROR, EdrayError
from edray.layout import Layout
from edray.logits.manifest import ShardInfo
from edray.preparation import ShardWork
from edray.spec import Spec
from edray.storage import ray_storage

__all__ = [
    "RayRunner", "StudentEval", "evaluate_student", "final_eval", "probe_nodes", "require_shared", "worker_nodes",
]


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


def probe_nodes(check: NodeCheck, layout: Layout) -> list[str]:
    """Check every worker node alive now (a static cluster fails here, before any teacher
    trains); a node that joins later is checked by the first work landing on it.

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
    task = ray.remote(_check_node)
    refs = [task.options(num_cpus=0, max_retries=0,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(check, layout) for n in nodes]
    checked = _get_all(refs, "probe", skip_lost_nodes=True)
    if not checked:
        raise EdrayError("--address", "every worker node left the Ray cluster while it was being checked",
                         "start worker nodes (ray up / ray start --address ...) and run again", exit_code=RUNTIME_ERROR)
    return checked


def _check_node(check: NodeCheck, layout: Layout) -> str:
    return check.ensure(layout)


# ------------------------------------------------------------------------------ teachers and stores


@dataclass
class RayRunner:
    """Runs a preparation plan (:mod:`edray.preparation`) on the worker nodes: each teacher
    as a Ray Train job, all at once; each store's missing shards as Ray tasks spread over
    the nodes, writing into one store on the shared location."""

    log: Callable[[str], None]
    spread: int = 1
    check: NodeCheck | None = None  # run on each node where work first lands

    @classmethod
    def for_cluster(cls, log: Callable[[str], None], check: NodeCheck) -> RayRunner:
        """A runner spreading each store over the cluster's worker nodes (one shard each at least)."""
        return cls(log, max(1, len(worker_nodes())), check)

    def train_teachers(self, spec: Spec, data: DataSplits, layout: Layout, indices: tuple[int, ...]) -> dict[int, str]:
        from edray.distill.teachers import trained_by

        self.log(f"training teachers {list(indices)} on worker nodes (Ray Train)")
        # max_calls=1: the waiting process exits after its job, and with it the Train controller
        # actors it owns (~0.7 GB each), which would otherwise live as long as the sweep.
        job = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(_teacher_job)
        refs = [job.remote(spec.model_dump_json(), layout, i, self.check) for i in indices]
        _get(refs, f"teachers.models{list(indices)}")
        return {i: trained_by(spec, i, data, layout) for i in indices}  # the record each job left

    def compute_shards(self, spec: Spec, data: DataSplits, layout: Layout,
                       work: list[ShardWork]) -> dict[str, dict[int, ShardInfo]]:
        task = ray.remote(_shard_task).options(**task_options(spec), scheduling_strategy="SPREAD")
        spec_json = spec.model_dump_json()
        pending = []
        for w in work:
            self.log(f"building store {w.store.name} (teacher {w.job.teacher}, {w.job.split}): "
                     f"{len(w.store.todo)} shards on worker nodes")
            ref = ray.put(w.store)
            pending.append((w.store.name, [task.remote(ref, spec_json, layout, w.job, s, self.check)
                                          for s in w.store.todo]))
        return {name: dict(_get(refs, f"precompute {name}")) for name, refs in pending}


def _teacher_job(spec_json: str, layout: Layout, index: int, check: NodeCheck | None) -> None:
    """Waits on one teacher's TorchTrainer (this task holds no CPU)."""
    from ray import train
    from ray.train.torch import TorchTrainer

    spec = Spec.model_validate_json(spec_json)
    scaling = spec.scaling
    trainer = TorchTrainer(
        _teacher_worker,
        train_loop_config={"spec": spec_json, "layout": layout, "index": index, "check": check},
        scaling_config=train.ScalingConfig(num_workers=1, use_gpu=scaling.use_gpu,
                                           resources_per_worker=scaling.resources_per_worker),
        run_config=train.RunConfig(name=f"teacher-{spec.name}-{index}-{uuid.uuid4().hex[:6]}",
                                   **ray_storage(layout.ray_train),
                                   failure_config=train.FailureConfig(max_failures=scaling.max_failures)),
    )
    try:
        trainer.fit()
    except Exception:
        if check is not None:
            check.raise_failure()  # a node that failed its check: that line, not Train's wrapped error
        raise


def _teacher_worker(config: dict[str, Any]) -> None:
    """In the Train worker: train the teacher into this node's cache; it publishes itself."""
    from ray import train

    from edray.distill.teachers import train_teacher
    from edray.pipeline import load_run_data

    spec = Spec.model_validate_json(config["spec"])
    layout: Layout = config["layout"]
    _ensure(config["check"], layout)
    data = load_run_data(spec, layout)  # decoded once a node
    teacher = train_teacher(spec, config["index"], data, layout, device=choose_device(use_gpu=spec.scaling.use_gpu))
    train.report({"val_acc": teacher.val_acc, "node": node_name()})


def _ensure(check: NodeCheck | None, layout: Layout) -> None:
    if check is not None:
        check.ensure(layout)


def _shard_task(store, spec_json: str, layout: Layout, job, index: int, check: NodeCheck | None):
    from edray.distill.precompute import teacher_logits
    from edray.distill.teachers import load_teacher
    from edray.logits.writer import write_shard
    from edray.pipeline import load_run_data

    _ensure(check, layout)
    spec = Spec.model_validate_json(spec_json)
    device = choose_device(use_gpu=spec.scaling.use_gpu)
    data = load_run_data(spec, layout)  # decoded once a node
    checkpoint = load_teacher(spec, job.teacher, data, layout, device=device)
    start, stop = store.shard_span(index)
    block = teacher_logits(spec, checkpoint, getattr(data, job.split), job.views, device)(start, stop)
    return index, write_shard(store, index, block, node=node_name())


# ------------------------------------------------------------------------------ final evaluation


def final_eval(spec: Spec, best: dict[str, Any], seeds: int, layout: Layout,
               check: NodeCheck | None = None) -> list[tuple[float, str]]:
    """Test accuracy of ``best`` for ``seeds`` seeds, one task each, with the trials'
    resources (a GPU when ``use_gpu``). Returns ``(test_acc, node)`` per seed."""
    task = ray.remote(_evaluate).options(**task_options(spec))
    refs = [task.remote(best, best.get("seed", 0) + s, layout, check) for s in range(seeds)]
    return [tuple(r) for r in _get(refs, "final evaluation")]


def _evaluate(raw: dict[str, Any], seed: int, layout: Layout, check: NodeCheck | None) -> tuple[float, str]:
    from edray.pipeline import train
    from edray.spec import spec_from_dict

    _ensure(check, layout)
    spec = spec_from_dict({**raw, "seed": seed})
    device = choose_device(use_gpu=spec.scaling.use_gpu)
    # The sweep prepared the teachers and stores before its first trial.
    result = train(spec, layout, device=device, prepare_stores=False)
    assert result.test_acc is not None  # train evaluates the test split unless told not to
    return float(result.test_acc), node_name()


@dataclass
class StudentEval:
    """The best trial's student read back on a node: the model, its test accuracy, and what
    MLflow records beside it (a few input images, the class names, the normalisation, and the
    data fingerprint that names the test set the accuracy was measured on)."""

    model: Any
    test_acc: float
    example: Any
    class_names: list[str]
    normalisation: str
    protocol: str
    node: str


def evaluate_student(spec: Spec, model_path: str, layout: Layout, check: NodeCheck | None = None) -> StudentEval:
    """The test accuracy of the student saved at ``model_path``, as one task with the trials'
    resources (a node has the data; the driver of a cluster may not)."""
    task = ray.remote(_student_on_test).options(**task_options(spec))
    return _get([task.remote(spec.model_dump_json(), model_path, layout, check)], "the best student's test accuracy")[0]


def _student_on_test(spec_json: str, model_path: str, layout: Layout, check: NodeCheck | None) -> StudentEval:
    import torch

    from edray.distill.loop import accuracy
    from edray.pipeline import load_run_data
    from edray.tracking.student_model import build_student, load_student_file

    _ensure(check, layout)
    spec = Spec.model_validate_json(spec_json)
    data = load_run_data(spec, layout)
    model = build_student(load_student_file(model_path), in_channels=data.in_channels, image_size=data.image_size)
    acc = accuracy(model, data.test, choose_device(use_gpu=spec.scaling.use_gpu))
    return StudentEval(model=model.cpu().eval(), test_acc=float(acc), example=data.test.load(torch.arange(4)),
                       class_names=list(data.class_names), normalisation=data.normalisation,
                       protocol=data.fingerprint, node=node_name())


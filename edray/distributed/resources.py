"""What one trial, task or worker asks Ray for: one spelling, Ray's own.

``CPU`` and ``GPU`` as Ray spells them (a spec's ``cpu`` is the same resource), custom
resources by the name the spec gives, so a custom resource has one name everywhere.
"""

from __future__ import annotations

from typing import Any

from edray.spec import Spec

__all__ = ["task_options", "trial_resources", "worker_resources"]

_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}


def worker_resources(spec: Spec) -> dict[str, float]:
    """One worker's resources (``scaling.resources_per_worker``), a GPU when ``use_gpu`` names none."""
    res = {_RAY_NAMES.get(k.lower(), k): float(v) for k, v in spec.scaling.resources_per_worker.items()}
    if spec.scaling.use_gpu and not res.get("GPU"):
        res["GPU"] = 1.0
    return res


def trial_resources(spec: Spec) -> dict[str, float]:
    """A Tune trial's resources (``tune.with_resources``)."""
    from edray.distributed.trial import uses_torch_trainer

    if uses_torch_trainer(spec):
        # The trial driver only waits on its TorchTrainer: it must hold no CPU the
        # workers need (two trials on 2 CPUs deadlock otherwise).
        return {"CPU": 0, "memory": 1}
    return worker_resources(spec)


def task_options(spec: Spec) -> dict[str, Any]:
    """``ray.remote(...).options`` of a task that runs what one trial worker runs."""
    res = worker_resources(spec)
    out: dict[str, Any] = {"num_cpus": res.pop("CPU", 1.0), "num_gpus": res.pop("GPU", 0.0)}
    if res:
        out["resources"] = res
    return out

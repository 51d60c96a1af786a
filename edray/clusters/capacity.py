"""Waiting for worker nodes, as Ray's autoscaler starts them (issue 18: workers from zero).

A cluster as ``ray up clusters/aws.yaml`` starts it has a ``CPU: 0`` head and worker pools
at ``min_workers: 0``: no node offers anything until work asks for it. :func:`wait_for_nodes`
asks (``ray.autoscaler.sdk.request_resources``: the autoscaler launches what fits the
request) and waits until a live node can run one unit of the next step's work, saying
what it waits for and what the autoscaler is doing, one line at most every 30 s.

What it reads, all from the running cluster:

- the live nodes and their total resources (``ray.nodes()``);
- the autoscaler's node types (``available_node_types`` of the config its monitor process
  was started with, ``--autoscaling-config``, found on this machine: the head, where the
  README runs the driver). A request no node type can ever satisfy fails at once, in one
  line naming the request and the node types. Where the config is not readable (a driver
  off the head, KubeRay's autoscaler in its own container) the wait is bounded by
  ``--wait-for-nodes`` only;
- what the autoscaler is doing: launching / starting nodes of which type, launches that
  failed (the status it publishes in the GCS, as ``ray status`` prints it: the v1
  ``__autoscaling_status`` record, or the v2 cluster status).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edray.errors import RUNTIME_ERROR, EdrayError

__all__ = ["AutoscalerView", "NodeType", "autoscaler_view", "cluster_node_types", "fits", "format_request",
           "step_request", "unsatisfiable", "wait_for_nodes"]

DEFAULT_WAIT_S = 1800.0  # --wait-for-nodes: a cloud node takes minutes; quota or capacity may never come
REPORT_EVERY_S = 30.0
# Ray's bookkeeping resources: every node has them, no request names them.
_BOOKKEEPING = ("memory", "object_store_memory", "node:")


@dataclass(frozen=True)
class NodeType:
    """One of the autoscaler's ``available_node_types``."""

    name: str
    resources: dict[str, float]
    max_workers: int


@dataclass
class AutoscalerView:
    """What the autoscaler says it is doing: node type -> count."""

    launching: dict[str, int] = field(default_factory=dict)  # asked of the cloud, not up yet
    starting: dict[str, int] = field(default_factory=dict)  # up, Ray starting on them
    failed: list[str] = field(default_factory=list)  # launches or nodes that failed, by type
    reporting: bool = False  # an autoscaler published a status at all

    def describe(self) -> str:
        parts = [f"launching {_counts(self.launching)}" if self.launching else "",
                 f"starting {_counts(self.starting)}" if self.starting else "",
                 f"failed {', '.join(self.failed)}" if self.failed else ""]
        said = ", ".join(p for p in parts if p)
        if said:
            return f"autoscaler {said}"
        return "autoscaler idle" if self.reporting else "no autoscaler reports on this cluster"


def _counts(by_type: dict[str, int]) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(by_type.items()))


def format_request(request: dict[str, float]) -> str:
    """``{GPU: 1, CPU: 4}``: whole numbers without ``.0``."""
    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    return "{" + ", ".join(f"{k}: {num(v)}" for k, v in request.items()) + "}"


def step_request(resources_per_worker: dict[str, float], use_gpu: bool) -> dict[str, float]:
    """One unit of a step's work as Ray resources (``CPU``, ``GPU``, custom names): one trial
    worker, one teacher-training worker, one shard task or one evaluation seed all ask this."""
    out: dict[str, float] = {}
    for key, value in resources_per_worker.items():
        name = key.upper() if key.lower() in ("cpu", "gpu") else key
        out[name] = float(value)
    out.setdefault("CPU", 1.0)
    if use_gpu:
        out.setdefault("GPU", 1.0)
    return {k: v for k, v in out.items() if v > 0}


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in request.items())


def unsatisfiable(request: dict[str, float], types: list[NodeType]) -> bool:
    """No node type that may start (``max_workers > 0``) offers all of ``request``."""
    return not any(t.max_workers > 0 and fits(request, t.resources) for t in types)


def _live_nodes() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


# ------------------------------------------------------------------------------ the autoscaler's config


def _gcs_port() -> str:
    import ray

    return ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]


_NO_AUTOSCALER = Path()  # this cluster's monitor runs without a config: nothing starts nodes


def _monitor_config(gcs_port: str, proc: Path = Path("/proc")) -> Path | None:
    """The ``--autoscaling-config`` of this cluster's autoscaler (its monitor process, on the
    head); :data:`_NO_AUTOSCALER` for a monitor without one; None where no monitor is seen."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if flags.get("gcs-address", "").rsplit(":", 1)[-1] == gcs_port:
            config = flags.get("autoscaling-config")
            return Path(config).expanduser() if config else _NO_AUTOSCALER
    return None


def cluster_node_types() -> list[NodeType] | None:
    """The worker node types this cluster's autoscaler may start (``[]``: no autoscaler, nodes
    join only by hand), or None where that cannot be read (a driver off the head, KubeRay)."""
    try:
        path = _monitor_config(_gcs_port())
        if path is None or path == _NO_AUTOSCALER:
            return None if path is None else []
        import yaml

        config = yaml.safe_load(path.read_text())  # JSON is YAML too
        head = config.get("head_node_type")
        types = config.get("available_node_types") or {}
    except Exception:  # noqa: BLE001  (unknown node types only mean no early refusal)
        return None
    return [NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                     int(t.get("max_workers", config.get("max_workers", 0)) or 0))
            for name, t in types.items() if name != head]


# ------------------------------------------------------------------------------ what the autoscaler does


def autoscaler_view() -> AutoscalerView:
    """What the autoscaler published last (v1's status record, else v2's cluster status)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        v2 = _internal_kv_get("__autoscaler_v2_enabled") == b"1"
        raw = None if v2 else _internal_kv_get("__autoscaling_status")
    except Exception:  # noqa: BLE001
        return AutoscalerView()
    try:
        if raw:
            return _v1_view(json.loads(raw))
        if v2:
            import ray
            from ray.autoscaler.v2.sdk import get_cluster_status

            return _v2_view(get_cluster_status(ray.get_runtime_context().gcs_address))
    except Exception:  # noqa: BLE001  (a status of another shape: nothing to say)
        pass
    return AutoscalerView()


def _v1_view(status: dict[str, Any]) -> AutoscalerView:
    report = status.get("autoscaler_report")
    if report is None:  # a monitor that only mirrors the nodes: no autoscaler
        return AutoscalerView()
    starting: dict[str, int] = {}
    for _, node_type, _state in report.get("pending_nodes") or []:
        starting[node_type] = starting.get(node_type, 0) + 1
    failed = [node_type for _, node_type in report.get("failed_nodes") or []]
    return AutoscalerView(launching=dict(report.get("pending_launches") or {}), starting=starting,
                          failed=failed, reporting=True)


def _v2_view(status) -> AutoscalerView:
    view = AutoscalerView(reporting=True)
    for launch in status.pending_launches:
        view.launching[launch.ray_node_type_name] = view.launching.get(launch.ray_node_type_name, 0) + launch.count
    for node in status.pending_nodes:
        view.starting[node.ray_node_type_name] = view.starting.get(node.ray_node_type_name, 0) + 1
    view.failed = [f"{f.ray_node_type_name} ({f.details})" for f in status.failed_launches]
    return view


# ------------------------------------------------------------------------------ the wait


def _types_text(types: list[NodeType]) -> str:
    if not types:
        return "none"
    return ", ".join(f"{t.name} {format_request(t.resources)} x{t.max_workers}" for t in types)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _doing(types: list[NodeType] | None) -> str:
    if types == []:
        return "no autoscaler on this cluster: start a worker node that offers it (ray start --address ...)"
    return autoscaler_view().describe()


def wait_for_nodes(request: dict[str, float], what: str, *, wait_s: float = DEFAULT_WAIT_S,
                   log: Callable[[str], None] = print, poll_s: float = 1.0,
                   report_every_s: float = REPORT_EVERY_S) -> None:
    """Return once a live node can run ``request`` (one unit of ``what``: "trials",
    "teacher training", ...); until then ask the autoscaler for it and say what happens.

    Raises:
        EdrayError: no node type of the cluster can ever satisfy ``request`` (at once), or
            no such node came within ``wait_s`` seconds (``--wait-for-nodes``).
    """
    if any(fits(request, node) for node in _live_nodes()):
        return
    wanted = format_request(request)
    types = cluster_node_types()
    if types and unsatisfiable(request, types):
        raise EdrayError("scaling", f"{what} ask each for {wanted}, and no node type of this cluster offers that "
                         f"(node types: {_types_text(types)})",
                         "lower scaling.resources_per_worker / scaling.use_gpu, or add a node type that offers it "
                         "to the cluster file", exit_code=RUNTIME_ERROR)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[request])  # what makes an autoscaler start one, before any task is queued
    tic = time.monotonic()
    last_report = -float("inf")  # the first line at once: the user learns why nothing runs yet
    try:
        while True:
            if any(fits(request, node) for node in _live_nodes()):
                waited = time.monotonic() - tic
                if waited >= report_every_s / 3:  # a wait worth saying: how long a first node took
                    log(f"a node with {wanted} joined after {_minutes(waited)}")
                return
            waited = time.monotonic() - tic
            if waited >= wait_s:
                raise EdrayError("--wait-for-nodes", f"no node with {wanted} for {what} joined in {_minutes(wait_s)} "
                                 f"({_doing(types)})",
                                 "check the cloud's quota and capacity for the node types (ray status, the "
                                 "autoscaler's log: ray monitor), or wait longer with --wait-for-nodes",
                                 exit_code=RUNTIME_ERROR)
            if time.monotonic() - last_report >= report_every_s:
                doing = _doing(types)
                if doing == "autoscaler idle" and waited < 5:
                    doing = "asked the autoscaler for one"  # it acts on its next update (every few seconds)
                log(f"waiting for a node with {wanted} for {what}: {doing} "
                    f"({_minutes(waited)} so far)")
                last_report = time.monotonic()
            time.sleep(poll_s)
    finally:
        # The standing request only starts the first node: from here Ray's queued work is the
        # demand, and a request left in place would keep idle nodes from scaling down.
        try:
            request_resources(bundles=[])
        except Exception:  # noqa: BLE001
            pass

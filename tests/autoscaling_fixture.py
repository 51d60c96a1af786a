"""A Ray cluster that starts with no worker node and grows by Ray's real autoscaler.

The head is started as ``ray up clusters/aws.yaml`` starts one: ``CPU: 0`` and worker node
types at ``min_workers: 0``. The autoscaler is Ray's own (the monitor process the head
starts with ``--autoscaling-config``), with its ``fake_multinode`` node provider: where a
cloud provider would boot a machine, it starts a raylet on this machine. So what decides
that a node is needed, which type, when it is idle and when it goes, is Ray's code.

Node types (``available_node_types``), small for a 2-core machine:

- ``cpu_worker``: ``{CPU: 1}``, at most 2 (the CPU pool);
- ``gpu_worker``: ``{CPU: 1, accel: 1}``, at most 1: the GPU pool of clusters/aws.yaml with
  a custom resource standing in for ``GPU`` (this machine has none);
- at most 2 workers at once in all (a 2-core machine). Ray's autoscaler also starts a
  ``gpu_worker`` for CPU work when the CPU pool is full (it offers a CPU too).

Everything else is tests/cluster_fixture.py's: S3 on ``moto``, a real ``mlflow server``,
token authentication, random free ports, the head's own ``--temp-dir``, every process in
its own process group. Unlike that fixture's hand-started workers, these nodes are not in
their own mount namespace (the provider starts them itself): they share the driver's disk,
so the tests give them only what a cloud node would have, ``EDRAY_SHARED`` on the S3 API.

A lost node (:func:`kill_node`) is not replaced here: the provider lists every node it
started until the autoscaler terminates it, and Ray's (v1) autoscaler terminates a node
that stops answering only once its status is up to date, which this provider never sets
(it has no node updaters). So the dead node stays "pending, uninitialized" in the
autoscaler's eyes, counted as a node still starting, and the work it stood for waits for
the live nodes. A cloud provider reports a lost instance as terminated, and the
autoscaler starts another for the work that waits.

Stopping the head's process group stops the autoscaler and every raylet it started (they
are its children, in its session); :func:`stop_autoscaling_cluster` checks that none is left.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

from .cluster_fixture import SimCluster, start_cluster
from .helpers import kill_pids

HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head
GPU_STAND_IN = "accel"  # the custom resource playing the GPU
NODE_TYPES = {
    "cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}},
    "gpu_worker": {"resources": {"CPU": 1, GPU_STAND_IN: 1}, "min_workers": 0, "max_workers": 1, "node_config": {}},
}


MAX_WORKERS = 2  # at once, over both types: a 2-core machine


def why_not() -> str | None:
    """Why the autoscaling cluster cannot start here, or None when it can."""
    for tool in ("ray", "mlflow"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    try:
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        return "moto[server] is not installed (pip install -e '.[test]')"
    return None


def autoscaling_config(gcs_address: str, *, idle_timeout_minutes: float = 0.5) -> dict:
    """The autoscaler's cluster config: a ``CPU: 0`` head and :data:`NODE_TYPES` from zero."""
    return {
        "cluster_name": "edray-autoscaling-test",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "disable_launch_config_check": True,
                     "disable_node_updaters": True, "use_node_id_as_ip": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                 **NODE_TYPES},
        "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start_autoscaling_cluster(base: Path, logs: Path, *, idle_timeout_minutes: float = 0.5) -> SimCluster:
    """S3, MLflow and a ``CPU: 0`` head whose autoscaler starts workers on demand; no worker yet.

    The caller must call :func:`stop_autoscaling_cluster`.
    """
    node_cache = base / "node-cache"  # the nodes' EDRAY_CACHE: not the user's, not the driver's

    def head_extra(cluster: SimCluster) -> tuple[list[str], dict[str, str]]:
        config = logs / "autoscaling.json"
        config.write_text(json.dumps(autoscaling_config(cluster.gcs_address,
                                                        idle_timeout_minutes=idle_timeout_minutes)))
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "EDRAY_CACHE": str(node_cache)}
        return [f"--autoscaling-config={config}"], env

    return start_cluster(base, logs, workers=0, head_extra=head_extra)


def _state(cluster: SimCluster, what: str) -> list[dict]:
    """Ray's state API on the head's dashboard: ``nodes``, ``actors``..., in detail."""
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/{what}?limit=10000&detail=1",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=20) as r:
        return json.load(r)["data"]["result"]["result"]


def live_nodes(cluster: SimCluster) -> list[dict]:
    """The nodes the GCS lists alive now (Ray's state API): ``{"node_id", "head", "type",
    "resources"}`` each; ``type`` is the node type whose resources the node offers."""
    nodes = _state(cluster, "nodes")
    return [{"node_id": n["node_id"], "head": bool(n.get("is_head_node")), "type": _type_of(n["resources_total"]),
             "resources": n["resources_total"]} for n in nodes if n.get("state") == "ALIVE"]


def trial_actor_nodes(cluster: SimCluster) -> set[str]:
    """The nodes where a Tune trial's actor (a function trainable: ``ImplicitFunc``) is alive now."""
    return {a["node_id"] for a in _state(cluster, "actors")
            if a.get("state") == "ALIVE" and "ImplicitFunc" in (a.get("class_name") or "")}


def kill_node(cluster: SimCluster, node_id: str) -> list[int]:
    """Kill worker node ``node_id`` at once, like a lost machine: SIGKILL to its raylet and
    every process under it (its workers and agents); returns their pids.

    The fake provider's raylets are children of the head's autoscaler, in the head's process
    group (killing that group would take the head too), so the raylet is found by its
    ``--node_id`` flag among the head session's processes, never by name alone.
    """
    session = _session_pids(cluster.nodes["head"].proc.pid)
    raylets = [pid for pid in session if _cmdline(pid)[:1] and _cmdline(pid)[0].endswith("raylet")
               and f"--node_id={node_id}" in _cmdline(pid)]
    assert len(raylets) == 1, f"no single raylet of node {node_id} in the head's session: {raylets}"
    tree, parents = list(raylets), _parents(session)
    for pid in tree:  # breadth first: each process's children are appended as it is reached
        tree.extend(child for child, parent in parents.items() if parent == pid)
    kill_pids(tree)
    return tree


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _parents(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _type_of(resources: dict[str, float]) -> str:
    offered = {k: v for k, v in resources.items() if k in ("CPU", "GPU", GPU_STAND_IN)}
    return next((name for name, t in NODE_TYPES.items() if offered == t["resources"]), "")


def _session_pids(leader: int) -> list[int]:
    """Every process whose session is ``leader``'s (the head's ``setsid``): raylets included."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader:  # fields after the name: state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def stop_autoscaling_cluster(cluster: SimCluster) -> list[int]:
    """Stop everything the fixture started; return the pids still alive after (none, normally).

    The fake provider's raylets are started by the autoscaler, the head's child: same session,
    same process group; anything that made its own group is found by session and killed too.
    """
    head = cluster.nodes.get("head")
    leader = head.proc.pid if head else None
    cluster.stop()
    if leader is None:
        return []
    for _ in range(20):
        left = _session_pids(leader)
        if not left:
            return []
        kill_pids(left)
        time.sleep(0.5)
    return _session_pids(leader)

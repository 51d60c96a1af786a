"""A real multi-node Ray cluster on this one machine, for the cluster tests.

What it starts, each in its own process group (stopped with ``os.killpg``, never by name):

- an S3 API: ``moto`` in server mode on 127.0.0.1, one bucket;
- a Ray head with ``--num-cpus=0`` (as Ray advises for large clusters: no task runs there);
- worker nodes, started one at a time, **each in its own mount namespace with a tmpfs over
  the cluster's work area** (``unshare -m --propagation private`` then ``mount -t tmpfs``):
  a node sees neither the driver's work directory nor another node's files, as on
  separate machines. What nodes share is the S3 API, as on a cloud;
- a real ``mlflow server`` (SQLite backend, artifacts on the S3 API, one worker).

Token authentication is on everywhere (``RAY_AUTH_MODE=token``): the token is generated
here, given to the head and the driver as a file (``RAY_AUTH_TOKEN_PATH``) and to the
worker nodes in their environment. Every port is picked free at random and every Ray node
has its own ``--temp-dir``, so clusters of other users of this machine are never touched.

Needs root (or a user namespace) for ``unshare -m`` and ``mount``: :func:`why_not` says
why the fixture cannot run here, for a skip with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "edray-cluster"
_KEY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1"}
# Every variable that could point a node at someone else's cluster, store or server.
_DROP = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "EDRAY_WORKDIR", "EDRAY_SHARED", "EDRAY_CACHE", "RAY_AUTH_TOKEN",
         "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN")


def why_not() -> str | None:
    """Why the simulated cluster cannot start here, or None when it can."""
    for tool in ("unshare", "mount", "ray", "mlflow"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    try:
        import moto  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        return "moto[server] is not installed (pip install -e '.[test]')"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs edray-probe /mnt && umount /mnt"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"cannot make a private mount namespace with a tmpfs (needs root): {probe.stderr.strip()[:160]}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_TAKEN: set[int] = set()


def _worker_port_range() -> tuple[int, int]:
    """A random block of 60 ports for Ray's worker processes, below Linux's ephemeral range
    (32768+, where :func:`_ports` draws the others), never the same block twice here."""
    while True:
        block = secrets.randbelow(200)
        if block not in _TAKEN:
            _TAKEN.add(block)
            start = 20000 + block * 60
            return start, start + 59


def _wait(check, what: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        time.sleep(0.25)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s:\n{tail}")


def _http_ok(url: str) -> bool:
    """The server answers (an auth refusal counts: it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except Exception:
        return False


def stop_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    node_id: str = ""


@dataclass
class SimCluster:
    """The running cluster: addresses, the environments to run a driver in, and its nodes."""

    base: Path  # the work area: hidden under a tmpfs on every worker node
    logs: Path  # outside the work area, so a node's log survives its tmpfs
    token: str
    token_path: Path
    gcs_address: str
    dashboard_url: str
    s3_endpoint: str
    mlflow_uri: str
    common_env: dict[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)
    services: list[subprocess.Popen] = field(default_factory=list)

    def shared(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix.strip('/')}"

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver on the head: joins with ``--address auto``, token by file."""
        env = {**self.common_env, "RAY_ADDRESS": self.gcs_address, "RAY_AUTH_TOKEN_PATH": str(self.token_path),
               "MLFLOW_TRACKING_URI": self.mlflow_uri, "EDRAY_CACHE": str(self.base / "driver-cache")}
        env.update(extra)
        return env

    def alive_workers(self) -> list[str]:
        return [n for n, node in self.nodes.items() if n != "head" and node.proc.poll() is None]

    def kill_node(self, name: str) -> None:
        """Kill worker node ``name`` at once (SIGKILL to its process group), like a lost machine."""
        node = self.nodes[name]
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait(timeout=30)

    def node_ids(self) -> dict[str, str]:
        """Ray node id -> fixture node name, for the nodes alive now."""
        return {node.node_id: name for name, node in self.nodes.items() if node.node_id}

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            stop_group(self.nodes[name].proc)
        for proc in reversed(self.services):
            stop_group(proc)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(ROOT))


HeadExtra = Callable[["SimCluster"], tuple[list[str], dict[str, str]]]


def start_cluster(base: Path, logs: Path, *, workers: int = 2, worker_cpus: int = 2,
                  head_extra: HeadExtra | None = None) -> SimCluster:
    """Start S3, MLflow, a head and ``workers`` worker nodes; the caller must call ``stop()``.

    ``head_extra(cluster)`` gives more ``ray start`` flags and environment for the head
    (tests/autoscaling_fixture.py: the autoscaler's config, which needs the GCS address).
    """
    base.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    token_path = logs / "auth_token"  # the driver's copy; worker nodes get theirs in the environment
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    s3_port, gcs_port, dash_port, client_port, mlflow_port = _ports(5)
    s3 = f"http://127.0.0.1:{s3_port}"
    env.update(_KEY)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]),
        "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "AWS_ENDPOINT_URL": s3, "AWS_EC2_METADATA_DISABLED": "true",
        "MLFLOW_S3_ENDPOINT_URL": s3, "RAY_DASHBOARD_HOST": "127.0.0.1", "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    cluster = SimCluster(base, logs, token, token_path, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}",
                         s3, f"http://127.0.0.1:{mlflow_port}", env)
    try:
        _start_s3(cluster, s3_port)
        _start_mlflow(cluster, mlflow_port)
        _start_head(cluster, gcs_port, dash_port, client_port, *(head_extra(cluster) if head_extra else ([], {})))
        for i in range(workers):
            start_worker(cluster, f"worker{i + 1}", cpus=worker_cpus)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_s3(cluster: SimCluster, port: int) -> None:
    log = cluster.logs / "moto.log"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], cluster.common_env, log)
    cluster.services.append(proc)
    _wait(lambda: _http_ok(f"{cluster.s3_endpoint}/moto-api/"), "moto S3 server", 60, proc, log)
    import boto3

    boto3.client("s3", endpoint_url=cluster.s3_endpoint, **_boto_kwargs()).create_bucket(Bucket=BUCKET)


def s3_client(cluster: SimCluster):
    """A boto3 client of the cluster's S3 API (the test reads what the nodes wrote)."""
    import boto3

    return boto3.client("s3", endpoint_url=cluster.s3_endpoint, **_boto_kwargs())


def s3_keys(cluster: SimCluster, prefix: str) -> list[str]:
    """The keys under ``prefix`` in the cluster's bucket."""
    pages = s3_client(cluster).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _boto_kwargs() -> dict[str, str]:
    return {"aws_access_key_id": _KEY["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": _KEY["AWS_SECRET_ACCESS_KEY"],
            "region_name": _KEY["AWS_DEFAULT_REGION"]}


def _start_mlflow(cluster: SimCluster, port: int) -> None:
    """As the cluster files run it: SQLite on the head's disk, artifacts on the shared location."""
    db = cluster.logs / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    env = {**cluster.common_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = cluster.logs / "mlflow.log"
    proc = _spawn([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                   "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1"], env, log)
    cluster.services.append(proc)
    _wait(lambda: _http_ok(f"{cluster.mlflow_uri}/health"), "mlflow server", 120, proc, log)


def _node_flags(temp_dir: str) -> list[str]:
    node_manager, object_manager, metrics, agent_http, agent_grpc, runtime_env = _ports(6)
    low, high = _worker_port_range()
    return ["--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1", "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager), "--metrics-export-port", str(metrics),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env), "--min-worker-port", str(low),
            "--max-worker-port", str(high), "--object-store-memory", str(96 << 20), "--disable-usage-stats",
            "--block"]


def _start_head(cluster: SimCluster, gcs_port: int, dash_port: int, client_port: int, extra_args: list[str],
                extra_env: dict[str, str], tries: int = 3) -> None:
    temp = cluster.logs / "head-ray"  # the head's own disk
    env = {**cluster.common_env, "RAY_AUTH_TOKEN_PATH": str(cluster.token_path), **extra_env}
    log = cluster.logs / "head.log"
    for attempt in range(1, tries + 1):  # Ray's 30 s start-up limit can run out on a loaded machine
        cmd = ["ray", "start", "--head", "--num-cpus=0", "--num-gpus=0", "--port", str(gcs_port),
               "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
               "--ray-client-server-port", str(client_port), *extra_args, *_node_flags(str(temp))]
        proc = _spawn(cmd, env, log)
        cluster.nodes["head"] = Node("head", proc, log)
        try:
            _wait(lambda: _http_ok(f"{cluster.dashboard_url}/api/version"), "ray head", 120, proc, log)
            cluster.nodes["head"].node_id = _wait_node(cluster, proc, log)
            return
        except RuntimeError:
            stop_group(proc)
            if attempt == tries:
                raise


def start_worker(cluster: SimCluster, name: str, *, cpus: int = 2, tries: int = 5) -> Node:
    """A worker node in its own mount namespace: a fresh tmpfs hides the work area, then ``ray start``.

    Ray gives a new raylet 30 s (hard-coded) to register; on a machine this loaded that can
    run out, so a node that exits before it is ready is started again (``tries`` times).
    """
    area = str(cluster.base)
    home = f"{area}/{name}"
    env = {**cluster.common_env, "RAY_AUTH_TOKEN": cluster.token, "EDRAY_CACHE": f"{home}/cache",
           "EDRAY_NODE_NAME": name}
    script = f'mount -t tmpfs -o size=4g edray-{name} "$1" && mkdir -p "$2/cache" && shift 2 && exec "$@"'
    log = cluster.logs / f"{name}.log"
    for attempt in range(1, tries + 1):
        ray_cmd = ["ray", "start", "--address", cluster.gcs_address, f"--num-cpus={cpus}", "--num-gpus=0",
                   "--resources", f'{{"node:{name}": 1}}', *_node_flags(f"{home}/ray")]
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", area, home, *ray_cmd]
        proc = _spawn(cmd, env, log)
        node = Node(name, proc, log)
        cluster.nodes[name] = node
        try:
            node.node_id = _wait_node(cluster, proc, log, resource=f"node:{name}")
            return node
        except RuntimeError:
            stop_group(proc)
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


def _wait_node(cluster: SimCluster, proc: subprocess.Popen, log: Path, resource: str = "") -> str:
    """Wait until the GCS lists a live node (with ``resource``, if given); return its node id."""
    found: list[str] = []

    def check() -> bool:
        try:
            with urllib.request.urlopen(_nodes_request(cluster), timeout=3) as r:
                import json

                nodes = json.load(r)["data"]["summary"]
        except Exception:
            return False
        for n in nodes:
            raylet = n.get("raylet", {})
            if raylet.get("state") != "ALIVE":
                continue
            resources = raylet.get("resourcesTotal", {})
            if (resource and resource in resources) or (not resource and raylet.get("isHeadNode")):
                found.append(raylet["nodeId"])
                return True
        return False

    _wait(check, f"ray node ({resource or 'head'})", 120, proc, log)
    return found[-1]


def _nodes_request(cluster: SimCluster) -> urllib.request.Request:
    return urllib.request.Request(f"{cluster.dashboard_url}/nodes?view=summary",
                                  headers={"Authorization": f"Bearer {cluster.token}"})

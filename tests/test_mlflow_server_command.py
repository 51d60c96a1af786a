"""The cluster files' own ``mlflow server`` command, run as the head runs it, with a managed
PostgreSQL as its backend store (``MLFLOW_BACKEND_STORE_URI``) and artifacts on the S3 API.

Two things differ from a cloud head, and the test says so where it changes them: the node
address (the command asks Ray for it; here it is 127.0.0.1) and the port (a free one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster_fixture import _http_ok, _spawn, _wait, free_port, stop_group

ROOT = Path(__file__).resolve().parents[1]
NODE_IP = "$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')"
BUCKET = "edray-mlflow-test"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _server_command(cluster_file: str, port: int) -> str:
    commands = yaml.safe_load((ROOT / "clusters" / cluster_file).read_text())["head_start_ray_commands"]
    (command,) = [c for c in commands if "mlflow server" in c]
    assert NODE_IP in command and "--port 5000" in command
    return command.replace(NODE_IP, "127.0.0.1").replace("--port 5000", f"--port {port}").replace(
        "127.0.0.1:5000", f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One S3 API for the module: MLflow caches its S3 client per process, endpoint included."""
    tmp_path = tmp_path_factory.mktemp("s3")
    port = free_port()
    env = {**os.environ, **KEYS}
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, tmp_path / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(f"{endpoint}/moto-api/"), "moto S3 server", 60, proc, tmp_path / "moto.log")
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name=KEYS["AWS_DEFAULT_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        stop_group(proc)



@pytest.mark.slow
@pytest.mark.parametrize("cluster_file", ["aws.yaml", "gcp.yaml"])
def test_the_files_mlflow_server_keeps_runs_in_postgres_and_artifacts_on_s3(tmp_path, s3, postgres, cluster_file,
                                                                             monkeypatch):
    endpoint, s3_client = s3
    # --default-artifact-root: clients (the sweep driver) write artifacts to S3 themselves.
    for key, value in {**KEYS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    backend = postgres.create_database("mlflow")
    home = tmp_path / "home"
    (home / "edray-mlflow").mkdir(parents=True)  # head_setup_commands' mkdir
    port = free_port()
    env = {**os.environ, **KEYS, "HOME": str(home), "AWS_ENDPOINT_URL": endpoint,
           "EDRAY_SHARED": f"s3://{BUCKET}/{cluster_file}", "MLFLOW_BACKEND_STORE_URI": backend,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shell = _spawn(["bash", "-c", _server_command(cluster_file, port)], env, tmp_path / "shell.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(f"{uri}/health"), "the cluster file's mlflow server", 180, None,
              home / "edray-mlflow" / "server.log")
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.create_experiment("digits")
        run = client.create_run(exp, run_name="sweep").info.run_id
        client.log_metric(run, "val_acc", 0.5)
        client.log_text(run, "best config", "best.yaml")
        client.set_terminated(run)

        # The run is in PostgreSQL (not in a SQLite file on the head's disk) ...
        out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-h", "127.0.0.1", "-p", str(postgres.port),
                              "-d", "mlflow", "-tAc", f"select status from runs where run_uuid = '{run}'"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "FINISHED", out.stderr
        assert not (home / "edray-mlflow" / "mlflow.db").exists()
        # ... and its artifact on the shared location, under mlflow-artifacts/.
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert f"{cluster_file}/mlflow-artifacts/{exp}/{run}/artifacts/best.yaml" in keys
        assert client.download_artifacts(run, "best.yaml", str(tmp_path))  # read back through the server
        assert (tmp_path / "best.yaml").read_text() == "best config"
    finally:
        stop_group(shell)  # the nohup'd server stays in the shell's process group

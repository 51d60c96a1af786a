"""What the wait for worker nodes decides without a cluster (edray.clusters.capacity);
tests/test_autoscaling.py runs it against Ray's real autoscaler."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edray.clusters.capacity import NodeType, _monitor_config, _v1_view, format_request, step_request, unsatisfiable

# The node types of tests/autoscaling_fixture.py, shaped like clusters/aws.yaml's pools.
TYPES = [NodeType("cpu_worker", {"CPU": 1.0}, 2), NodeType("gpu_worker", {"CPU": 4.0, "GPU": 1.0}, 1),
         NodeType("gpu_big", {"CPU": 48.0, "GPU": 4.0}, 0)]


def test_a_step_asks_one_trial_workers_resources():
    assert step_request({"CPU": 2}, False) == {"CPU": 2.0}
    assert step_request({"cpu": 1}, True) == {"CPU": 1.0, "GPU": 1.0}
    assert step_request({"CPU": 1, "accel": 1}, False) == {"CPU": 1.0, "accel": 1.0}
    assert step_request({}, False) == {"CPU": 1.0}
    assert format_request({"CPU": 4.0, "GPU": 0.5}) == "{CPU: 4, GPU: 0.5}"


def test_a_request_is_unsatisfiable_when_no_node_type_that_may_start_offers_it():
    assert not unsatisfiable({"CPU": 1.0}, TYPES)
    assert not unsatisfiable({"CPU": 4.0, "GPU": 1.0}, TYPES)
    assert unsatisfiable({"CPU": 8.0, "GPU": 1.0}, TYPES)  # only gpu_big offers it, and it may start none
    assert unsatisfiable({"CPU": 1.0, "TPU": 1.0}, TYPES)
    assert unsatisfiable({"CPU": 1.0}, [])


def test_the_autoscaler_config_is_found_from_the_monitor_of_this_cluster(tmp_path):
    config = tmp_path / "autoscaling.yaml"
    # A process whose command line is the one `ray start --head` gives Ray's monitor.
    monitor = [sys.executable, "-c", "import time; time.sleep(60)", "/x/ray/autoscaler/_private/monitor.py",
               "--logs-dir=/tmp/x", "--gcs-address=10.0.0.1:47001", f"--autoscaling-config={config}"]
    bare = [*monitor[:-2], "--gcs-address=10.0.0.1:47002"]  # a head started without an autoscaling config
    procs = [subprocess.Popen(cmd) for cmd in (monitor, bare)]
    try:
        for proc, cmd in zip(procs, (monitor, bare)):  # each shows its command line (a loaded machine lags)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:len(cmd)] != [a.encode() for a in cmd]:
                assert time.monotonic() < deadline, f"pid {proc.pid} never showed its command line"
                time.sleep(0.05)
        assert _monitor_config("47001") == config
        assert _monitor_config("47002") == type(config)()  # seen, no autoscaler
        assert _monitor_config("47003") is None  # another cluster's port: not seen
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_what_the_autoscaler_is_doing_reads_as_one_phrase():
    # The v1 autoscaler's status record (``__autoscaling_status``), as Ray 2.60 wrote it in
    # tests/test_autoscaling.py while a cpu_worker launched and a node of it started.
    status = {"autoscaler_report": {
        "active_nodes": {"ray.head.default": 1}, "pending_launches": {"cpu_worker": 1},
        "pending_nodes": [["fffff00002", "cpu_worker", "uninitialized"]], "failed_nodes": [],
        "pending_resources": {"CPU": 1}, "legacy": True}}
    assert _v1_view(status).describe() == "autoscaler launching 1 cpu_worker, starting 1 cpu_worker"
    idle = {"autoscaler_report": {"pending_launches": {}, "pending_nodes": [], "failed_nodes": []}}
    assert _v1_view(idle).describe() == "autoscaler idle"
    assert _v1_view({"load_metrics_report": {}}).describe() == "no autoscaler reports on this cluster"

"""The node probe of a cluster sweep (distributed/cluster.py) on a real local Ray: a node
listed alive that has left the cluster is skipped, not fatal."""

from __future__ import annotations

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from edray.distributed.cluster import _get_all


def _where() -> str:
    return ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def test_a_task_pinned_to_a_node_that_left_is_skipped_only_when_asked(local_ray):
    task = ray.remote(_where)
    here = ray.get_runtime_context().get_node_id()
    lost = "ab" * (len(here) // 2)  # a node id the GCS does not know: as a node killed a moment ago

    def refs():
        return [task.options(num_cpus=0, max_retries=0,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                for node in (here, lost)]

    assert _get_all(refs(), "probe", skip_lost_nodes=True) == [here]
    with pytest.raises(ray.exceptions.TaskUnschedulableError):
        _get_all(refs(), "probe")

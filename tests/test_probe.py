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


def test_a_node_is_checked_once_a_sweep_and_a_failure_names_it(tmp_path, monkeypatch):
    """The per-node check (distributed/node_check.py) on one "node": memoised in the process
    and by a marker in the node's cache, recorded on the shared location, and its failure
    one line naming the node and the fix, recorded for the driver."""
    from edray.distributed import node_check
    from edray.errors import EdrayError
    from edray.layout import Layout

    monkeypatch.setenv("EDRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDRAY_NODE_NAME", "node-a")
    from edray.cache import node_name

    me = node_name()  # node-a, and its Ray node id while this module's Ray runs
    layout = Layout.at(tmp_path / "work", shared=str(tmp_path / "shared"))
    check = node_check.NodeCheck.write(layout, dataset_root=None)
    assert check.ensure(layout) == me and check.checked() == [me] and check.failure() is None
    probe = tmp_path / "shared" / ".edray-probe" / check.token / "probe"
    probe.write_text("another sweep's token")  # read again, it would fail: it is not read again
    assert check.ensure(layout) == me
    node_check._CHECKED_HERE.clear()  # another process on the node: the marker in its cache
    assert check.ensure(layout) == me

    missing = node_check.NodeCheck.write(layout, dataset_root=str(tmp_path / "no-dataset"))
    with pytest.raises(EdrayError) as err:
        missing.ensure(layout)
    assert str(err.value).startswith(f"dataset.root: node {me} has no dataset at ") and "fix: " in str(err.value)
    assert str(missing.failure()) == str(err.value) and missing.checked() == []  # what the driver raises
    missing.discard()
    check.discard()
    assert not [p for p in (tmp_path / "shared").rglob("*") if p.is_file()]

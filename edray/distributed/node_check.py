"""The check of a node, run where a sweep's work first lands (docs/design.md#clusters).

On an autoscaling cluster nodes join while the sweep runs (and replace lost ones), so a
node is checked by the first unit of work that lands on it (a teacher's Train worker, a
store shard, a trial, the final evaluation), not once up front: can it read the file the
driver wrote to the shared location, and does it have the dataset? A node that cannot
fails that work in one line naming the node and the fix, instead of failing later on a
missing file.

Once per node per sweep: a node remembers the check in its process and as a marker in
its cache (``<cache>/.edray-checked/<token>-<node>``), and records itself under
``<shared>/.edray-probe/<token>/nodes/`` (what ``placement.nodes`` lists). A failure is
recorded there too, so a step whose error Ray wraps (a Train job, a Tune trial) can say
it in the same line. The driver removes the folder when the sweep ends.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from edray.atomic import write_text
from edray.cache import node_name, unreachable
from edray.errors import EdrayError
from edray.layout import Layout
from edray.storage import discard, is_uri, join, list_files, read_bytes, write_bytes

__all__ = ["NodeCheck"]

_CHECKED_HERE: set[str] = set()  # "<token>-<node>" checked by this process


def _node_id() -> str:
    """This node: the Ray node id inside a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001  (a worker without a runtime context: named by host)
        pass
    return socket.gethostname()


@dataclass(frozen=True)
class NodeCheck:
    """What a node checks: the driver's probe file under ``folder`` (holding ``token``),
    and ``dataset_root`` (None: the dataset is embedded or read by URI later)."""

    folder: str  # <shared>/.edray-probe/<token>
    token: str
    dataset_root: str | None

    @classmethod
    def write(cls, layout: Layout, dataset_root: str | None) -> NodeCheck:
        """A new check of this sweep: the driver writes its probe file to the shared location.

        Raises:
            EdrayError: the driver cannot write there.
        """
        token = uuid.uuid4().hex
        check = cls(join(layout.shared, ".edray-probe", token), token, dataset_root)
        try:
            write_bytes(check._probe, token.encode())
        except Exception as err:
            raise EdrayError(layout.shared, f"the driver cannot write the shared location ({err})",
                             "check EDRAY_SHARED and the driver's credentials") from None
        return check

    @property
    def _probe(self) -> str:
        return join(self.folder, "probe")

    def ensure(self, layout: Layout) -> str:
        """Check this node unless it was this sweep; returns its name.

        Raises:
            EdrayError: it cannot read the shared location, reads another file, or has no dataset.
        """
        node = _node_id()
        key = f"{self.token}-{node}"
        marker = layout.cache() / ".edray-checked" / key
        if key in _CHECKED_HERE or marker.exists():
            _CHECKED_HERE.add(key)
            return node_name()
        try:
            self._check()
        except EdrayError as err:
            self._record("failed", node, json.dumps(vars(err)))
            raise
        self._record("nodes", node, node_name())
        write_text(marker, node_name())
        _CHECKED_HERE.add(key)
        return node_name()

    def _check(self) -> None:
        try:
            seen = read_bytes(self._probe).decode()
        except Exception as err:
            raise unreachable(self._probe, err) from None
        if seen != self.token:
            raise EdrayError(self._probe, f"node {node_name()} reads another file than the driver wrote",
                             "point EDRAY_SHARED at the same location on every node")
        root = self.dataset_root
        if root and is_uri(root):
            try:
                files = list_files(root)
            except Exception as err:
                raise unreachable(root, err) from None
            if not files:
                raise EdrayError("dataset.root", f"no files under {root} (seen from node {node_name()})",
                                 "upload the dataset there first, or fix dataset.root")
        elif root and not Path(root).expanduser().is_dir():
            raise EdrayError("dataset.root", f"node {node_name()} has no dataset at {root}",
                             "copy it to that path on every node (the cluster files' setup commands do), or put it "
                             "under EDRAY_SHARED and give dataset.root as its URI")

    def _record(self, kind: str, node: str, text: str) -> None:
        try:
            write_bytes(join(self.folder, kind, node), text.encode())
        except Exception:  # noqa: BLE001  (a node that cannot write there failed its check already)
            pass

    # -- the driver's side ---------------------------------------------------------------
    def checked(self) -> list[str]:
        """The names of the nodes checked so far, in the order of their node ids."""
        return [read_bytes(join(self.folder, "nodes", n)).decode() for n in sorted(self._listed("nodes"))]

    def failure(self) -> EdrayError | None:
        """The first node's failed check, as its one-line error (None: no node failed)."""
        for name in sorted(self._listed("failed")):
            record = json.loads(read_bytes(join(self.folder, "failed", name)))
            return EdrayError(record["path"], record["problem"], record["fix"], exit_code=record["exit_code"])
        return None

    def raise_failure(self) -> None:
        """Raise a node's failed check, if one failed (a step whose own error Ray wrapped)."""
        err = self.failure()
        if err is not None:
            raise err

    def discard(self) -> None:
        """Remove the probe file and the nodes' records (only once no work is left to land)."""
        for name in self._listed(""):
            discard(join(self.folder, name))

    def _listed(self, kind: str) -> list[str]:
        try:
            return list(list_files(join(self.folder, kind) if kind else self.folder))
        except Exception:  # noqa: BLE001  (nothing listed: nothing recorded)
            return []




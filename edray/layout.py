"""Where everything lives: one shared root, one node-local cache, and the folders under them.

On one machine the work directory plays both parts. On a cluster, nodes share nothing
but ``EDRAY_SHARED`` (an ``s3://`` or ``gs://`` prefix, or a path mounted on every node):
anything more than one node needs lives there (docs/design.md#clusters)::

    <shared>/teachers/         teacher checkpoints (+ a .sha256 beside each)
    <shared>/logits/           logit stores (manifest.json + shards)
    <shared>/datasets/         datasets (``dataset.root`` may name one by URI)
    <shared>/ray_results/      Tune's experiment state (so a trial restarts on another node)
    <shared>/ray_train/        nested TorchTrainer runs
    <shared>/models/           trained students, one file per trial
    <shared>/mlflow-artifacts/ what the MLflow server stores (the cluster files point it here)

and each node keeps its own copy of what trials read, fetched once:

    <cache>/logits/  <cache>/teachers/  <cache>/datasets/

The driver's work directory keeps what only the driver needs: the sweep's resume state,
``best.yaml``, figures and the embedded MLflow store.

A :class:`Layout` is made once (from ``--workdir`` and the environment) and passed down,
so "where is this on a cluster?" has one answer, here. It pickles small; the node-local
cache is resolved on the node that asks (``EDRAY_CACHE`` there), never on the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edray.names import MLFLOW_ARTIFACTS
from edray.storage import is_uri, join, local_path

__all__ = ["SHARED_ENV", "CACHE_ENV", "Layout"]

SHARED_ENV = "EDRAY_SHARED"
CACHE_ENV = "EDRAY_CACHE"


@dataclass(frozen=True)
class Layout:
    """The locations of one run (see the module docstring).

    Attributes:
        workdir: the driver's work directory (absolute).
        shared: ``EDRAY_SHARED`` as given (a URI or an absolute path), or None on one machine.
        store_uri: ``teachers.store_uri``: stores built elsewhere, read from there.
    """

    workdir: str
    shared: str | None = None
    store_uri: str | None = None

    @classmethod
    def from_env(cls, workdir: str | os.PathLike[str], *, store_uri: str | None = None,
                 shared: str | None = None) -> Layout:
        """``shared`` (else ``$EDRAY_SHARED``, else none) around ``workdir``."""
        shared = shared if shared is not None else (os.environ.get(SHARED_ENV) or None)
        if shared is not None:
            shared = shared.strip().rstrip("/") if is_uri(shared) else str(local_path(shared))
        return cls(str(Path(workdir).expanduser().resolve()), shared, store_uri)

    # -- the shared root and what lies under it ----------------------------------------
    @property
    def on_cluster(self) -> bool:
        """True when nodes share only ``EDRAY_SHARED``: reads then go through the node cache."""
        return self.shared is not None

    @property
    def root(self) -> str:
        """Where shared things go: ``EDRAY_SHARED``, else the work directory."""
        return self.shared or self.workdir

    def shared_path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def teachers(self) -> str:
        return self.shared_path("teachers")

    @property
    def logits(self) -> str:
        """Where stores are built: ``<root>/logits`` (``teachers.store_uri`` is read-only)."""
        return self.shared_path("logits")

    @property
    def stores(self) -> str:
        """Where trials read stores from: ``teachers.store_uri``, else :attr:`logits`."""
        return self.store_uri.rstrip("/") if self.store_uri else self.logits

    @property
    def ray_results(self) -> str:
        return self.shared_path("ray_results")

    @property
    def ray_train(self) -> str:
        return self.shared_path("ray_train")

    def models(self, sweep: str, run_name: str) -> str:
        """Trained students of one sweep run: the shared root on a cluster, the sweep folder alone."""
        if self.on_cluster:
            return self.shared_path("models", sweep, run_name)
        return join(self.workdir, "sweeps", sweep, "models", run_name)

    @property
    def datasets(self) -> str:
        return self.shared_path("datasets")

    @property
    def mlflow_artifacts(self) -> str:
        return self.shared_path(MLFLOW_ARTIFACTS)

    # -- the driver's own folders --------------------------------------------------------
    def sweep_dir(self, sweep: str) -> Path:
        return Path(self.workdir) / "sweeps" / sweep

    # -- this node's cache -----------------------------------------------------------------
    def cache(self) -> Path:
        """This node's cache: ``$EDRAY_CACHE`` on the node, else ``~/.cache/edray`` on a
        cluster, else the work directory itself (one machine: nothing to copy)."""
        env = os.environ.get(CACHE_ENV)
        if env:
            return Path(env).expanduser().resolve()
        if self.on_cluster:
            return Path("~/.cache/edray").expanduser().resolve()
        return Path(self.workdir)

    def needs_fetch(self, location: str) -> bool:
        """Whether ``location`` is read through this node's cache: a URI always, a path on
        a cluster (a shared mount: epochs must not read the network), never the workdir."""
        return is_uri(location) or (self.on_cluster and not _under(location, self.workdir))


def _under(location: str, folder: str) -> bool:
    path = local_path(location)
    return path is not None and (path == Path(folder) or Path(folder) in path.parents)

"""Where everything lives: one shared root, one node-local cache, and the folders under them.

Every command builds one :class:`Layout` (from ``--workdir`` and ``EDRAY_SHARED``) and
passes it down; nothing else spells a location. On a cluster, nodes share nothing but
``EDRAY_SHARED`` (an ``s3://`` or ``gs://`` prefix, or a path mounted on every node), and
anything more than one node needs lives there::

    <shared>/teachers/         teacher checkpoints (+ a .sha256 and a .json record beside each)
    <shared>/logits/           logit stores (manifest.json + shards)
    <shared>/datasets/         datasets (``dataset.root`` may name one by URI)
    <shared>/ray_results/      Tune's experiment state (so a trial restarts on another node)
    <shared>/ray_train/        nested TorchTrainer runs
    <shared>/models/           trained students, one file per trial
    <shared>/sweeps/           each sweep's resume state (a new driver resumes from it)
    <shared>/mlflow-artifacts/ what an MLflow server stores (the cluster files point it here)

and each node keeps its own copy of what trials read, fetched once::

    <cache>/logits/  <cache>/teachers/  <cache>/datasets/  <cache>/images/

The driver's work directory keeps what only the driver needs: the sweep's folder (resume
state, ``best.yaml``, figures), the embedded MLflow store and its artifacts. A sweep's
resume state is copied to ``<shared>/sweeps/`` too, so a driver that lost its work
directory (a replaced head) can ``--resume`` from the shared root alone.

One machine is the case where the shared root *is* the work directory and the node cache
is that directory too: the same names then give ``WORKDIR/teachers``, ``WORKDIR/logits``,
``WORKDIR/images``, and nothing is fetched. ``EDRAY_SHARED`` set on one machine (a folder,
say) works the same as on a cluster: what ``edray teach`` trains is published there, and
``edray train`` or ``precompute`` read it through this machine's cache.

A Layout is a frozen dataclass of three plain fields; it crosses to Ray workers by
pickling and nothing else. The node cache is resolved on the node that asks
(``EDRAY_CACHE`` there), never on the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edray.names import MLFLOW_ARTIFACTS
from edray.storage import is_uri, join, local_path

__all__ = ["CACHE_ENV", "SHARED_ENV", "Layout"]

SHARED_ENV = "EDRAY_SHARED"
CACHE_ENV = "EDRAY_CACHE"


@dataclass(frozen=True)
class Layout:
    """The locations of one command (see the module docstring).

    Attributes:
        workdir: the driver's work directory (absolute).
        shared: the shared root: ``EDRAY_SHARED`` as given (a URI or an absolute path),
            else the work directory itself.
        store_uri: ``teachers.store_uri``: stores built elsewhere, read from there.
    """

    workdir: Path
    shared: str
    store_uri: str | None = None

    @classmethod
    def from_env(cls, workdir: str | os.PathLike[str], *, store_uri: str | None = None,
                 shared: str | None = None) -> Layout:
        """``shared`` (else ``$EDRAY_SHARED``, else the work directory) around ``workdir``."""
        shared = shared if shared is not None else (os.environ.get(SHARED_ENV) or None)
        return cls.at(workdir, shared=shared, store_uri=store_uri)

    @classmethod
    def at(cls, workdir: str | os.PathLike[str], *, shared: str | None = None,
           store_uri: str | None = None) -> Layout:
        """The layout of ``workdir``, sharing ``shared`` (None: one machine, the environment unread)."""
        work = Path(workdir).expanduser().resolve()
        if shared is None:
            root = str(work)
        else:
            root = shared.strip().rstrip("/") if is_uri(shared) else str(local_path(shared))
        return cls(work, root, store_uri.rstrip("/") if store_uri else None)

    # -- the shared root and what lies under it ----------------------------------------
    @property
    def on_cluster(self) -> bool:
        """True when a shared root apart from the work directory is set: reads go through the node cache."""
        return self.shared != str(self.workdir)

    def shared_path(self, *parts: str) -> str:
        return join(self.shared, *parts)

    @property
    def teachers(self) -> str:
        """Where teacher checkpoints are published: ``<shared>/teachers``."""
        return self.shared_path("teachers")

    def teacher(self, name: str) -> str:
        """The shared location of the teacher checkpoint file ``name``."""
        return join(self.teachers, name)

    @property
    def stores(self) -> str:
        """Where logit stores are built and read: ``teachers.store_uri``, else ``<shared>/logits``."""
        return self.store_uri or self.shared_path("logits")

    @property
    def ray_results(self) -> str:
        return self.shared_path("ray_results")

    @property
    def ray_train(self) -> str:
        return self.shared_path("ray_train")

    @property
    def datasets(self) -> str:
        return self.shared_path("datasets")

    def models(self, sweep: str, run_name: str) -> str:
        """Trained students of one sweep run: the shared root on a cluster, the sweep folder alone."""
        if self.on_cluster:
            return self.shared_path("models", sweep, run_name)
        return str(self.sweep_dir(sweep) / "models" / run_name)

    def shared_sweep_dir(self, sweep: str) -> str:
        """A sweep's folder on the shared root: its resume state, for a driver on a new head."""
        return self.shared_path("sweeps", sweep)

    # -- the driver's own folders --------------------------------------------------------
    def sweep_dir(self, sweep: str) -> Path:
        """A sweep's folder: ``sweep.json`` (its resume state), ``best.yaml``, figures."""
        return self.workdir / "sweeps" / sweep

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifacts of the embedded MLflow store (beside its ``mlflow.db``); a tracking
        server decides its own (the cluster files point theirs at ``<shared>/mlflow-artifacts``)."""
        return self.workdir / MLFLOW_ARTIFACTS

    # -- this node's cache -----------------------------------------------------------------
    def cache(self) -> Path:
        """This node's cache: on one machine the work directory itself (nothing to copy);
        on a cluster ``$EDRAY_CACHE`` on the node, else ``~/.cache/edray``."""
        if not self.on_cluster:
            return self.workdir
        env = os.environ.get(CACHE_ENV)
        return Path(env or "~/.cache/edray").expanduser().resolve()

    def node_teachers(self) -> Path:
        """This node's teacher folder (one machine: ``WORKDIR/teachers``, the shared one itself)."""
        return self.cache() / "teachers"

    def teachers_apart(self) -> bool:
        """Whether teachers are published to a shared folder apart from this node's (then
        trained into this node's folder, published, and fetched from there by other nodes)."""
        return self.teachers != str(self.node_teachers())

    def images(self) -> Path:
        """This node's decoded-image caches."""
        return self.cache() / "images"

    def needs_fetch(self, location: str) -> bool:
        """Whether ``location`` is read through this node's cache: a URI always, a path on
        a cluster (a shared mount: epochs must not read the network), never the workdir."""
        return is_uri(location) or (self.on_cluster and not _under(location, self.workdir))


def _under(location: str, folder: Path) -> bool:
    path = local_path(location)
    return path is not None and (path == folder or folder in path.parents)

"""Offline checks of Ray cluster files: launcher YAML (``ray up``) and KubeRay manifests.

Why offline: a mistake in a cluster file otherwise shows up minutes into ``ray up``, after
machines are billed, or never (a GPU pool the autoscaler cannot see stays at zero). This module
reads the file and says which kind it is; :mod:`edray.clusters.launcher` and
:mod:`edray.clusters.kuberay` check each kind, with the rules both share in
:mod:`edray.clusters.credentials` and one error shape in :mod:`edray.clusters.problems`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from edray.clusters.kuberay import is_k8s_object, validate_kuberay
from edray.clusters.launcher import validate_launcher
from edray.errors import EdrayError
from edray.yaml_file import load_yaml_file

__all__ = ["ClusterKind", "is_cluster_file", "validate_cluster_file"]

ClusterKind = Literal["launcher", "kuberay"]


def validate_cluster_file(path: str | Path) -> ClusterKind:
    """Check a Ray cluster file offline and say which kind it is.

    A launcher file (``ray up FILE``) is checked against Ray's JSON schema, the launcher's own
    checks (run here on a copy, with Ray's provider defaults merged in) and edray's rules. A
    KubeRay manifest (``kubectl apply -f FILE``, one or more documents) is checked against
    KubeRay's CRD schemas, edray's rules, then Ray's own RayCluster-to-autoscaler conversion.

    Returns:
        ``"launcher"`` or ``"kuberay"``.

    Raises:
        EdrayError: on the first problem, as ``FILE: <json path>``, what is wrong, and the fix.
    """
    src = str(path)
    text, docs = load_yaml_file(Path(path), what="cluster", example="clusters/aws.yaml", documents=True)
    if not docs:
        raise EdrayError(src, "the file is empty", "start from clusters/aws.yaml or clusters/kuberay.yaml")
    try:
        return _validate_documents(docs, text, src)
    except RecursionError:
        raise EdrayError(src, "a YAML alias contains itself (&x ... *x inside it)", "expand that alias") from None


def is_cluster_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a cluster file rather than an edray spec (``edray validate``
    takes both): a launcher config (``provider``, ``available_node_types``) or a KubeRay
    object. Never raises: a file that does not parse is left to the spec loader's errors."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return any("provider" in d or "available_node_types" in d or str(d.get("apiVersion", "")).startswith("ray.io")
               for d in docs)


def _validate_documents(docs: list[Any], text: str, src: str) -> ClusterKind:
    if any(is_k8s_object(d) and str(d["apiVersion"]).startswith("ray.io/") for d in docs):
        validate_kuberay(docs, text, src)
        return "kuberay"
    if len(docs) == 1 and isinstance(docs[0], dict) and ("provider" in docs[0] or "cluster_name" in docs[0]):
        validate_launcher(docs[0], text, src)
        return "launcher"
    raise EdrayError(
        src, "not a Ray cluster file: expected a launcher config (cluster_name, provider, ...) "
        "or KubeRay objects (apiVersion: ray.io/v1)", "start from clusters/aws.yaml or clusters/kuberay.yaml",
    )

"""Ray cluster files (``clusters/*.yaml``) and their offline validator.

``validate_cluster_file`` checks a cluster-launcher file (``ray up``) or a KubeRay manifest
without cloud credentials, so that ``edray validate clusters/aws.yaml`` fails in a second
instead of minutes into a billed ``ray up``. :mod:`~edray.clusters.validate` reads the file
and picks its kind; :mod:`~edray.clusters.launcher` checks ``ray up`` files and
:mod:`~edray.clusters.kuberay` KubeRay manifests (against KubeRay's CRD schemas in
``schemas/``); :mod:`~edray.clusters.credentials` and :mod:`~edray.clusters.problems` hold
what both share.
"""

from edray.clusters.validate import ClusterKind, is_cluster_file, validate_cluster_file

__all__ = ["ClusterKind", "is_cluster_file", "validate_cluster_file"]

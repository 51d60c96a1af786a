"""KubeRay manifests (``kubectl apply -f FILE``): RayCluster, RayJob and RayService objects.

Their structure is checked against KubeRay's own CRD schemas (the ``ray.io/v1``
openAPIV3Schema, shipped in ``edray/clusters/schemas/``, whose README names the KubeRay
release), with every object closed as ``kubectl apply`` closes it: its strict field validation
refuses a field the CRD does not name. A RayService's ``rayClusterConfig`` is the same type as a
RayCluster's ``spec`` and is checked against that part of the RayCluster schema.

edray's rules come on top: no credentials, Ray token authentication on, nothing exposed
outside the cluster (no LoadBalancer / NodePort / Ingress), every Ray container sized by its
``limits``, a RayJob that names a cluster it can reach; then Ray's own RayCluster-to-autoscaler
conversion, which the autoscaler would otherwise run, and fail, only once the cluster is up.

Every worker group states ``nvidia.com/gpu`` in its Ray container's ``limits`` (``0`` for a
CPU-only group): a GPU asked only in ``requests``, or forgotten, gives pods no GPU and GPU
trials wait forever without an error.
"""

from __future__ import annotations

import copy
import datetime
import json
from decimal import Decimal
from functools import lru_cache
from importlib import resources as importlib_resources
from typing import Any

import yaml

from edray.clusters import ray_private
from edray.clusters.credentials import check_secrets, check_secrets_in_text
from edray.clusters.problems import README, DocLabel, Part, error_at, first_schema_error, schema_error, short

__all__ = ["is_k8s_object", "validate_kuberay"]

_GPU_KEY = "nvidia.com/gpu"
_SCHEMA_FILES = {"RayCluster": "raycluster.json", "RayJob": "rayjob.json"}
_EXPOSED = ("LoadBalancer", "NodePort")
_PORT_FORWARD = "use ClusterIP and `kubectl port-forward` (README.md 'Run on a cluster')"


def is_k8s_object(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def validate_kuberay(docs: list[Any], text: str, src: str) -> None:
    """Check every object of a KubeRay manifest (one or more YAML documents).

    Raises:
        EdrayError: the first problem, as ``FILE: Kind/name.<json path>``, what is wrong, and the fix.
    """
    labels = _labels(docs, src)
    for doc, label in zip(docs, labels):
        check_secrets(doc, src, (label,))
    check_secrets_in_text(text, src)
    clusters = {str(doc["metadata"]["name"]) for doc in docs if doc["kind"] == "RayCluster"}
    for raw, label in zip(docs, labels):
        kind, api = raw["kind"], str(raw["apiVersion"])
        if api.startswith("ray.io/") and api != "ray.io/v1":
            raise error_at(src, [label, "apiVersion"], f"{api} is deprecated or unknown",
                           "use apiVersion: ray.io/v1 (KubeRay >= 1.0)")
        doc = _as_sent(raw)
        if kind in _SCHEMA_FILES:
            _check_crd(doc, _crd_schema(kind), [label], kind, src)
        if kind == "RayCluster":
            _check_cluster_spec(doc.get("spec"), [label, "spec"], src, doc)
        elif kind == "RayJob":
            _check_ray_job(doc, [label], src, clusters)
        elif kind == "RayService":
            spec = doc.get("spec")
            config = spec.get("rayClusterConfig") if isinstance(spec, dict) else None
            where: list[Part] = [label, "spec", "rayClusterConfig"]
            if isinstance(config, dict):
                _check_crd(config, _crd_schema("RayCluster")["properties"]["spec"], where, "RayCluster", src)
            _check_cluster_spec(config, where, src, doc)
        elif api.startswith("ray.io/"):
            raise error_at(src, [label, "kind"], f"unknown KubeRay kind {kind!r}",
                           "use RayCluster, RayJob or RayService")
        _check_exposure(doc, label, src)


def _labels(docs: list[Any], src: str) -> list[DocLabel]:
    """Each document as kubectl names it (``RayCluster/edray``); every one must be an object with a name."""
    labels: list[DocLabel] = []
    for i, doc in enumerate(docs):
        if not is_k8s_object(doc):
            raise error_at(src, [DocLabel(f"document {i}")], "not a Kubernetes object (apiVersion and kind are "
                           "required)", "every document in a KubeRay manifest is a Kubernetes object")
        if not isinstance(doc["kind"], str) or not doc["kind"]:
            raise error_at(src, [DocLabel(f"document {i}"), "kind"], "must be a name, e.g. RayCluster",
                           "set kind: RayCluster, RayJob or RayService")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        label = DocLabel(f"{doc['kind']}/{name}" if isinstance(name, str) and name else f"{doc['kind']}#{i}")
        if not isinstance(name, str) or not name:
            raise error_at(src, [label, "metadata", "name"], "missing or not a string",
                           "give the object a metadata.name")
        labels.append(label)
    return labels


# ----------------------------------------------------------------------------- KubeRay's CRD schemas


@lru_cache(maxsize=None)
def _crd_schema(kind: str) -> dict:
    schemas = importlib_resources.files("edray.clusters").joinpath("schemas")
    text = schemas.joinpath(_SCHEMA_FILES[kind]).read_text("utf-8")
    return _closed(json.loads(text))


def _closed(schema: Any) -> Any:
    """Refuse fields the CRD does not name, as ``kubectl apply``'s strict field validation does.

    A CRD schema leaves objects open (the API server silently prunes unknown fields), so a
    misspelt ``minReplica`` would otherwise pass here and be dropped there.
    """
    if isinstance(schema, dict):
        for value in schema.values():
            _closed(value)
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


def _as_sent(node: Any) -> Any:
    """The object as kubectl sends it: JSON, keys as strings, dates as text, and a field set to
    null left out (the API server prunes nulls of fields that are not nullable)."""
    if isinstance(node, dict):
        return {str(k): _as_sent(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_as_sent(v) for v in node]
    if isinstance(node, (datetime.date, datetime.datetime)):
        return node.isoformat()
    return node


def _check_crd(obj: dict, schema: dict, where: list[Part], kind: str, src: str) -> None:
    error = first_schema_error(schema, obj)
    if error is not None:
        raise schema_error(error, src, where, f"KubeRay's {kind} CRD",
                           lambda key: f"add {key} (see clusters/kuberay.yaml)")


# ----------------------------------------------------------------------------- edray's rules


def _check_cluster_spec(spec: Any, where: list[Part], src: str, doc: dict) -> None:
    if not isinstance(spec, dict):
        raise error_at(src, where, "missing", "add a RayCluster spec with headGroupSpec and workerGroupSpecs")
    _check_auth(spec, where, src)
    head = spec.get("headGroupSpec") or {}
    hwhere = [*where, "headGroupSpec"]
    service_type = head.get("serviceType", "ClusterIP")
    if service_type in _EXPOSED:
        raise error_at(src, [*hwhere, "serviceType"],
                       f"{service_type} exposes the Ray dashboard and GCS outside the cluster", _PORT_FORWARD)
    if head.get("enableIngress"):
        raise error_at(src, [*hwhere, "enableIngress"], "exposes the Ray dashboard through an Ingress",
                       "remove it and use `kubectl port-forward`")
    _check_ray_container(head, hwhere, src, is_head=True)
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        raise error_at(src, [*where, "workerGroupSpecs"], "missing: no worker group, so no GPU trial ever runs",
                       "add a GPU worker group (see clusters/kuberay.yaml)")
    seen: set[str] = set()
    for i, group in enumerate(groups):
        gwhere = [*where, "workerGroupSpecs", i]
        if group["groupName"] in seen:
            raise error_at(src, [*gwhere, "groupName"], f"{group['groupName']!r} is used by two worker groups",
                           "give each a new name")
        seen.add(group["groupName"])
        _check_replicas(group, gwhere, src)
        _check_ray_container(group, gwhere, src, is_head=False)
    _ray_derive_node_types(doc, spec, where, src)


def _check_auth(spec: dict, where: list[Part], src: str) -> None:
    options = spec.get("authOptions")
    mode = options.get("mode") if isinstance(options, dict) else None
    if mode != "token":
        shown = "missing" if options is None else f"mode is {mode!r}"
        raise error_at(src, [*where, "authOptions"], f"{shown}: Ray token authentication is off",
                       "set authOptions: {mode: token} (KubeRay >= 1.5.1 makes and distributes the token)")


def _check_replicas(group: dict, where: list[Part], src: str) -> None:
    low, high, replicas = group["minReplicas"], group["maxReplicas"], group.get("replicas")
    for key, value in (("minReplicas", low), ("maxReplicas", high)):
        if value < 0:
            raise error_at(src, [*where, key], f"{value} is negative", f"set {key} to 0 or more")
    if low > high:
        raise error_at(src, [*where, "minReplicas"], f"{low} > maxReplicas {high}",
                       "raise maxReplicas or lower minReplicas")
    if replicas is not None and not low <= replicas <= high:
        raise error_at(src, [*where, "replicas"], f"{replicas} is outside [minReplicas, maxReplicas]",
                       "set replicas between minReplicas and maxReplicas")


def _check_ray_container(group: dict, where: list[Part], src: str, *, is_head: bool) -> None:
    """The Ray container (KubeRay: the pod's first) has an image and is sized by its ``limits``."""
    pod = group["template"].get("spec")
    if not pod:
        raise error_at(src, [*where, "template", "spec"], "missing", "add template.spec with containers")
    cwhere = [*where, "template", "spec", "containers", 0]
    if not pod["containers"]:
        raise error_at(src, cwhere[:-1], "empty", "list the Ray container first (see clusters/kuberay.yaml)")
    ray = pod["containers"][0]
    if not ray.get("image"):
        raise error_at(src, [*cwhere, "image"], "missing",
                       "set the image that has edray and Ray, e.g. REGISTRY/edray:0.1.0")
    resources = ray.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    lwhere = [*cwhere, "resources", "limits"]
    for key in ("cpu", "memory"):
        if key not in limits:
            raise error_at(src, [*lwhere, key], "missing: without it Ray sizes itself to the whole Kubernetes node",
                           f"set limits.{key} (KubeRay derives the Ray node's resources from limits)")
        _quantity(limits[key], [*lwhere, key], src)
    if _GPU_KEY in requests and _GPU_KEY not in limits:
        raise error_at(src, [*lwhere, _GPU_KEY], "missing while requests asks for GPUs",
                       f"move {_GPU_KEY} to limits (Kubernetes reads GPUs from limits)")
    if _GPU_KEY in limits:
        count = _quantity(limits[_GPU_KEY], [*lwhere, _GPU_KEY], src)
        if count != count.to_integral_value():
            raise error_at(src, [*lwhere, _GPU_KEY], f"{limits[_GPU_KEY]!r} is not a whole number of GPUs",
                           "GPUs are whole devices: use an integer (share a GPU between trials with fractional "
                           "resources in the spec instead)")
        rwhere = [*cwhere, "resources", "requests", _GPU_KEY]
        if _GPU_KEY in requests and _quantity(requests[_GPU_KEY], rwhere, src) != count:
            raise error_at(src, rwhere, "differs from limits",
                           "Kubernetes requires GPU requests to equal limits: drop requests or make them equal")
    elif not is_head:
        raise error_at(src, [*lwhere, _GPU_KEY],
                       "missing: this worker group's pods get no GPU, so GPU trials would wait forever",
                       f'set limits["{_GPU_KEY}"]: 1 (or 0 to mean a CPU-only group on purpose)')


def _quantity(value: Any, where: list[Part], src: str) -> Decimal:
    parse_quantity = ray_private.resolve("parse_quantity")
    try:
        return parse_quantity(value if not isinstance(value, bool) else "x")
    except (ValueError, ArithmeticError, TypeError):
        raise error_at(src, where, f"{value!r} is not a Kubernetes quantity",
                       'write e.g. "4", "500m", "16Gi"') from None


def _ray_derive_node_types(doc: dict, spec: dict, where: list[Part], src: str) -> None:
    """Ray's autoscaler reads the RayCluster this way at run time; let it fail here instead."""
    derive = ray_private.resolve("derive_autoscaling_config")
    metadata = dict(doc.get("metadata") or {})
    metadata.setdefault("namespace", "default")  # kubectl's default; the name space changes nothing checked here
    cr = {"metadata": metadata, "spec": copy.deepcopy(spec)}
    try:
        with ray_private.quiet():
            derive(cr)
    except Exception as err:
        raise error_at(src, where, f"Ray's KubeRay autoscaler cannot read it: {short(str(err) or type(err).__name__)}",
                       README) from None


def _check_ray_job(doc: dict, where: list[Part], src: str, clusters: set[str]) -> None:
    spec = doc.get("spec")
    if not spec:
        raise error_at(src, [*where, "spec"], "missing", "add a RayJob spec with an entrypoint")
    swhere = [*where, "spec"]
    if not str(spec.get("entrypoint", "")).strip():
        raise error_at(src, [*swhere, "entrypoint"], "missing: a RayJob runs its entrypoint",
                       "set entrypoint: edray sweep search_spaces/caltech256.yaml --address auto --json")
    inline, selector = spec.get("rayClusterSpec"), spec.get("clusterSelector")
    if (inline is None) == (selector is None):
        raise error_at(src, swhere, "needs exactly one of rayClusterSpec (a cluster for this job) and clusterSelector "
                       "(an existing RayCluster)", "keep one of them")
    if inline is not None:
        _check_cluster_spec(inline, [*swhere, "rayClusterSpec"], src, doc)
    else:
        target = selector.get("ray.io/cluster")
        if not target:
            raise error_at(src, [*swhere, "clusterSelector"], 'must name a cluster ("ray.io/cluster": NAME)',
                           'set clusterSelector: {"ray.io/cluster": edray}')
        if clusters and target not in clusters:
            raise error_at(src, [*swhere, "clusterSelector", "ray.io/cluster"],
                           f"{target!r} is not a RayCluster in this file ({', '.join(sorted(clusters))})",
                           "name one of the RayClusters defined above")
    runtime_env = spec.get("runtimeEnvYAML")
    if runtime_env is not None:
        try:
            parsed = yaml.safe_load(runtime_env)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict):
            raise error_at(src, [*swhere, "runtimeEnvYAML"], "must be a YAML mapping inside a string",
                           "write `runtimeEnvYAML: |` followed by an indented mapping (see clusters/kuberay.yaml)")


def _check_exposure(doc: dict, label: str, src: str) -> None:
    """A plain Service or Ingress in the manifest must not publish the cluster either."""
    if doc["kind"] == "Ingress":
        raise error_at(src, [label], "an Ingress exposes the cluster outside Kubernetes",
                       "remove it and use `kubectl port-forward` (README.md 'Run on a cluster')")
    spec = doc.get("spec")
    service_type = spec.get("type") if isinstance(spec, dict) else None
    if doc["kind"] == "Service" and service_type in _EXPOSED:
        raise error_at(src, [label, "spec", "type"], f"{service_type} exposes the service outside the cluster",
                       "use ClusterIP and `kubectl port-forward`")

"""Offline checks of Ray cluster files: launcher YAML (``ray up``) and KubeRay manifests.

Why offline: a mistake in a cluster file otherwise shows up minutes into ``ray up``, after
machines are billed, or never (a GPU pool the autoscaler cannot see stays at zero). Ray ships
what is needed to check without cloud credentials: the launcher's JSON schema
(``ray/autoscaler/ray-schema.json``), the launcher's own ``prepare_config`` / ``validate_config``
(defaults merged from the provider's ``defaults.yaml``), and the code that turns a ``RayCluster``
into autoscaler node types. edray adds what those leave out: a JSON path in every message, and
its own rules: no credentials in the file, nothing but SSH open to the internet, the Ray
dashboard and MLflow never bound to all interfaces.

Decisions:

- Every launcher node type has a ``resources`` key (the schema requires it). On AWS it may be
  ``{}``: ``ray up`` fills CPU/GPU/memory from the instance type (an online lookup we cannot
  repeat here). Elsewhere the autoscaler knows only what is written, so a worker type must state
  ``CPU``, and on GCP ``GPU`` must equal the ``guestAccelerators`` it attaches.
- Every KubeRay worker group states ``nvidia.com/gpu`` in its Ray container's ``limits``
  (``0`` for a CPU-only group): a GPU asked only in ``requests``, or forgotten, gives pods no
  GPU and GPU trials wait forever without an error.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Literal

import yaml

from edray.clusters import ray_private
from edray.errors import EdrayError
from edray.yaml_file import load_yaml_file

__all__ = ["ClusterKind", "is_cluster_file", "validate_cluster_file"]

ClusterKind = Literal["launcher", "kuberay"]

Part = str | int
_README = "see README.md 'Run on a cluster'"
_SSH_PORT = 22
_WORLD = {"0.0.0.0/0", "::/0"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_ANY_HOST = {"0.0.0.0", "::", "[::]", "*", ""}
_GPU_KEY = "nvidia.com/gpu"
_SECRET_NAMES = {
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "mlflow_tracking_password", "mlflow_tracking_token",
}
_SECRET_FIX = "delete it (rotate it if it was real); nodes get credentials from their instance role / service account"
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_SECRET_WORDS = "(" + "|".join(sorted(_SECRET_NAMES)) + ")"
_SECRET_ASSIGN_RE = re.compile(
    rf"(?i)(?:\b{_SECRET_WORDS}\s*[=:]\s*|\bconfigure\s+set\s+{_SECRET_WORDS}\s+)[\"']?([^\s\"'$;|&)]+)"
)
_DASHBOARD_HOST_RE = re.compile(r"--dashboard-host(?:=|\s+)[\"']?([^\s\"';]*)")
_MLFLOW_HOST_RE = re.compile(r"(?<![\w-])(?:--host|-h)(?:=|\s+)[\"']?([^\s\"';]*)")
_COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)


def validate_cluster_file(path: str | Path) -> ClusterKind:
    """Check a Ray cluster file offline and say which kind it is.

    A launcher file (``ray up FILE``) is checked against Ray's JSON schema, the launcher's own
    checks (run here on a copy, with Ray's provider defaults merged in) and edray's rules. A
    KubeRay manifest (``kubectl apply -f FILE``, one or more documents) gets structure checks of
    its ``RayCluster`` / ``RayJob`` objects, then Ray's own RayCluster-to-autoscaler conversion.

    Returns:
        ``"launcher"`` or ``"kuberay"``.

    Raises:
        EdrayError: on the first problem, as ``FILE: <json path>``, what is wrong, and the fix.
    """
    src = str(path)
    text, docs = _load_documents(Path(path), src)
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
    if any(_is_k8s_object(d) and str(d["apiVersion"]).startswith("ray.io/") for d in docs):
        _validate_kuberay(docs, text, src)
        return "kuberay"
    if len(docs) == 1 and isinstance(docs[0], dict) and ("provider" in docs[0] or "cluster_name" in docs[0]):
        _validate_launcher(docs[0], text, src)
        return "launcher"
    raise EdrayError(
        src, "not a Ray cluster file: expected a launcher config (cluster_name, provider, ...) "
        "or KubeRay objects (apiVersion: ray.io/v1)", "start from clusters/aws.yaml or clusters/kuberay.yaml",
    )


# ----------------------------------------------------------------------------- loading


def _load_documents(path: Path, src: str) -> tuple[str, list[Any]]:
    text, docs = load_yaml_file(path, what="cluster", example="clusters/aws.yaml", documents=True)
    if not docs:
        raise EdrayError(src, "the file is empty", "start from clusters/aws.yaml or clusters/kuberay.yaml")
    return text, docs


# ----------------------------------------------------------------------------- paths, errors


class _Doc(str):
    """A document of a multi-document manifest, shown as kubectl names it: ``RayCluster/edray``."""


def _fmt(parts: Sequence[Part]) -> str:
    """``available_node_types["ray.head"].resources.GPU``: dots only where a key is a plain name."""
    out = ""
    for part in parts:
        if isinstance(part, _Doc):
            out += part
        elif isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(top level)"


def _error(src: str, parts: Sequence[Part], problem: str, fix: str) -> EdrayError:
    one_line = " ".join(problem.split())
    return EdrayError(f"{src}: {_fmt(parts)}", one_line, " ".join(fix.split()))


def _walk(node: Any, parts: tuple[Part, ...] = ()) -> Iterator[tuple[tuple[Part, ...], Any, Any]]:
    """Every (path, key, value) below ``node``; key is None for list items."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*parts, str(key)), key, value
            yield from _walk(value, (*parts, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*parts, i), None, value
            yield from _walk(value, (*parts, i))


# ----------------------------------------------------------------------------- secrets


def _check_secrets(doc: Any, src: str, prefix: tuple[Part, ...] = ()) -> None:
    """Credentials never belong in a cluster file: it is copied to every node and into git."""
    for parts, key, value in _walk(doc, prefix):
        if isinstance(key, str) and _norm(key) in _SECRET_NAMES and value not in (None, ""):
            raise _error(src, parts, f"{key} in a cluster file", _SECRET_FIX)
        if isinstance(key, str) and key == "gcp_credentials" and value:
            raise _error(src, parts, "inline GCP credentials in a cluster file",
                         "delete them; attach a service account to the VMs (serviceAccounts) or use gcloud's ADC")
        if isinstance(value, dict) and _norm(str(value.get("name", ""))) in _SECRET_NAMES and value.get("value"):
            raise _error(src, (*parts, "value"), f"{value['name']} given as a literal value",
                         "use valueFrom.secretKeyRef, or better a cloud role (IRSA / Workload Identity)")
        if isinstance(value, str):
            _check_secret_text(value, src, parts)


def _check_secret_text(text: str, src: str, parts: Sequence[Part]) -> None:
    if _ACCESS_KEY_RE.search(text):
        raise _error(src, parts, "an AWS access key id (AKIA…/ASIA…) in a cluster file", _SECRET_FIX)
    if _PRIVATE_KEY_RE.search(text):
        raise _error(src, parts, "a private key in a cluster file",
                     "delete it; name a key file instead (auth.ssh_private_key: ~/.ssh/KEY.pem)")
    match = _SECRET_ASSIGN_RE.search(text)
    if match:
        raise _error(src, parts, f"{match.group(1) or match.group(2)} set to a literal value", _SECRET_FIX)


def _check_secrets_in_text(text: str, src: str) -> None:
    """Comments are not parsed but still leak: scan the raw lines too."""
    for number, line in enumerate(text.splitlines(), start=1):
        if _ACCESS_KEY_RE.search(line) or _PRIVATE_KEY_RE.search(line):
            raise EdrayError(f"{src}: line {number}", "an AWS access key id or private key in the file", _SECRET_FIX)


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


# ----------------------------------------------------------------------------- launcher


def _validate_launcher(config: dict, text: str, src: str) -> None:
    _check_secrets(config, src)
    _check_secrets_in_text(text, src)
    _check_schema(config, src)
    provider = config["provider"]
    ptype = provider.get("type")
    _check_provider(provider, src)
    if ptype == "local":
        _check_local(config, src)
    else:
        _check_node_types(config, ptype, src)
    effective = _ray_prepare_and_validate(config, src)
    _check_security_group(provider, src)
    _check_bind_addresses(config, effective, src)
    _check_token_auth(config, effective, src)
    _check_command_shapes(config, src)


@lru_cache(maxsize=1)
def _launcher_schema() -> dict:
    schema = importlib_resources.files("ray.autoscaler").joinpath("ray-schema.json")
    return json.loads(schema.read_text(encoding="utf-8"))


def _check_schema(config: dict, src: str) -> None:
    import jsonschema

    schema = _launcher_schema()
    validator = jsonschema.Draft7Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    parts = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in error.instance if k not in allowed) or ["?"]
        near = difflib.get_close_matches(extra[0], allowed, n=1)
        fix = f"did you mean {near[0]!r}?" if near else f"allowed here: {', '.join(allowed)}"
        raise _error(src, [*parts, extra[0]], "unknown key (Ray's launcher schema allows no other keys here)", fix)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        key = missing[0] if missing else "?"
        raise _error(src, [*parts, key], "missing (required by Ray's launcher schema)", _required_fix(key))
    if error.validator == "type" and error.schema.get("type") == "integer" and "resources" in parts:
        raise _error(src, parts, f"{error.instance!r} is not a whole number",
                     "a node's CPU/GPU count is an integer (fractions are for a trial's request, not a node)")
    raise _error(src, parts, f"{_short(error.message)} (Ray's launcher schema)", _README)


def _required_fix(key: str) -> str:
    fixes = {
        "resources": "state what Ray may schedule on it, e.g. resources: {CPU: 4, GPU: 1} (see clusters/aws.yaml)",
        "node_config": "add the provider's node settings, e.g. node_config: {InstanceType: g5.xlarge}",
        "cluster_name": "add cluster_name: edray",
        "provider": "add provider: {type: aws, region: us-west-2}",
    }
    return fixes.get(key, f"add {key} ({_README})")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _known_providers() -> list[str]:
    try:
        configs = ray_private.resolve("default_provider_configs")
    except ImportError:  # a private module: keep a floor if Ray moves it
        return ["aws", "azure", "gcp", "local", "vsphere"]
    return sorted({*configs, "external"} - {"fake_multinode", "fake_multinode_docker", "readonly", "kuberay"})


def _check_provider(provider: dict, src: str) -> None:
    ptype = provider.get("type")
    known = _known_providers()
    if ptype == "kuberay":
        raise _error(src, ["provider", "type"], "kuberay is not a launcher provider",
                     "for Kubernetes write a RayCluster manifest (see clusters/kuberay.yaml)")
    if ptype not in known:
        near = difflib.get_close_matches(str(ptype), known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise _error(src, ["provider", "type"], f"unknown provider {ptype!r}", f"{hint}known: {', '.join(known)}")
    if ptype == "external" and not provider.get("module"):
        raise _error(src, ["provider", "module"], "missing (an external provider names its module)",
                     "add module: my_package.MyNodeProvider")
    required = {"aws": ["region"], "gcp": ["region", "availability_zone", "project_id"]}.get(ptype, [])
    for key in required:
        if not isinstance(provider.get(key), str) or not provider[key].strip():
            raise _error(src, ["provider", key], f"missing (the {ptype} provider needs it)",
                         f"set provider.{key} (see clusters/{ptype}.yaml)")


def _check_local(config: dict, src: str) -> None:
    """Ray's local provider builds its one node type itself and aborts if the file has any."""
    for key in ("available_node_types", "head_node_type"):
        if key in config:
            raise _error(src, [key], "not allowed with provider type local (Ray builds the node type itself)",
                         "delete it; list the machines in provider.head_ip and provider.worker_ips")
    provider = config["provider"]
    if "coordinator_address" in provider:
        if "max_workers" not in config:
            raise _error(src, ["max_workers"], "missing (required with a coordinator_address)", "add max_workers: N")
        return
    if not isinstance(provider.get("head_ip"), str) or not provider["head_ip"].strip():
        raise _error(src, ["provider", "head_ip"], "missing (the local provider needs the head's address)",
                     "set provider.head_ip to the head machine's IP or hostname")
    ips = provider.get("worker_ips")
    if not isinstance(ips, list) or not all(isinstance(ip, str) and ip.strip() for ip in ips):
        raise _error(src, ["provider", "worker_ips"], "must be a list of IPs or hostnames",
                     "set provider.worker_ips: [10.0.0.2, 10.0.0.3] ([] for a single machine)")
    if provider["head_ip"] in ips:
        raise _error(src, ["provider", "worker_ips"], f"lists the head {provider['head_ip']!r} as a worker too",
                     "remove the head from worker_ips")


def _check_node_types(config: dict, ptype: str, src: str) -> None:
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise _error(src, ["available_node_types"], "missing: Ray would launch its default CPU-only nodes",
                     "declare a head type and GPU worker types (see clusters/aws.yaml)")
    head = config.get("head_node_type")
    if head is None:
        raise _error(src, ["head_node_type"], "missing (required with available_node_types)",
                     f"set head_node_type to one of: {', '.join(types)}")
    if head not in types:
        near = difflib.get_close_matches(str(head), list(types), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise _error(src, ["head_node_type"], f"{head!r} is not among available_node_types",
                     f"{hint}choose one of: {', '.join(types)}")
    sum_min = 0
    for name, spec in types.items():
        where = ["available_node_types", name]
        lo, hi = spec.get("min_workers", 0), spec.get("max_workers")
        if lo < 0 or (hi is not None and hi < 0):
            raise _error(src, [*where, "min_workers" if lo < 0 else "max_workers"], "must be >= 0", "use 0 or more")
        if hi is not None and lo > hi:
            raise _error(src, [*where, "min_workers"], f"min_workers {lo} > max_workers {hi}",
                         "raise max_workers or lower min_workers")
        sum_min += lo
        _check_node_config(spec, where, name == head, ptype, src)
    global_max = config.get("max_workers", _provider_default(ptype, "max_workers"))
    if global_max is not None and sum_min > global_max:
        raise _error(src, ["max_workers"], f"{global_max} is less than the sum of min_workers ({sum_min})",
                     f"set max_workers >= {sum_min}, or lower min_workers")


def _check_node_config(spec: dict, where: list[Part], is_head: bool, ptype: str, src: str) -> None:
    node_config = spec.get("node_config") or {}
    res = spec.get("resources", {})
    if ptype == "aws" and not node_config.get("InstanceType"):
        raise _error(src, [*where, "node_config", "InstanceType"], "missing", "set an EC2 type, e.g. g5.xlarge")
    if ptype == "gcp" and not (node_config.get("machineType") or node_config.get("acceleratorType")):
        raise _error(src, [*where, "node_config", "machineType"], "missing", "set a machine type, e.g. g2-standard-8")
    if ptype != "aws" and not is_head and "CPU" not in res:
        raise _error(src, [*where, "resources", "CPU"],
                     f"missing: on {ptype} the autoscaler knows only what resources says, and never launches it",
                     "state the node's vCPUs (and GPU count), e.g. resources: {CPU: 8, GPU: 1}")
    accelerators = node_config.get("guestAccelerators") if ptype == "gcp" else None
    if accelerators:
        items = accelerators if isinstance(accelerators, list) else [None]
        counts = [a.get("acceleratorCount", 0) if isinstance(a, dict) else None for a in items]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise _error(src, [*where, "node_config", "guestAccelerators"], "must be a list of "
                         "{acceleratorType, acceleratorCount} with integer counts",
                         "write guestAccelerators: [{acceleratorType: nvidia-tesla-t4, acceleratorCount: 1}]")
        count = sum(counts)
        if res.get("GPU", 0) != count:
            raise _error(src, [*where, "resources", "GPU"],
                         f"says {res.get('GPU', 0)} but node_config.guestAccelerators attaches {count}",
                         f"set resources.GPU: {count}")


def _provider_default(ptype: str, key: str) -> Any:
    try:
        return ray_private.resolve("provider_default_config")({"type": ptype}).get(key)
    except Exception:  # no defaults for this provider: Ray's own check runs later anyway
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ray's launcher prints and logs as it prepares a config; a check should not."""
    logger = logging.getLogger("ray.autoscaler")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _ray_prepare_and_validate(config: dict, src: str) -> dict:
    """What ``ray up`` does before touching the cloud: merge defaults, then Ray's own checks."""
    prepare = ray_private.resolve("prepare_config")  # a moved symbol is not the file's fault: outside the try
    validate = ray_private.resolve("validate_config")
    try:
        with _quiet():
            prepared = prepare(copy.deepcopy(config))
            validate(prepared)
    except Exception as err:  # Ray raises ValueError, AssertionError, click exceptions ...
        message = _short(str(err) or type(err).__name__)
        raise EdrayError(src, f"Ray's launcher rejects it: {message}", _README) from None
    return prepared


def _check_security_group(provider: dict, src: str) -> None:
    """Only SSH may face the internet; the dashboard and MLflow are reached through a tunnel."""
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise _error(src, ["provider", "security_group", "IpPermissions", i], "must be a mapping",
                         "write an EC2 IpPermission: {IpProtocol: tcp, FromPort: 22, ToPort: 22, IpRanges: [...]}")
        proto = str(rule.get("IpProtocol", "-1")).lower()
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        ssh_only = proto in ("tcp", "6") and lo == _SSH_PORT and hi == _SSH_PORT
        for field, cidr_key in (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")):
            blocks = rule.get(field) or []
            if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
                raise _error(src, ["provider", "security_group", "IpPermissions", i, field],
                             f"must be a list of {{{cidr_key}: ...}} mappings", f"write {field}: [{{{cidr_key}: ...}}]")
            for j, block in enumerate(blocks):
                cidr = str(block.get(cidr_key, "")).strip()
                if cidr in _WORLD and not ssh_only:
                    ports = "all ports" if proto == "-1" or lo == -1 else _port_range(lo, hi)
                    raise _error(src, ["provider", "security_group", "IpPermissions", i, field, j, cidr_key],
                                 f"opens {ports} ({proto}) to the whole internet ({cidr})",
                                 "only SSH (22) may be open to the world; reach the dashboard and MLflow through "
                                 "an SSH tunnel (README.md 'Run on a cluster'), or narrow the range to your "
                                 "address (x.x.x.x/32)")


def _port_range(lo: Any, hi: Any) -> str:
    return f"port {lo}" if lo == hi else f"ports {lo}-{hi}"


def _iter_commands(config: dict) -> Iterator[tuple[list[Part], str]]:
    for key in _COMMAND_KEYS:
        for i, cmd in enumerate(config.get(key) or []):
            yield [key, i], str(cmd)
    for name, spec in (config.get("available_node_types") or {}).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for i, cmd in enumerate((spec or {}).get(key) or []):
                yield ["available_node_types", name, key, i], str(cmd)


def _check_bind_addresses(config: dict, effective: dict, src: str) -> None:
    """The Ray dashboard (a remote-execution API) and MLflow must never listen on all interfaces."""
    for parts, cmd in _iter_commands(effective):
        given = parts[0] in config
        for match in _DASHBOARD_HOST_RE.finditer(cmd):
            host = match.group(1)
            if host not in _LOOPBACK:
                where = parts if given else [parts[0]]
                problem = (f"starts the Ray dashboard on {host or '(empty)'}" if given else
                           f"not set, and Ray's {config['provider']['type']} default starts the dashboard on {host}")
                raise _error(src, where, problem,
                             "use --dashboard-host=127.0.0.1 and reach it with `ray dashboard CLUSTER.yaml`")
        if re.search(r"\bmlflow\s+(server|ui)\b", cmd):
            for match in _MLFLOW_HOST_RE.finditer(cmd):
                if match.group(1) in _ANY_HOST:
                    raise _error(src, parts, f"binds the MLflow server to {match.group(1) or '(empty)'}",
                                 "bind the head's private address (or 127.0.0.1) and reach it through an SSH tunnel")


_AUTH_OFF_RE = re.compile(r"\bRAY_AUTH_MODE=[\"']?disabled\b")
_RAY_START_RE = re.compile(r"\bray\s+start\b")
_AUTH_FIX = ("keep Ray token authentication on: RAY_AUTH_MODE=token before every `ray start`, the token in "
             "~/.ray/auth_token through file_mounts (README.md 'Run on a cluster')")


def _check_token_auth(config: dict, effective: dict, src: str) -> None:
    """Every ``ray start`` runs with token authentication (Ray 2.59+): without it anyone who
    reaches the GCS or the dashboard port can run code on the cluster."""
    for parts, cmd in _iter_commands(effective):
        given = parts[0] in config
        where = parts if given else [parts[0]]
        if _AUTH_OFF_RE.search(cmd):
            raise _error(src, where, "turns Ray token authentication off (RAY_AUTH_MODE=disabled)", _AUTH_FIX)
        if _RAY_START_RE.search(cmd) and "RAY_AUTH_MODE=token" not in cmd:
            problem = ("starts Ray without token authentication" if given else
                       "not set, and Ray's default commands start Ray without token authentication")
            raise _error(src, where, problem, _AUTH_FIX)


def _check_kuberay_auth(spec: dict, where: list[Part], src: str) -> None:
    options = spec.get("authOptions")
    mode = options.get("mode") if isinstance(options, dict) else None
    if mode != "token":
        shown = "missing" if options is None else f"mode is {mode!r}"
        raise _error(src, [*where, "authOptions"], f"{shown}: Ray token authentication is off",
                     "set authOptions: {mode: token} (KubeRay >= 1.5.1 makes and distributes the token)")


def _check_command_shapes(config: dict, src: str) -> None:
    """Ray runs each command as ``bash -c '... && (CMD)'``: a command that starts with ``(``
    becomes ``((...`` there, which bash reads as arithmetic, so the step fails on every node."""
    for parts, cmd in _iter_commands(config):
        if cmd.lstrip().startswith("("):
            raise _error(src, parts, "starts with '(' and Ray wraps each command in '( )': bash reads '((' as "
                         "arithmetic", "drop the outer parentheses, or start the command with something else")


# ----------------------------------------------------------------------------- KubeRay


def _is_k8s_object(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def _validate_kuberay(docs: list[Any], text: str, src: str) -> None:
    names: list[_Doc] = []
    clusters: set[str] = set()
    for i, doc in enumerate(docs):
        if not _is_k8s_object(doc):
            raise _error(src, [_Doc(f"document {i}")], "not a Kubernetes object (apiVersion and kind are required)",
                         "every document in a KubeRay manifest is a Kubernetes object")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        label = _Doc(f"{doc['kind']}/{name}" if isinstance(name, str) and name else f"{doc['kind']}#{i}")
        names.append(label)
        if not isinstance(name, str) or not name:
            raise _error(src, [label, "metadata", "name"], "missing or not a string", "give the object a metadata.name")
        if doc["kind"] == "RayCluster":
            clusters.add(name)
    for doc, label in zip(docs, names):
        _check_secrets(doc, src, (label,))
    _check_secrets_in_text(text, src)
    for doc, label in zip(docs, names):
        kind, api = doc["kind"], str(doc["apiVersion"])
        if api.startswith("ray.io/") and api != "ray.io/v1":
            raise _error(src, [label, "apiVersion"], f"{api} is deprecated or unknown",
                         "use apiVersion: ray.io/v1 (KubeRay >= 1.0)")
        if kind == "RayCluster":
            _check_ray_cluster_spec(doc.get("spec"), [label, "spec"], src, doc)
        elif kind == "RayJob":
            _check_ray_job(doc, [label], src, clusters)
        elif kind == "RayService":
            spec = doc.get("spec")
            config = spec.get("rayClusterConfig") if isinstance(spec, dict) else None
            _check_ray_cluster_spec(config, [label, "spec", "rayClusterConfig"], src, doc)
        elif api.startswith("ray.io/"):
            raise _error(src, [label, "kind"], f"unknown KubeRay kind {kind!r}", "use RayCluster, RayJob or RayService")
        _check_k8s_exposure(doc, label, src)


def _need(node: Any, key: str, where: list[Part], src: str, kind: type, fix: str) -> Any:
    value = node.get(key) if isinstance(node, dict) else None
    if not isinstance(value, kind) or (kind in (list, dict, str) and not value):
        raise _error(src, [*where, key], "missing" if value is None else f"must be a non-empty {kind.__name__}", fix)
    return value


def _check_ray_cluster_spec(spec: Any, where: list[Part], src: str, doc: dict) -> None:
    if not isinstance(spec, dict):
        raise _error(src, where, "missing", "add a RayCluster spec with headGroupSpec and workerGroupSpecs")
    head = _need(spec, "headGroupSpec", where, src, dict, "add headGroupSpec (see clusters/kuberay.yaml)")
    _check_kuberay_auth(spec, where, src)
    _check_group(head, [*where, "headGroupSpec"], src, is_head=True)
    service_type = head.get("serviceType", "ClusterIP")
    if service_type in ("LoadBalancer", "NodePort"):
        raise _error(src, [*where, "headGroupSpec", "serviceType"],
                     f"{service_type} exposes the Ray dashboard and GCS outside the cluster",
                     "use ClusterIP and `kubectl port-forward` (README.md 'Run on a cluster')")
    if head.get("enableIngress"):
        raise _error(src, [*where, "headGroupSpec", "enableIngress"], "exposes the Ray dashboard through an Ingress",
                     "remove it and use `kubectl port-forward`")
    groups = _need(spec, "workerGroupSpecs", where, src, list, "add a GPU worker group (see clusters/kuberay.yaml)")
    seen: set[str] = set()
    for i, group in enumerate(groups):
        gwhere = [*where, "workerGroupSpecs", i]
        if not isinstance(group, dict):
            raise _error(src, gwhere, "must be a mapping", "see clusters/kuberay.yaml")
        name = _need(group, "groupName", gwhere, src, str, "name the group, e.g. groupName: gpu")
        if name in seen:
            raise _error(src, [*gwhere, "groupName"], f"{name!r} is used by two worker groups", "give each a new name")
        seen.add(name)
        _check_replicas(group, gwhere, src)
        _check_group(group, gwhere, src, is_head=False)
    _ray_derive_node_types(doc, spec, where, src)


def _check_replicas(group: dict, where: list[Part], src: str) -> None:
    values = {}
    for key in ("minReplicas", "maxReplicas"):
        value = group.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _error(src, [*where, key], "missing or not an integer >= 0", f"set {key} (e.g. 0 and 8)")
        values[key] = value
    if values["minReplicas"] > values["maxReplicas"]:
        raise _error(src, [*where, "minReplicas"], f"{values['minReplicas']} > maxReplicas {values['maxReplicas']}",
                     "raise maxReplicas or lower minReplicas")
    replicas = group.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool)):
        raise _error(src, [*where, "replicas"], "must be an integer", "set replicas (or leave it out)")
    if replicas is not None and not (values["minReplicas"] <= replicas <= values["maxReplicas"]):
        raise _error(src, [*where, "replicas"], f"{replicas} is outside [minReplicas, maxReplicas]",
                     "set replicas between minReplicas and maxReplicas")


def _check_group(group: dict, where: list[Part], src: str, *, is_head: bool) -> None:
    params = group.get("rayStartParams", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise _error(src, [*where, "rayStartParams"], "must map names to strings (KubeRay's CRD type)",
                     'quote every value, e.g. num-cpus: "0"')
    template = _need(group, "template", where, src, dict, "add a pod template (see clusters/kuberay.yaml)")
    pod = _need(template, "spec", [*where, "template"], src, dict, "add template.spec with containers")
    cwhere = [*where, "template", "spec", "containers"]
    containers = _need(pod, "containers", [*where, "template", "spec"], src, list, "add the Ray container")
    ray = containers[0]  # KubeRay: the Ray container is the first one
    if not isinstance(ray, dict):
        raise _error(src, [*cwhere, 0], "must be a mapping", "see clusters/kuberay.yaml")
    _need(ray, "image", [*cwhere, 0], src, str, "set the image that has edray and Ray, e.g. REGISTRY/edray:0.1.0")
    res = _need(ray, "resources", [*cwhere, 0], src, dict, "set resources.limits {cpu, memory[, nvidia.com/gpu]}")
    limits = _need(res, "limits", [*cwhere, 0, "resources"], src, dict, "set limits {cpu, memory[, nvidia.com/gpu]}")
    lwhere = [*cwhere, 0, "resources", "limits"]
    for key in ("cpu", "memory"):
        if key not in limits:
            raise _error(src, [*lwhere, key], "missing: without it Ray sizes itself to the whole Kubernetes node",
                         f"set limits.{key} (KubeRay derives the Ray node's resources from limits)")
        _quantity(limits[key], [*lwhere, key], src)
    requests = res.get("requests") or {}
    if not isinstance(requests, dict):
        raise _error(src, [*cwhere, 0, "resources", "requests"], "must be a mapping", "write requests: {cpu: ..., ...}")
    if _GPU_KEY in requests and _GPU_KEY not in limits:
        raise _error(src, [*lwhere, _GPU_KEY], "missing while requests asks for GPUs",
                     f"move {_GPU_KEY} to limits (Kubernetes reads GPUs from limits)")
    if _GPU_KEY in limits:
        count = _quantity(limits[_GPU_KEY], [*lwhere, _GPU_KEY], src)
        if count != count.to_integral_value():
            raise _error(src, [*lwhere, _GPU_KEY], f"{limits[_GPU_KEY]!r} is not a whole number of GPUs",
                         "GPUs are whole devices: use an integer (share a GPU between trials with fractional "
                         "resources in the spec instead)")
        if _GPU_KEY in requests and _quantity(requests[_GPU_KEY], [*cwhere, 0, "resources", "requests", _GPU_KEY],
                                               src) != count:
            raise _error(src, [*cwhere, 0, "resources", "requests", _GPU_KEY], "differs from limits",
                         "Kubernetes requires GPU requests to equal limits: drop requests or make them equal")
    elif not is_head:
        raise _error(src, [*lwhere, _GPU_KEY],
                     "missing: this worker group's pods get no GPU, so GPU trials would wait forever",
                     f'set limits["{_GPU_KEY}"]: 1 (or 0 to mean a CPU-only group on purpose)')


def _quantity(value: Any, where: list[Part], src: str) -> Decimal:
    parse_quantity = ray_private.resolve("parse_quantity")
    try:
        return parse_quantity(value if not isinstance(value, bool) else "x")
    except (ValueError, ArithmeticError, TypeError):
        raise _error(src, where, f"{value!r} is not a Kubernetes quantity", 'write e.g. "4", "500m", "16Gi"') from None


def _ray_derive_node_types(doc: dict, spec: dict, where: list[Part], src: str) -> None:
    """Ray's autoscaler reads the RayCluster this way at run time; let it fail here instead."""
    derive = ray_private.resolve("derive_autoscaling_config")
    metadata = dict(doc.get("metadata") or {})
    metadata.setdefault("namespace", "default")  # kubectl's default; the name space changes nothing checked here
    cr = {"metadata": metadata, "spec": copy.deepcopy(spec)}
    try:
        with _quiet():
            derive(cr)
    except Exception as err:
        raise _error(src, where, f"Ray's KubeRay autoscaler cannot read it: {_short(str(err) or type(err).__name__)}",
                     _README) from None


def _check_ray_job(doc: dict, where: list[Part], src: str, clusters: set[str]) -> None:
    spec = _need(doc, "spec", where, src, dict, "add a RayJob spec with an entrypoint")
    swhere = [*where, "spec"]
    entry = spec.get("entrypoint")
    if not isinstance(entry, str) or not entry.strip():
        raise _error(src, [*swhere, "entrypoint"], "missing: a RayJob runs its entrypoint",
                     "set entrypoint: edray sweep search_spaces/caltech256.yaml --address auto --json")
    inline, selector = spec.get("rayClusterSpec"), spec.get("clusterSelector")
    if (inline is None) == (selector is None):
        raise _error(src, swhere, "needs exactly one of rayClusterSpec (a cluster for this job) and clusterSelector "
                     "(an existing RayCluster)", "keep one of them")
    if inline is not None:
        _check_ray_cluster_spec(inline, [*swhere, "rayClusterSpec"], src, doc)
    else:
        target = selector.get("ray.io/cluster") if isinstance(selector, dict) else None
        if not isinstance(target, str) or not target:
            raise _error(src, [*swhere, "clusterSelector"], 'must name a cluster ("ray.io/cluster": NAME)',
                         'set clusterSelector: {"ray.io/cluster": edray}')
        if clusters and target not in clusters:
            raise _error(src, [*swhere, "clusterSelector", "ray.io/cluster"],
                         f"{target!r} is not a RayCluster in this file ({', '.join(sorted(clusters))})",
                         "name one of the RayClusters defined above")
    runtime_env = spec.get("runtimeEnvYAML")
    if runtime_env is not None:
        try:
            parsed = yaml.safe_load(runtime_env) if isinstance(runtime_env, str) else None
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _error(src, [*swhere, "runtimeEnvYAML"], "must be a YAML mapping inside a string",
                         "write `runtimeEnvYAML: |` followed by an indented mapping (see clusters/kuberay.yaml)")


def _check_k8s_exposure(doc: dict, label: str, src: str) -> None:
    """A plain Service or Ingress in the manifest must not publish the cluster either."""
    if doc["kind"] == "Ingress":
        raise _error(src, [label], "an Ingress exposes the cluster outside Kubernetes",
                     "remove it and use `kubectl port-forward` (README.md 'Run on a cluster')")
    spec = doc.get("spec")
    service_type = spec.get("type") if isinstance(spec, dict) else None
    if doc["kind"] == "Service" and service_type in ("LoadBalancer", "NodePort"):
        raise _error(src, [label, "spec", "type"], f"{service_type} exposes the service outside the cluster",
                     "use ClusterIP and `kubectl port-forward`")

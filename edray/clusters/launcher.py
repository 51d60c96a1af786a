"""Ray's cluster launcher files (``ray up FILE``), checked offline.

Ray ships what is needed to check them without cloud credentials: the launcher's JSON schema
(``ray/autoscaler/ray-schema.json``) and the launcher's own ``prepare_config`` /
``validate_config`` (defaults merged from the provider's ``defaults.yaml``). edray adds what
those leave out: a JSON path in every message, and its own rules: nothing but SSH open to the
internet, the Ray dashboard and MLflow never bound to all interfaces, token authentication on
every ``ray start``, no command that bash would read as arithmetic inside Ray's ``(CMD)``.

Every launcher node type has a ``resources`` key (the schema requires it). On AWS it may be
``{}``: ``ray up`` fills CPU/GPU/memory from the instance type (an online lookup we cannot
repeat here). Elsewhere the autoscaler knows only what is written, so a worker type must state
``CPU``, and on GCP ``GPU`` must equal the ``guestAccelerators`` it attaches.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources as importlib_resources
from typing import Any, cast

from edray.clusters import ray_private
from edray.clusters.credentials import check_secrets, check_secrets_in_text
from edray.clusters.problems import README, Part, error_at, first_schema_error, schema_error, short
from edray.errors import EdrayError

__all__ = ["validate_launcher"]

_SSH_PORT = 22
_WORLD = {"0.0.0.0/0", "::/0"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_ANY_HOST = {"0.0.0.0", "::", "[::]", "*", ""}
_DASHBOARD_HOST_RE = re.compile(r"--dashboard-host(?:=|\s+)[\"']?([^\s\"';]*)")
_MLFLOW_HOST_RE = re.compile(r"(?<![\w-])(?:--host|-h)(?:=|\s+)[\"']?([^\s\"';]*)")
_COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)


def validate_launcher(config: dict, text: str, src: str) -> None:
    """Check one launcher config (the file's only document) as ``ray up`` would, then edray's rules.

    Raises:
        EdrayError: the first problem, as ``FILE: <json path>``, what is wrong, and the fix.
    """
    check_secrets(config, src)
    check_secrets_in_text(text, src)
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
    error = first_schema_error(_launcher_schema(), config)
    if error is None:
        return
    parts = list(error.absolute_path)
    if error.validator == "type" and error.schema.get("type") == "integer" and "resources" in parts:
        raise error_at(src, parts, f"{error.instance!r} is not a whole number",
                       "a node's CPU/GPU count is an integer (fractions are for a trial's request, not a node)")
    raise schema_error(error, src, (), "Ray's launcher schema", _required_fix)


def _required_fix(key: str) -> str:
    fixes = {
        "resources": "state what Ray may schedule on it, e.g. resources: {CPU: 4, GPU: 1} (see clusters/aws.yaml)",
        "node_config": "add the provider's node settings, e.g. node_config: {InstanceType: g5.xlarge}",
        "cluster_name": "add cluster_name: edray",
        "provider": "add provider: {type: aws, region: us-west-2}",
    }
    return fixes.get(key, f"add {key} ({README})")


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
        raise error_at(src, ["provider", "type"], "kuberay is not a launcher provider",
                       "for Kubernetes write a RayCluster manifest (see clusters/kuberay.yaml)")
    if ptype not in known:
        near = difflib.get_close_matches(str(ptype), known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise error_at(src, ["provider", "type"], f"unknown provider {ptype!r}", f"{hint}known: {', '.join(known)}")
    if ptype == "external" and not provider.get("module"):
        raise error_at(src, ["provider", "module"], "missing (an external provider names its module)",
                       "add module: my_package.MyNodeProvider")
    required = {"aws": ["region"], "gcp": ["region", "availability_zone", "project_id"]}.get(ptype, [])
    for key in required:
        if not isinstance(provider.get(key), str) or not provider[key].strip():
            raise error_at(src, ["provider", key], f"missing (the {ptype} provider needs it)",
                           f"set provider.{key} (see clusters/{ptype}.yaml)")


def _check_local(config: dict, src: str) -> None:
    """Ray's local provider builds its one node type itself and aborts if the file has any."""
    for key in ("available_node_types", "head_node_type"):
        if key in config:
            raise error_at(src, [key], "not allowed with provider type local (Ray builds the node type itself)",
                           "delete it; list the machines in provider.head_ip and provider.worker_ips")
    provider = config["provider"]
    if "coordinator_address" in provider:
        if "max_workers" not in config:
            raise error_at(src, ["max_workers"], "missing (required with a coordinator_address)", "add max_workers: N")
        return
    if not isinstance(provider.get("head_ip"), str) or not provider["head_ip"].strip():
        raise error_at(src, ["provider", "head_ip"], "missing (the local provider needs the head's address)",
                       "set provider.head_ip to the head machine's IP or hostname")
    ips = provider.get("worker_ips")
    if not isinstance(ips, list) or not all(isinstance(ip, str) and ip.strip() for ip in ips):
        raise error_at(src, ["provider", "worker_ips"], "must be a list of IPs or hostnames",
                       "set provider.worker_ips: [10.0.0.2, 10.0.0.3] ([] for a single machine)")
    if provider["head_ip"] in ips:
        raise error_at(src, ["provider", "worker_ips"], f"lists the head {provider['head_ip']!r} as a worker too",
                       "remove the head from worker_ips")


def _check_node_types(config: dict, ptype: str, src: str) -> None:
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise error_at(src, ["available_node_types"], "missing: Ray would launch its default CPU-only nodes",
                       "declare a head type and GPU worker types (see clusters/aws.yaml)")
    head = config.get("head_node_type")
    if head is None:
        raise error_at(src, ["head_node_type"], "missing (required with available_node_types)",
                       f"set head_node_type to one of: {', '.join(types)}")
    if head not in types:
        near = difflib.get_close_matches(str(head), list(types), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise error_at(src, ["head_node_type"], f"{head!r} is not among available_node_types",
                       f"{hint}choose one of: {', '.join(types)}")
    sum_min = 0
    for name, spec in types.items():
        where = ["available_node_types", name]
        lo, hi = spec.get("min_workers", 0), spec.get("max_workers")
        if lo < 0 or (hi is not None and hi < 0):
            raise error_at(src, [*where, "min_workers" if lo < 0 else "max_workers"], "must be >= 0", "use 0 or more")
        if hi is not None and lo > hi:
            raise error_at(src, [*where, "min_workers"], f"min_workers {lo} > max_workers {hi}",
                           "raise max_workers or lower min_workers")
        sum_min += lo
        _check_node_config(spec, where, name == head, ptype, src)
    global_max = config.get("max_workers", _provider_default(ptype, "max_workers"))
    if global_max is not None and sum_min > global_max:
        raise error_at(src, ["max_workers"], f"{global_max} is less than the sum of min_workers ({sum_min})",
                       f"set max_workers >= {sum_min}, or lower min_workers")


def _check_node_config(spec: dict, where: list[Part], is_head: bool, ptype: str, src: str) -> None:
    node_config = spec.get("node_config") or {}
    res = spec.get("resources", {})
    if ptype == "aws" and not node_config.get("InstanceType"):
        raise error_at(src, [*where, "node_config", "InstanceType"], "missing", "set an EC2 type, e.g. g5.xlarge")
    if ptype == "gcp" and not (node_config.get("machineType") or node_config.get("acceleratorType")):
        raise error_at(src, [*where, "node_config", "machineType"], "missing", "set a machine type, e.g. g2-standard-8")
    if ptype != "aws" and not is_head and "CPU" not in res:
        raise error_at(src, [*where, "resources", "CPU"],
                       f"missing: on {ptype} the autoscaler knows only what resources says, and never launches it",
                       "state the node's vCPUs (and GPU count), e.g. resources: {CPU: 8, GPU: 1}")
    accelerators = node_config.get("guestAccelerators") if ptype == "gcp" else None
    if accelerators:
        items = accelerators if isinstance(accelerators, list) else [None]
        counts = [a.get("acceleratorCount", 0) if isinstance(a, dict) else None for a in items]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise error_at(src, [*where, "node_config", "guestAccelerators"], "must be a list of "
                           "{acceleratorType, acceleratorCount} with integer counts",
                           "write guestAccelerators: [{acceleratorType: nvidia-tesla-t4, acceleratorCount: 1}]")
        count = sum(cast(list[int], counts))  # all checked to be integers just above
        if res.get("GPU", 0) != count:
            raise error_at(src, [*where, "resources", "GPU"],
                           f"says {res.get('GPU', 0)} but node_config.guestAccelerators attaches {count}",
                           f"set resources.GPU: {count}")


def _provider_default(ptype: str, key: str) -> Any:
    try:
        return ray_private.resolve("provider_default_config")({"type": ptype}).get(key)
    except Exception:  # no defaults for this provider: Ray's own check runs later anyway
        return None


def _ray_prepare_and_validate(config: dict, src: str) -> dict:
    """What ``ray up`` does before touching the cloud: merge defaults, then Ray's own checks."""
    prepare = ray_private.resolve("prepare_config")  # a moved symbol is not the file's fault: outside the try
    validate = ray_private.resolve("validate_config")
    try:
        with ray_private.quiet():
            prepared = prepare(copy.deepcopy(config))
            validate(prepared)
    except Exception as err:  # Ray raises ValueError, AssertionError, click exceptions ...
        message = short(str(err) or type(err).__name__)
        raise EdrayError(src, f"Ray's launcher rejects it: {message}", README) from None
    return prepared


def _check_security_group(provider: dict, src: str) -> None:
    """Only SSH may face the internet; the dashboard and MLflow are reached through a tunnel."""
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise error_at(src, ["provider", "security_group", "IpPermissions", i], "must be a mapping",
                           "write an EC2 IpPermission: {IpProtocol: tcp, FromPort: 22, ToPort: 22, IpRanges: [...]}")
        proto = str(rule.get("IpProtocol", "-1")).lower()
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        ssh_only = proto in ("tcp", "6") and lo == _SSH_PORT and hi == _SSH_PORT
        for field, cidr_key in (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")):
            blocks = rule.get(field) or []
            if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
                raise error_at(src, ["provider", "security_group", "IpPermissions", i, field],
                               f"must be a list of {{{cidr_key}: ...}} mappings",
                               f"write {field}: [{{{cidr_key}: ...}}]")
            for j, block in enumerate(blocks):
                cidr = str(block.get(cidr_key, "")).strip()
                if cidr in _WORLD and not ssh_only:
                    ports = "all ports" if proto == "-1" or lo == -1 else _port_range(lo, hi)
                    raise error_at(src, ["provider", "security_group", "IpPermissions", i, field, j, cidr_key],
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
                raise error_at(src, where, problem,
                               "use --dashboard-host=127.0.0.1 and reach it with `ray dashboard CLUSTER.yaml`")
        if re.search(r"\bmlflow\s+(server|ui)\b", cmd):
            for match in _MLFLOW_HOST_RE.finditer(cmd):
                if match.group(1) in _ANY_HOST:
                    raise error_at(src, parts, f"binds the MLflow server to {match.group(1) or '(empty)'}",
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
            raise error_at(src, where, "turns Ray token authentication off (RAY_AUTH_MODE=disabled)", _AUTH_FIX)
        if _RAY_START_RE.search(cmd) and "RAY_AUTH_MODE=token" not in cmd:
            problem = ("starts Ray without token authentication" if given else
                       "not set, and Ray's default commands start Ray without token authentication")
            raise error_at(src, where, problem, _AUTH_FIX)


def _check_command_shapes(config: dict, src: str) -> None:
    """Ray runs each command as ``bash -c '... && (CMD)'``. A command wholly inside one pair of
    parentheses becomes ``((...))`` there, which bash runs as arithmetic, so the step fails on
    every node. ``(stat DIR && echo ...) || true`` (in Ray's own defaults) is fine: its first
    ``(`` closes before the end, and bash reads the ``((`` it makes as two subshells."""
    for parts, cmd in _iter_commands(config):
        if _wholly_in_parentheses(cmd):
            raise error_at(src, parts, "is wholly inside '( )', and Ray wraps each command in '( )' again: bash "
                           "runs '((...))' as arithmetic", "drop the outer parentheses (Ray already runs each "
                           "command in a subshell)")


def _wholly_in_parentheses(cmd: str) -> bool:
    """Whether ``cmd`` opens with ``(`` that closes at its very last character, counted as bash
    counts: parentheses inside quotes or after a backslash do not count."""
    if not cmd.startswith("("):
        return False
    depth, quote, escaped = 0, "", False
    for i, char in enumerate(cmd):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return i == len(cmd) - 1
    return False  # unbalanced: bash names that itself

"""Cluster files (clusters/*.yaml, Ray's launcher defaults, KubeRay manifests): the shipped ones validate
offline; mutated copies fail with the right JSON path. (Multi-node runs are tested elsewhere.)"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edray.clusters import ray_private, validate_cluster_file
from edray.errors import EdrayError

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
KINDS = {"aws": "launcher", "gcp": "launcher", "local": "launcher", "kuberay": "kuberay"}
GPU_LIMIT = 'RayCluster/edray.spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits["nvidia.com/gpu"]'


def _docs(name: str) -> list:
    return list(yaml.safe_load_all((CLUSTERS / f"{name}.yaml").read_text()))


def _write(tmp_path: Path, docs: list, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _mutated(tmp_path: Path, name: str, mutate: Callable[[list], None]) -> Path:
    docs = _docs(name)
    mutate(docs)
    return _write(tmp_path, docs)


def _rejects(path: Path, where: str, *words: str) -> EdrayError:
    with pytest.raises(EdrayError) as info:
        validate_cluster_file(path)
    err = info.value
    assert err.path == f"{path}: {where}", str(err)
    message = str(err)
    assert "\n" not in message and err.fix, message
    for word in words:
        assert word in message, message
    return err


# ----------------------------------------------------------------------------- shipped files


def test_every_shipped_cluster_file_validates():
    files = sorted(CLUSTERS.glob("*.yaml"))
    assert {f.stem for f in files} == set(KINDS)
    for path in files:
        assert validate_cluster_file(path) == KINDS[path.stem], path


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_launcher_files_set_the_shared_location_once_and_bind_safely(name):
    text = (CLUSTERS / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)
    commands = [c for key in config if key.endswith("_commands") for c in config[key]]
    assert sum(c.count("export EDRAY_SHARED=") for c in commands) == 1
    assert not any("0.0.0.0" in c for c in commands)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    mlflow = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    for flag in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "--workers 1", "--port 5000", "--allowed-hosts",
                 "sqlite:///", "$EDRAY_SHARED/mlflow-artifacts"):
        assert flag in mlflow, flag


def test_aws_credentials_come_from_instance_profiles_and_only_ssh_is_open():
    (config,) = _docs("aws")
    for name, node in config["available_node_types"].items():
        assert "IamInstanceProfile" in node["node_config"], name
    assert config["provider"]["security_group"].get("IpPermissions", []) == []  # Ray adds intra-cluster + SSH only
    market = {n: t["node_config"].get("InstanceMarketOptions") for n, t in config["available_node_types"].items()}
    assert market["gpu_spot"] == {"MarketType": "spot"} and market["head"] is None and market["gpu_ondemand"] is None


def test_kuberay_file_has_gpu_workers_and_the_sweep_job():
    cluster, job = _docs("kuberay")
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert job["spec"]["entrypoint"] == "edray sweep search_spaces/caltech256.yaml --address auto --json"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert (CLUSTERS / "kuberay.yaml").read_text().count("name: EDRAY_SHARED") == 1  # set once, reused by anchor


# ----------------------------------------------------------------------------- launcher mutations


def _nodes(docs: list) -> dict:
    return docs[0]["available_node_types"]


def test_misspelt_top_level_key(tmp_path):
    def mutate(docs):
        docs[0]["max_worker"] = docs[0].pop("max_workers")

    _rejects(_mutated(tmp_path, "aws", mutate), "max_worker", "unknown key", "did you mean 'max_workers'")


def test_misspelt_node_type_key(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: _nodes(d)["gpu_spot"].update(min_worker=1))
    _rejects(path, "available_node_types.gpu_spot.min_worker", "did you mean 'min_workers'")


def test_node_type_without_resources(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: _nodes(d)["gpu_spot"].pop("resources"))
    _rejects(path, "available_node_types.gpu_spot.resources", "missing")


def test_head_node_type_not_among_node_types(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: d[0].update(head_node_type="heads"))
    _rejects(path, "head_node_type", "not among available_node_types", "did you mean 'head'")


@pytest.mark.parametrize("gpus", [0.5, 1.5])
def test_fractional_gpu(tmp_path, gpus):
    path = _mutated(tmp_path, "aws", lambda d: _nodes(d)["gpu_spot"]["resources"].update(GPU=gpus))
    _rejects(path, "available_node_types.gpu_spot.resources.GPU", "not a whole number")


def test_min_workers_above_max_workers(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: _nodes(d)["gpu_ondemand"].update(min_workers=3))
    _rejects(path, "available_node_types.gpu_ondemand.min_workers", "min_workers 3 > max_workers 2")


def test_sum_of_min_workers_above_global_max(tmp_path):
    def mutate(docs):
        _nodes(docs)["gpu_spot"]["min_workers"] = 8
        _nodes(docs)["gpu_ondemand"]["min_workers"] = 2
        docs[0]["max_workers"] = 9

    _rejects(_mutated(tmp_path, "aws", mutate), "max_workers", "sum of min_workers (10)")


def test_unknown_provider_type(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["provider"].update(type="awz"))
    _rejects(path, "provider.type", "unknown provider 'awz'", "did you mean 'aws'")


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
         "IpRanges[0].CidrIp"),
        ({"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
         "Ipv6Ranges[0].CidrIpv6"),
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
         "IpRanges[0].CidrIp"),
        ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}, {"CidrIp": "0.0.0.0/0"}]}, "IpRanges[1].CidrIp"),
    ],
)
def test_world_open_port_other_than_ssh(tmp_path, rule, where):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["provider"]["security_group"].update(IpPermissions=[rule]))
    _rejects(path, f"provider.security_group.IpPermissions[0].{where}", "to the whole internet")


@pytest.mark.parametrize(
    "rule",
    [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]},
    ],
)
def test_ssh_to_the_world_or_other_ports_to_one_address_are_fine(tmp_path, rule):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["provider"]["security_group"].update(IpPermissions=[rule]))
    assert validate_cluster_file(path) == "launcher"


def test_aws_credentials_block_in_the_file(tmp_path):
    creds = {"aws_access_key_id": "AKIAABCDEFGHIJKLMNOP", "aws_secret_access_key": "x" * 40}
    path = _mutated(tmp_path, "aws", lambda d: d[0]["provider"].update(aws_credentials=creds))
    _rejects(path, "provider.aws_credentials.aws_access_key_id", "in a cluster file")


@pytest.mark.parametrize(
    "command",
    [
        "export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12",
        "aws configure set aws_secret_access_key wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12",
    ],
)
def test_access_key_in_a_command(tmp_path, command):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["setup_commands"].insert(0, command))
    _rejects(path, "setup_commands[0]")


def test_access_key_in_a_comment(tmp_path):
    path = tmp_path / "cluster.yaml"
    text = (CLUSTERS / "aws.yaml").read_text()
    path.write_text(text + "# old key: AKIAABCDEFGHIJKLMNOP\n")
    _rejects(path, f"line {text.count(chr(10)) + 1}", "access key")


def test_credentials_read_from_the_environment_are_fine(tmp_path):
    command = 'echo "export AWS_SECRET_ACCESS_KEY=$VAULT_SECRET" > /dev/null'
    path = _mutated(tmp_path, "aws", lambda d: d[0]["setup_commands"].insert(0, command))
    assert validate_cluster_file(path) == "launcher"


@pytest.mark.parametrize(
    ("index", "safe", "open_to_all", "words"),
    [(1, "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "dashboard on 0.0.0.0"),
     (2, '--host "$IP"', "--host 0.0.0.0", "MLflow server to 0.0.0.0")],
    ids=["dashboard", "mlflow"],
)
def test_dashboard_or_mlflow_on_all_interfaces(tmp_path, index, safe, open_to_all, words):
    def mutate(docs):
        cmds = docs[0]["head_start_ray_commands"]
        cmds[index] = cmds[index].replace(safe, open_to_all)

    _rejects(_mutated(tmp_path, "aws", mutate), f"head_start_ray_commands[{index}]", words)


def test_ray_default_head_commands_open_the_dashboard(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: d[0].pop("head_start_ray_commands"))
    _rejects(path, "head_start_ray_commands", "not set", "0.0.0.0")


def test_a_ray_start_without_token_auth_is_named(tmp_path):
    def mutate(docs):
        cmds = docs[0]["worker_start_ray_commands"]
        cmds[1] = cmds[1].replace("RAY_AUTH_MODE=token ", "")

    _rejects(_mutated(tmp_path, "aws", mutate), "worker_start_ray_commands[1]", "without token authentication")


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_turning_token_auth_off_is_named(tmp_path, name):
    def mutate(docs):
        docs[0]["setup_commands"].append("echo 'export RAY_AUTH_MODE=disabled' >> ~/.edray_env")

    where = f"setup_commands[{len(_docs(name)[0]['setup_commands'])}]"
    _rejects(_mutated(tmp_path, name, mutate), where, "RAY_AUTH_MODE=disabled", "file_mounts")


@pytest.mark.parametrize("mode", [None, "disabled"])
def test_kuberay_without_token_auth(tmp_path, mode):
    def mutate(docs):
        if mode is None:
            docs[0]["spec"].pop("authOptions")
        else:
            docs[0]["spec"]["authOptions"]["mode"] = mode

    _rejects(_mutated(tmp_path, "kuberay", mutate), "RayCluster/edray.spec.authOptions", "token authentication is off")


def test_gcp_gpu_count_must_match_accelerators(tmp_path):
    path = _mutated(tmp_path, "gcp", lambda d: _nodes(d)["gpu_spot"]["resources"].update(GPU=2))
    _rejects(path, "available_node_types.gpu_spot.resources.GPU", "guestAccelerators attaches 1")


def test_gcp_worker_must_state_cpus(tmp_path):
    path = _mutated(tmp_path, "gcp", lambda d: _nodes(d)["gpu_ondemand"]["resources"].pop("CPU"))
    _rejects(path, "available_node_types.gpu_ondemand.resources.CPU", "never launches")


def test_local_provider_takes_no_node_types(tmp_path):
    path = _mutated(tmp_path, "local", lambda d: d[0].update(available_node_types={}))
    _rejects(path, "available_node_types", "provider type local")


def test_local_provider_needs_the_head_address(tmp_path):
    path = _mutated(tmp_path, "local", lambda d: d[0]["provider"].pop("head_ip"))
    _rejects(path, "provider.head_ip", "missing")


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_a_command_in_parentheses_is_rejected(tmp_path, name):
    # Seen in `ray up`: Ray runs `(CMD)`, so `(grep ... || echo ...)` became `((grep ...` and bash
    # failed it as arithmetic on every node.
    path = _mutated(tmp_path, name, lambda d: d[0]["setup_commands"].append("(true || echo x)"))
    n = len(_docs(name)[0]["setup_commands"])
    _rejects(path, f"setup_commands[{n}]", "arithmetic")


# Ray's own aws defaults.yaml has the first; bash runs `((stat ...) || true)` as two subshells.
_RAY_STAT = "(stat $HOME/anaconda3/envs/tensorflow_p36/ &> /dev/null && echo 'export PATH=...' >> ~/.bashrc) || true"


@pytest.mark.parametrize("command", [_RAY_STAT, "(echo a) && (echo b)", '(echo ")") || true', "(echo \\)) || true"])
def test_a_command_whose_first_parenthesis_closes_before_the_end_is_fine(tmp_path, command):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["setup_commands"].append(command))
    assert validate_cluster_file(path) == "launcher"


@pytest.mark.parametrize("command", ["(cd x && RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379)",
                                     '(echo ")")'])
def test_a_command_wholly_in_parentheses_is_named_with_the_reason(tmp_path, command):
    path = _mutated(tmp_path, "aws", lambda d: d[0]["worker_start_ray_commands"].append(command))
    n = len(_docs("aws")[0]["worker_start_ray_commands"])
    _rejects(path, f"worker_start_ray_commands[{n}]", "wholly inside '( )'", "'((...))' as arithmetic",
             "drop the outer parentheses")


def _ray_defaults(provider: str) -> dict:
    """The launcher file Ray ships for ``provider`` (what ``ray up`` merges into every file)."""
    import ray

    return yaml.safe_load((Path(ray.__file__).parent / "autoscaler" / provider / "defaults.yaml").read_text())


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_rays_own_defaults_validate_once_filled_with_token_auth_and_a_loopback_dashboard(tmp_path, provider):
    config = _ray_defaults(provider)
    if provider == "gcp":
        config["provider"]["project_id"] = "my-project"  # the one blank (null) in Ray's file
    as_shipped = _write(tmp_path, [config], "as_shipped.yaml")
    _rejects(as_shipped, "head_start_ray_commands[1]", "dashboard on 0.0.0.0")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        config[key] = [c.replace("--dashboard-host=0.0.0.0", "--dashboard-host=127.0.0.1")
                       .replace("ray start", "RAY_AUTH_MODE=token ray start") for c in config[key]]
    assert any(c.startswith("(") for c in config["setup_commands"])  # Ray's `(...) || true`, accepted
    assert validate_cluster_file(_write(tmp_path, [config])) == "launcher"


def test_ray_launcher_checks_run_too(tmp_path):
    # Only Ray's own validate_docker_config catches a container name without an image.
    path = _mutated(tmp_path, "aws", lambda d: d[0].update(docker={"container_name": "edray"}))
    with pytest.raises(EdrayError, match="Ray's launcher rejects it: Must provide a container & image name"):
        validate_cluster_file(path)


# ----------------------------------------------------------------------------- KubeRay mutations


def _worker_limits(docs: list) -> dict:
    return docs[0]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]


def _worker_requests(docs: list) -> dict:
    return docs[0]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]


def test_kuberay_worker_group_without_gpu_limit(tmp_path):
    def mutate(docs):
        _worker_limits(docs).pop("nvidia.com/gpu")
        _worker_requests(docs).pop("nvidia.com/gpu")

    _rejects(_mutated(tmp_path, "kuberay", mutate), GPU_LIMIT, "no GPU")


def test_kuberay_gpu_only_in_requests(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: _worker_limits(d).pop("nvidia.com/gpu"))
    _rejects(path, GPU_LIMIT, "requests asks for GPUs")


def test_kuberay_fractional_gpu_limit(tmp_path):
    def mutate(docs):
        _worker_limits(docs)["nvidia.com/gpu"] = "1.5"
        _worker_requests(docs).pop("nvidia.com/gpu")

    _rejects(_mutated(tmp_path, "kuberay", mutate), GPU_LIMIT, "not a whole number of GPUs")


def test_kuberay_cpu_only_group_on_purpose_is_fine(tmp_path):
    def mutate(docs):
        _worker_limits(docs)["nvidia.com/gpu"] = 0
        _worker_requests(docs).pop("nvidia.com/gpu")

    assert validate_cluster_file(_mutated(tmp_path, "kuberay", mutate)) == "kuberay"


def test_rayjob_without_entrypoint(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: d[1]["spec"].pop("entrypoint"))
    _rejects(path, "RayJob/edray-sweep-caltech256.spec.entrypoint", "missing")


def test_rayjob_selects_a_cluster_not_in_the_file(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: d[1]["spec"]["clusterSelector"].update({"ray.io/cluster": "edr"}))
    _rejects(path, 'RayJob/edray-sweep-caltech256.spec.clusterSelector["ray.io/cluster"]', "not a RayCluster")


def test_kuberay_head_exposed_by_a_load_balancer(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: d[0]["spec"]["headGroupSpec"].update(serviceType="LoadBalancer"))
    _rejects(path, "RayCluster/edray.spec.headGroupSpec.serviceType", "outside the cluster")


def test_kuberay_literal_secret_in_env(tmp_path):
    env = {"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12"}
    path = _mutated(
        tmp_path, "kuberay",
        lambda d: d[0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(env),
    )
    _rejects(path, "RayCluster/edray.spec.headGroupSpec.template.spec.containers[0].env[3].value", "literal value")


def test_kuberay_old_api_version(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: d[0].update(apiVersion="ray.io/v1alpha1"))
    _rejects(path, "RayCluster/edray.apiVersion", "ray.io/v1alpha1")


def test_ray_kuberay_conversion_runs_too(tmp_path):
    # Only Ray's RayCluster-to-autoscaler conversion parses num-cpus as an integer.
    path = _mutated(tmp_path, "kuberay", lambda d: d[0]["spec"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": "zero"}))
    _rejects(path, "RayCluster/edray.spec", "Ray's KubeRay autoscaler cannot read it")


def _worker(docs: list) -> dict:
    return docs[0]["spec"]["workerGroupSpecs"][0]


_WORKER = "RayCluster/edray.spec.workerGroupSpecs[0]"


@pytest.mark.parametrize(
    ("mutate", "where", "words"),
    [
        (lambda d: _worker(d).update(minReplica=_worker(d).pop("minReplicas")), f"{_WORKER}.minReplica",
         ["unknown key (KubeRay's RayCluster CRD", "did you mean 'minReplicas'"]),
        (lambda d: _worker(d).pop("template"), f"{_WORKER}.template",
         ["missing (required by KubeRay's RayCluster CRD"]),
        (lambda d: d[0]["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
         "RayCluster/edray.spec.headGroupSpec.rayStartParams.num-cpus", ["0 is not a string", 'quote it, e.g. "0"']),
        (lambda d: _worker_limits(d).update(cpu="lots"), f"{_WORKER}.template.spec.containers[0].resources.limits.cpu",
         ["'lots' is not a Kubernetes quantity"]),
        (lambda d: d[0]["spec"]["authOptions"].update(mode="tokens"), "RayCluster/edray.spec.authOptions.mode",
         ["'tokens' is not allowed", "use one of: disabled, token"]),
        (lambda d: d[1]["spec"].update(entrypointNumCPUs=1), "RayJob/edray-sweep-caltech256.spec.entrypointNumCPUs",
         ["unknown key (KubeRay's RayJob CRD", "did you mean 'entrypointNumCpus'"]),
    ],
    ids=["misspelt", "missing", "not-a-string", "not-a-quantity", "not-in-enum", "rayjob-field"],
)
def test_kuberay_objects_are_checked_against_kuberays_crd_schema(tmp_path, mutate, where, words):
    _rejects(_mutated(tmp_path, "kuberay", mutate), where, *words)


def test_a_rayservice_cluster_config_is_checked_like_a_raycluster_spec(tmp_path):
    cluster = _docs("kuberay")[0]
    service = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "edray-serve"},
               "spec": {"rayClusterConfig": cluster["spec"]}}
    assert validate_cluster_file(_write(tmp_path, [service])) == "kuberay"
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    _rejects(_write(tmp_path, [service]), "RayService/edray-serve.spec.rayClusterConfig.headGroupSpec.serviceTyp",
             "did you mean 'serviceType'")


def test_kuberay_fields_left_null_are_left_out_as_kubectl_does(tmp_path):
    path = _mutated(tmp_path, "kuberay", lambda d: _worker(d)["template"]["spec"].update(nodeSelector=None))
    assert validate_cluster_file(path) == "kuberay"


# ----------------------------------------------------------------------------- files, YAML, CLI


def test_duplicate_key_names_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("cluster_name: a\nprovider: {type: aws, region: us-west-2}\ncluster_name: b\n")
    err = _rejects(path, "line 3", "invalid YAML (duplicate key")
    assert "cluster_name" in err.problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cluster_name: [a\n", "invalid YAML"),
        ("", "empty"),
        ("name: digits\nseed: 0\n", "not a Ray cluster file"),
        ("a: &x [*x]\ncluster_name: c\nprovider: {type: aws}\n", "alias contains itself"),
    ],
)
def test_unreadable_or_foreign_files(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(EdrayError, match=problem):
        validate_cluster_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(EdrayError, match="no such cluster file"):
        validate_cluster_file(tmp_path / "nope.yaml")


def test_error_survives_pickling(tmp_path):
    path = _mutated(tmp_path, "aws", lambda d: d[0].update(head_node_type="x"))
    with pytest.raises(EdrayError) as info:
        validate_cluster_file(path)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)


def test_cli_validate_cluster_file(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edray.cli", "validate", str(CLUSTERS / "aws.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "launcher" in ok.stdout, ok.stderr
    path = _mutated(tmp_path, "aws", lambda d: _nodes(d)["gpu_spot"]["resources"].update(GPU=0.5))
    bad = subprocess.run([sys.executable, "-m", "edray.cli", "validate", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert re.fullmatch(r"error: .*available_node_types\.gpu_spot\.resources\.GPU: .*; fix: .*\n", bad.stderr)


# ----------------------------------------------------------------------------- robustness


def _paths(node, parts=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*parts, key)
            yield from _paths(value, (*parts, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*parts, i)
            yield from _paths(value, (*parts, i))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.floats(-2, 10, allow_nan=False), st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["aws", "gcp", "local", "kuberay"]), pick=st.integers(0, 10**6), value=_VALUES,
       delete=st.booleans())
def test_any_single_edit_is_accepted_or_named_never_a_traceback(tmp_path, name, pick, value, delete):
    """A user mistake anywhere in a cluster file gives an EdrayError, never another exception."""
    docs = _docs(name)
    paths = list(_paths(docs))
    *parent_path, last = paths[pick % len(paths)]
    parent = docs
    for part in parent_path:
        parent = parent[part]
    if delete:
        parent.pop(last)
    else:
        parent[last] = value
    path = _write(tmp_path, docs)
    try:
        assert validate_cluster_file(path) == KINDS[name]
    except EdrayError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))


# ---------------------------------------------------------------------- private Ray symbols, behind one door


@pytest.mark.parametrize("name", sorted(ray_private.PRIVATE))
def test_every_private_ray_symbol_is_where_ray_private_says(name):
    """A Ray upgrade that moves one of these fails here, naming it (``resolve`` says module and attribute)."""
    found = ray_private.resolve(name)
    assert isinstance(found, dict) if name == "default_provider_configs" else callable(found), ray_private.PRIVATE[name]


def test_a_moved_symbol_is_named(monkeypatch):
    monkeypatch.setitem(ray_private.PRIVATE, "gone", ("ray.autoscaler._private.util", "no_such_function"))
    with pytest.raises(ray_private.RayPrivateMoved, match=r"ray\.autoscaler\._private\.util\.no_such_function"):
        ray_private.resolve("gone")
    monkeypatch.setitem(ray_private.PRIVATE, "gone", ("ray.autoscaler._private.no_such_module", "f"))
    with pytest.raises(ImportError, match=r"_private\.no_such_module\.f"):
        ray_private.resolve("gone")


def test_no_other_module_imports_private_ray():
    import ast

    door = Path(ray_private.__file__).resolve()
    for path in sorted((ROOT / "edray").rglob("*.py")):
        if path.resolve() == door:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert not (name.startswith("ray.") and "._private" in name), (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {name}: go through edray/clusters/ray_private.py")

"""`ray up` for real: clusters/local.yaml launched over SSH on this machine, the README's sweep
submitted as a Ray job, MLflow checked on the head, then `ray down` leaves nothing behind.

The "machine" is a user made for the test (its home, its processes) reached through the test's
own sshd on 127.0.0.1:22 with a key made for the test: Ray's launcher has no SSH port setting,
and a user of its own keeps the cluster file's `ray stop` away from anyone else's Ray. Needs root
(CI runs as root), Debian's openssh-server and rsync (.ci/run installs them), and the package
index (the node installs edray and its pinned libraries with uv, as the file says). Skips, with
the reason, where it cannot run.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import kill_pids

ROOT = Path(__file__).resolve().parents[1]
LOCAL_YAML = ROOT / "clusters" / "local.yaml"
SSHD = Path("/usr/sbin/sshd")
# Fixed ports of the head (the cluster file's and Ray's defaults), checked on all interfaces; SSH on 127.0.0.1.
PORTS = {22: "ssh", 6379: "Ray GCS", 8265: "Ray dashboard", 5000: "MLflow", 10001: "Ray client server",
         52365: "Ray dashboard agent (runs submitted jobs)"}
# uv's download cache for the node user, kept between runs on one machine (a CI machine starts cold).
UV_CACHE = Path("/var/tmp/edray-rayup-uv-cache")
# The README's submit command, plus two of its documented options that make it short: two configs,
# and the fast settings of tests/conftest.py.
SWEEP_ARGS = ["--num-samples", "2", "--set", "optim.epochs=6", "--set", "ed.switch_epochs=[2, 4]",
              "--set", "search.params[0].min_grade_epochs=2",
              "--set", "teachers.views=2", "--set", "search.final_eval.seeds=1",
              *[a for k in range(3) for a in ("--set", f"teachers.models[{k}].train.epochs=2",
                                              "--set", f"teachers.models[{k}].arch=cnn_medium")]]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # `-m "not cluster"` skips it locally


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux (sshd, useradd)"
    if os.geteuid() != 0:
        return "needs root: it creates a user and starts sshd on 127.0.0.1:22 (CI runs as root)"
    for tool, package in ((str(SSHD), "openssh-server"), ("rsync", "rsync"), ("useradd", "passwd"),
                          ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install {package} (.ci/run does)"
    if shutil.which("python3.11", path="/usr/local/bin:/usr/bin:/bin") is None:
        return "no python3.11 on the node user's PATH for `uv venv --python 3.11`: apt-get install python3"
    if subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True).returncode != 0:
        return "no pip for the node's python3 (the cluster file installs uv with it): apt-get install python3-pip"
    for port, what in PORTS.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1" if port == 22 else "", port))
            except OSError:
                return f"port {port} ({what}) is in use on this machine; the head needs it"
    return None


def _run(cmd: list[str], log: Path, timeout: float, **kw) -> tuple[subprocess.CompletedProcess, float, str]:
    """Run one step, its output in its own log file; return the process, its wall time and a tail."""
    tic = time.monotonic()
    with log.open("wb") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **kw)
    text = log.read_text(errors="replace")
    tail = "\n".join(ln[:300] for ln in text.splitlines()[-60:])
    return proc, time.monotonic() - tic, f"{log}:\n{tail}"


def _procs() -> list[tuple[int, int, str]]:
    """(pid, real uid, command line) of every process, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            uid = int(next(ln for ln in (d / "status").read_text().splitlines() if ln.startswith("Uid:")).split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, StopIteration):
            continue  # gone meanwhile
        out.append((int(d.name), uid, cmd))
    return out


def _procs_of(uid: int) -> list[str]:
    """Processes of the node user: everything the cluster started on the "machine"."""
    return [f"{pid}: {cmd[:200]}" for pid, u, cmd in _procs() if u == uid]


def _client_procs(mark: str) -> list[str]:
    """Processes on the client side (ssh control masters of `ray up`) that carry the test's paths."""
    return [f"{pid}: {cmd[:200]}" for pid, _, cmd in _procs() if mark in cmd and pid != os.getpid()]


def _wait_until_empty(probe, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    left = probe()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = probe()
    return left


@dataclass
class Machine:
    tmp: Path           # everything of the test; its name marks the test's processes
    user: str
    uid: int
    home: Path
    key: Path           # the client's private key (the node has the public half)
    sshd: subprocess.Popen | None
    shared: Path        # EDRAY_SHARED: a directory, the same path on every node
    node_tmp: Path      # RAY_TMPDIR of the node (a private /tmp/ray)
    client_tmp: Path    # RAY_TMPDIR of the client (`ray up` keeps its cluster state there)
    logs: Path          # one log file per step


def _start_sshd(m: Machine) -> subprocess.Popen:
    d = m.tmp / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    # Environment every SSH session of the node gets: a private Ray temp dir (other Ray clusters
    # on this machine keep /tmp/ray) and uv's cache. Machine settings, not cluster-file lines.
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1:22",
        f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {m.user}",
        "UsePAM no",
        "PrintMotd no",
        "MaxSessions 50",
        "MaxStartups 50",
        "SetEnv " + " ".join(f"{k}={v}" for k, v in _node_env(m).items()),
        "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    subprocess.run([str(SSHD), "-t", "-f", str(d / "sshd_config")], check=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", 22)) == 0:
                return proc
        assert proc.poll() is None, (d / "sshd.log").read_text()
        time.sleep(0.2)
    raise AssertionError(f"sshd did not listen: {(d / 'sshd.log').read_text()}")


# This machine's trust store and proxy settings, as root has them (a TLS-inspecting proxy
# needs its CA for uv's downloads): the node's own environment, like any machine's.
MACHINE_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
               "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _node_env(m: Machine) -> dict[str, str]:
    env = {k: os.environ[k] for k in MACHINE_ENV if os.environ.get(k) and " " not in os.environ[k]}
    return {**env, "RAY_TMPDIR": str(m.node_tmp), "UV_CACHE_DIR": str(UV_CACHE)}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _kill_user(uid: int) -> None:
    """Last-resort cleanup: the node user exists only for this test, so its processes are the test's."""
    for _ in range(20):
        pids = [pid for pid, u, _ in _procs() if u == uid]
        if not pids:
            return
        kill_pids(pids)
        time.sleep(0.5)


@pytest.fixture
def machine():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # Short: Ray's socket paths under RAY_TMPDIR must stay under 107 characters.
    tmp = Path(tempfile.mkdtemp(prefix="eru-", dir="/tmp"))
    tmp.chmod(0o755)
    user = "eru" + secrets.token_hex(4)
    home = tmp / "home"
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash",
                    "--user-group", "--password", "*", user], check=True)
    pw = pwd.getpwnam(user)
    m = Machine(tmp=tmp, user=user, uid=pw.pw_uid, home=home, key=tmp / "client" / "id_ed25519", sshd=None,
                shared=tmp / "shared", node_tmp=tmp / "t", client_tmp=tmp / "c", logs=tmp / "logs")
    # `ray up` keeps its SSH control sockets in a fixed place under /tmp: remove it if it is ours.
    control = _ssh_control_dir()
    control_existed = control.parent.exists()
    try:
        m.key.parent.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edray-rayup-test", "-f", str(m.key)],
                       check=True)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(m.key.with_suffix(".pub").read_text())
        for d in (m.shared, m.node_tmp):
            d.mkdir()
        UV_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(home), str(m.shared), str(m.node_tmp), str(UV_CACHE)],
                       check=True)
        (ssh_dir / "authorized_keys").chmod(0o600)
        m.client_tmp.mkdir()
        m.logs.mkdir()
        m.sshd = _start_sshd(m)
        yield m
    finally:
        try:
            _kill_user(m.uid)
        finally:
            if m.sshd is not None:
                _kill_group(m.sshd)
            subprocess.run(["userdel", "--force", user], check=False, capture_output=True)
            if not control_existed:
                shutil.rmtree(control.parent, ignore_errors=True)
        if os.environ.get("EDRAY_KEEP_RAYUP_TMP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _ssh_control_dir() -> Path:
    """Where Ray's SSHCommandRunner puts ControlPath sockets for this user and cluster name."""
    import getpass
    import hashlib

    name = yaml.safe_load(LOCAL_YAML.read_text())["cluster_name"]
    user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path("/tmp") / f"ray_ssh_{user_hash}" / hashlib.sha256(name.encode()).hexdigest()[:10]


def _cluster_file(m: Machine) -> Path:
    """clusters/local.yaml with only the REPLACE lines filled in for this machine."""
    text = LOCAL_YAML.read_text()
    edits = [
        (r"^(\s*head_ip:) .*$", r"\1 127.0.0.1"),
        (r"^(\s*worker_ips:) .*$", r"\1 []"),
        (r"^(\s*ssh_user:) .*$", rf"\1 {m.user}"),
        (r"^(\s*ssh_private_key:) .*$", rf"\1 {m.key}"),
        (r"'/REPLACE/nfs/mount/edray'", f"'{m.shared}'"),
    ]
    for pattern, repl in edits:
        text, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
        assert n == 1, f"clusters/local.yaml: expected one line matching {pattern!r}, found {n}"
    assert "REPLACE" not in "\n".join(ln.split("#")[0] for ln in text.splitlines()), "a REPLACE line is left"
    path = m.tmp / "local.yaml"
    path.write_text(text)
    return path


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _edray() -> list[str]:
    return [str(Path(sys.executable).with_name("edray"))]


def test_ray_up_sweep_mlflow_ray_down(machine: Machine, record_property):
    m = machine
    cfg = _cluster_file(m)
    # The client ("laptop") keeps its home, Ray temp dir and config cache in the test's directory.
    laptop = m.tmp / "laptop"
    laptop.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(laptop), "RAY_TMPDIR": str(m.client_tmp), "TMPDIR": str(m.client_tmp),
           "PYTHONPATH": str(ROOT)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)
    times: dict[str, float] = {}
    if "~/.ray/auth_token" in (yaml.safe_load(LOCAL_YAML.read_text()).get("file_mounts") or {}):
        # Token authentication as the README says: make the token on the laptop before `ray up`
        # (file_mounts copies it to every node), then `RAY_AUTH_MODE=token` for `ray job submit`.
        proc, _, tail = _run([_ray(), "get-auth-token", "--generate"], m.logs / "token.log", 60, env=env)
        assert proc.returncode == 0 and (laptop / ".ray" / "auth_token").is_file(), tail
        env["RAY_AUTH_MODE"] = "token"

    proc, _, tail = _run([*_edray(), "validate", str(cfg)], m.logs / "validate.log", 60, env=env, cwd=ROOT)
    assert proc.returncode == 0, tail

    proc, times["ray up"], tail = _ray_up(cfg, m.logs / "up.log", env)
    try:
        assert proc.returncode == 0, tail
        _submit_and_check(m, env, times)
    finally:
        # README "Tear down", for machines you keep: stop MLflow on the head, then `ray down`.
        _run([_ray(), "exec", str(cfg), "kill $(cat ~/edray-mlflow/mlflow.pid)"], m.logs / "stop-mlflow.log", 120,
             env=env, cwd=ROOT)
        down, times["ray down"], down_tail = _run([_ray(), "down", "-y", str(cfg)], m.logs / "down.log", 180,
                                                  env=env, cwd=ROOT)
        print("wall times (s): " + json.dumps({k: round(v, 1) for k, v in times.items()}))
        for k, v in times.items():
            record_property(k, round(v, 1))
    assert down.returncode == 0, down_tail

    left = _wait_until_empty(lambda: _procs_of(m.uid), 30)
    assert not left, "processes the cluster started are still running after `ray down`:\n" + "\n".join(left)
    # The machine goes away too: its sshd (by process group), then nothing may carry the test's paths
    # (ssh control masters of `ray up` and `ray exec`, sshd).
    _kill_group(m.sshd)
    left = _wait_until_empty(lambda: _client_procs(str(m.tmp)), 30)
    assert not left, "processes of the test are still running:\n" + "\n".join(left)
    stale = list(m.node_tmp.glob("**/ray_current_cluster"))
    assert not stale, f"stale {stale} after `ray down`"


def _ray_up(cfg: Path, log: Path, env: dict) -> tuple[subprocess.CompletedProcess, float, str]:
    """`ray up`, holding the head's fixed ports until its `ray start --head` runs: on a shared
    machine another Ray's dashboard would otherwise take 8265 while the node installs."""
    held = []
    for port in (p for p in PORTS if p != 22):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            s.close()
            for h in held:
                h.close()
            pytest.skip(f"port {port} ({PORTS[port]}) was taken on this machine")
        s.listen()
        held.append(s)
    cmd = [_ray(), "up", "-y", "--no-config-cache", str(cfg)]
    tic = time.monotonic()
    with log.open("wb") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            while proc.poll() is None and time.monotonic() - tic < 480:
                if held and "ray start --head" in log.read_text(errors="replace"):
                    for h in held:
                        h.close()
                    held = []
                time.sleep(0.2)
        finally:
            for h in held:
                h.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    tail = "\n".join(ln[:300] for ln in text.splitlines()[-60:])
    return subprocess.CompletedProcess(cmd, proc.returncode), time.monotonic() - tic, f"{log}:\n{tail}"


def _submit_and_check(m: Machine, env: dict, times: dict) -> None:
    dashboard = "http://127.0.0.1:8265"
    submit = [_ray(), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
              "edray", "sweep", "search_spaces/digits.yaml", "--address", "auto", "--json", *SWEEP_ARGS]
    proc, times["job submit to SUCCEEDED"], tail = _run(submit, m.logs / "submit.log", 480, env=env, cwd=ROOT)
    out = (m.logs / "submit.log").read_text(errors="replace")
    ids = re.findall(r"Job '(raysubmit_\w+)' submitted successfully", out)
    assert proc.returncode == 0 and ids, tail
    status, _, status_tail = _run([_ray(), "job", "status", "--address", dashboard, ids[-1]], m.logs / "status.log",
                                  60, env=env)
    assert f"Job '{ids[-1]}' succeeded" in status_tail, status_tail

    summary = _last_json(out)
    # Successive halving (the spec's default, budgets [0.2], reduction 4): both configs train a
    # copy at 3 epochs (one per grade at least), the better one then trains its full 6: three Tune trials.
    assert summary["trials"] == 3 and summary["errored"] == 0 and summary["completed"] >= 1, summary

    # MLflow on the head, at the address the README's `ray exec` prints (on loopback no tunnel is needed).
    cfg = m.tmp / "local.yaml"
    proc, _, tail = _run([_ray(), "exec", str(cfg), "echo $MLFLOW_TRACKING_URI"], m.logs / "mlflow-uri.log", 120,
                         env=env, cwd=ROOT)
    found = re.findall(r"^(http://\S+:5000)\s*$", (m.logs / "mlflow-uri.log").read_text(), flags=re.MULTILINE)
    assert proc.returncode == 0 and found, tail
    uri = found[-1]
    assert summary["tracking_uri"] == uri, (summary, uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(summary["experiment"])
    assert exp is not None, f"no experiment {summary['experiment']} on {uri}"
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags.get("edray.kind") == "sweep" and parent.info.status == "FINISHED", parent.info
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = [r for r in children if r.data.tags.get("edray.kind") == "trial"]
    assert len(trials) == summary["trials"], [r.data.tags for r in children]

    # `edray best` through that server: a spec `edray train` accepts.
    best = m.tmp / "best.yaml"
    proc, _, tail = _run([*_edray(), "best", summary["experiment"], "--tracking-uri", uri, "-o", str(best)],
                         m.logs / "best.log", 120, env=env, cwd=m.tmp)
    assert proc.returncode == 0 and best.is_file(), tail
    assert yaml.safe_load(best.read_text()).get("search") is None
    proc, _, tail = _run([*_edray(), "validate", str(best)], m.logs / "validate-best.log", 120, env=env, cwd=m.tmp)
    assert proc.returncode == 0, tail


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"parent_run_id"' in line:
            return json.loads(line)
    raise AssertionError("the sweep printed no JSON summary")

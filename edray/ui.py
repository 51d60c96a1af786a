"""``edray ui``: the MLflow UI on a sweep's store, as a child that never outlives edray.

``mlflow server`` is itself a tree (the ``mlflow`` CLI waits on a ``uvicorn`` child),
so killing one pid leaves the other serving. The server therefore runs in a process
group of its own: the terminal's Ctrl-C reaches edray alone, and edray forwards it to
the whole group, then escalates (SIGTERM, SIGKILL) until no member is left. SIGTERM
and SIGHUP sent to edray are handled the same way.

The UI has no authentication: anyone who reaches the port can read and delete runs.
It binds loopback by default (reach it from afar through an SSH tunnel); binding
anything else prints a warning.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from edray.errors import RUNTIME_ERROR, EdrayError
from edray.names import MLFLOW_ARTIFACTS
from edray.tracking.secrets import redact_text
from edray.tracking.sweeps import require_store
from edray.tracking.uri import sqlite_path, workdir_tracking_uri

__all__ = ["experiment_urls", "serve_ui", "ui_command"]

_READY_TIMEOUT_S = 120.0
_POLL_S = 0.25
_GRACE_S = (10.0, 5.0, 5.0)  # after SIGINT, after SIGTERM, after SIGKILL
_TAIL = 20


class _Stop(Exception):
    """SIGTERM or SIGHUP reached edray: stop the server as for Ctrl-C."""


def ui_command(uri: str, artifacts: Path, *, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and the environment it adds.

    One worker, no access log (the UI polls often), no job executor. Artifacts the
    server is asked to store (proxied uploads, experiments created through it) go to
    ``artifacts``, beside those edray's tracker writes itself. A store URI that carries
    a password goes through the environment, not the command line ``ps`` shows to all.
    """
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    store = ["--backend-store-uri", uri]
    if redact_text(uri) != uri:
        env["MLFLOW_BACKEND_STORE_URI"] = uri
        store = []
    cmd = [
        sys.executable, "-m", "mlflow", "server", *store,
        "--artifacts-destination", str(artifacts),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
        "--uvicorn-opts", "--no-access-log",
    ]
    return cmd, env


def serve_ui(workdir: Path, *, port: int = 5000, host: str = "127.0.0.1", tracking_uri: str | None = None,
             ready_timeout_s: float = _READY_TIMEOUT_S) -> int:
    """Run the MLflow UI on the workdir's store until Ctrl-C; return the exit status.

    Prints the URL once the server answers ``/health``. Returns 0 when stopped by Ctrl-C
    (or SIGTERM / SIGHUP), leaving no process of the server behind.

    Raises:
        EdrayError: no store (run ``edray sweep`` first), a URI that is already a server
            or a file store, a bad or busy port, a host that cannot be bound (exit 2); a
            server that fails to start or dies (exit 1).
    """
    workdir = Path(workdir).expanduser().resolve()
    uri = workdir_tracking_uri(workdir, tracking_uri)  # the same rule as every command
    _check_store(uri)
    if not 1 <= int(port) <= 65535:
        raise EdrayError("--port", f"must be in 1..65535, got {port}", "pass a free port, e.g. --port 5000")
    addresses = _resolve(host, port)
    if not all(ipaddress.ip_address(a[4][0].split("%", 1)[0]).is_loopback for a in addresses):
        _say(f"warning: the MLflow UI has no authentication: anyone who can reach {host}:{port} can read and "
             "delete every run; bind 127.0.0.1 (the default) and use an SSH tunnel instead")
    _check_port_free(addresses, host, port)
    url = _url(host, port)
    cmd, extra = ui_command(uri, workdir / MLFLOW_ARTIFACTS, host=host, port=port)
    env = {**os.environ, **extra}
    with _stop_signals():
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        output = _Output(proc)
        try:
            _wait_ready(proc, url, output, ready_timeout_s)
            output.forward = True  # from now on the server's own messages (errors) reach the user
            print(f"MLflow UI: {url}  (store {redact_text(uri)}; Ctrl-C to stop)", flush=True)
            for name, runs_url in experiment_urls(uri, url):
                print(f"  runs of {name}: {runs_url}", flush=True)
            code = proc.wait()
        except (KeyboardInterrupt, _Stop):
            _say("stopping the MLflow UI")
            return 0
        finally:
            output.forward = False  # shutdown chatter (uvicorn's cancelled tasks) is noise
            with _signals_ignored():  # a second Ctrl-C must not cut the cleanup short
                _stop_group(proc)
    if code == 0:
        return 0
    raise EdrayError("edray ui", f"the MLflow server exited with code {code}: {output.last()}",
                     "see the lines above", exit_code=RUNTIME_ERROR)


# ---------------------------------------------------------------------- checks before starting


def experiment_urls(uri: str, url: str) -> list[tuple[str, str]]:
    """(name, address of its runs table) for each active experiment of the store, newest first.

    The runs tab is named in the address: MLflow 3 opens an experiment without a kind tag on
    its GenAI overview instead (edray's tracker tags its own, see tracking/tracker.py).
    """
    from mlflow.tracking import MlflowClient

    try:
        experiments = MlflowClient(tracking_uri=uri).search_experiments(order_by=["creation_time DESC"])
    except Exception:  # the server itself is up: a listing that fails costs only these lines
        return []
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}/runs") for e in experiments if e.name != "Default"]


def _check_store(uri: str) -> None:
    shown = redact_text(uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https", "databricks"):
        raise EdrayError("--tracking-uri", f"{shown} is already an MLflow server",
                         f"open {shown} in a browser (through an SSH tunnel if it is remote)")
    if scheme in ("", "file") or len(scheme) == 1:
        raise EdrayError("--tracking-uri", f"{shown} is an MLflow file store, which MLflow has deprecated",
                         "use the sqlite:///PATH/mlflow.db store that `edray sweep` writes")
    if scheme != "sqlite":
        return  # postgresql, mysql, ...: MLflow says what is wrong with them
    path = sqlite_path(uri)
    if path is None:
        raise EdrayError("--tracking-uri", f"{shown} is an in-memory store: nothing to show",
                         "pass the store of a sweep, e.g. sqlite:///WORKDIR/mlflow.db")
    require_store(uri)


def _resolve(host: str, port: int) -> list:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise EdrayError("--host", f"cannot resolve {host!r} ({err.strerror})",
                         "pass an address of this machine, e.g. 127.0.0.1") from None


def _check_port_free(addresses: list, host: str, port: int) -> None:
    """Bind each address once, as the server will (Linux refuses a port that is listened on)."""
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise EdrayError("--port", f"port {port} on {host} is in use (another `edray ui` or MLflow "
                                     "server?)", f"stop it, or pass a free port, e.g. --port {_free_port(host)}"
                                     ) from None
                if err.errno == errno.EACCES:
                    raise EdrayError("--port", f"port {port} needs privileges to bind",
                                     "pass a port above 1023, e.g. --port 5000") from None
                if err.errno == errno.EADDRNOTAVAIL:
                    raise EdrayError("--host", f"{host} is not an address of this machine",
                                     "pass 127.0.0.1 (or an address of one of its interfaces)") from None
                raise EdrayError("--host", f"cannot bind {host}:{port} ({err.strerror})",
                                 "pass another --host or --port") from None


def _free_port(host: str) -> int:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
    return 5001


def _url(host: str, port: int) -> str:
    """The address to open: a wildcard bind is reached through loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


# ---------------------------------------------------------------------- the child process group


class _Output:
    """Reads the server's output on a thread: kept (last lines) until the server is ready,
    forwarded to stderr after. Startup chatter is noise; a failure shows its last lines."""

    def __init__(self, proc: subprocess.Popen):
        self.forward = False
        self._tail: deque[str] = deque(maxlen=_TAIL)
        self._thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            if self.forward:
                print(line, file=sys.stderr, flush=True)
        stream.close()

    def last(self, n: int = 3) -> str:
        self._thread.join(timeout=2.0)
        lines = [redact_text(line.strip()) for line in self._tail if line.strip()]
        return " | ".join(lines[-n:]) or "no output"


def _wait_ready(proc: subprocess.Popen, url: str, output: _Output, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise EdrayError("edray ui", f"the MLflow server exited with code {code} before answering: "
                             f"{output.last()}", "fix the store URI (or install its database driver); "
                             "`mlflow server --backend-store-uri URI` shows the whole output",
                             exit_code=RUNTIME_ERROR)
        try:
            with opener.open(f"{url}/health", timeout=2.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(_POLL_S)
    raise EdrayError("edray ui", f"the MLflow server did not answer {url}/health within {timeout_s:g} s: "
                     f"{output.last()}", "check the store and the port", exit_code=RUNTIME_ERROR)


def _stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to every process of the server's group, then SIGTERM, then SIGKILL, until none is left."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig, grace in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), _GRACE_S):
        if not _group_alive(proc, pgid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while _group_alive(proc, pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)


def _group_alive(proc: subprocess.Popen, pgid: int) -> bool:
    """True while a live (not zombie) process is in the group; the leader is reaped on the way."""
    proc.poll()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_live_member(pid, pgid) for pid in _pids()) if Path("/proc").is_dir() else True


def _pids() -> Iterator[str]:
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                yield entry.name


def _live_member(pid: str, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[2]) == pgid and fields[0] != "Z"


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`_Stop` (in the main thread only, where signals land)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame) -> None:
        raise _Stop(signal.Signals(signum).name)

    old: dict[signal.Signals, Callable | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        old[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

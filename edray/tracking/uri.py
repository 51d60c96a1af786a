"""Where a sweep's MLflow records go, and a check that they can go there.

The embedded default is a SQLite store in the workdir (``WORKDIR/mlflow.db``) with
artifacts beside it: no server to start. MLflow's file store (``./mlruns``) is
deprecated and is never chosen; a user who names one is told what to use instead. A
sweep checks its store *before* any training starts, with one short request and no
retries, so that a dead server costs seconds, not a finished sweep with no records.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from edray.errors import EdrayError
from edray.spec import Spec
from edray.tracking.secrets import redact_text

__all__ = ["artifacts_are_local", "check_tracking", "resolve_tracking_uri",
    "workdir_tracking_uri", "sqlite_path"]

_FIELD = "tracking.uri"
_FIX_SERVER = "start the server, or fix tracking.uri / MLFLOW_TRACKING_URI"


def resolve_tracking_uri(spec: Spec, workdir: Path) -> str:
    """``spec.tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///WORKDIR/mlflow.db``.

    The embedded store's artifacts go to ``WORKDIR/mlflow-artifacts`` (see
    :class:`~edray.tracking.tracker.SweepTracker`'s ``artifact_root``).
    """
    return workdir_tracking_uri(workdir, spec.tracking.uri)


def workdir_tracking_uri(workdir: Path, uri: str | None = None) -> str:
    """``uri`` (a spec field or ``--tracking-uri``), else ``$MLFLOW_TRACKING_URI``, else the
    work directory's SQLite store: the one rule every command that reads or writes MLflow uses."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri.strip()
    return f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs or an in-memory one)."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri.removeprefix("sqlite://")
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    path = rest[1:].split("?", 1)[0]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
    return Path(path) if path else None


def artifacts_are_local(uri: str) -> bool:
    """True when the client decides where artifacts go (a database URI, no server between).

    With an ``http(s)`` server, the server's ``--artifacts-destination`` decides: a path on
    the driver's disk would be invisible to the MLflow UI on another machine.
    """
    scheme = urlparse(uri).scheme.lower()
    return scheme not in ("http", "https", "databricks", "databricks-uc", "uc")


def check_tracking(uri: str, *, timeout_s: float = 10.0) -> None:
    """Fail fast when the MLflow store at ``uri`` cannot take records.

    ``http(s)``: one search-experiments request (so that a wrong password fails here too),
    ``timeout_s`` seconds, no retries. ``sqlite``: the parent folder is created and must
    be writable. A file store (a bare path or ``file:``) is refused: MLflow deprecated it.
    Other database URIs (postgresql, mysql) are left to MLflow.

    Raises:
        EdrayError: naming ``tracking.uri``, the reason, and what to do.
    """
    shown = redact_text(uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, shown, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri, shown)
    elif scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        raise EdrayError(
            _FIELD, f"{shown} is an MLflow file store, which MLflow has deprecated",
            "use sqlite:///PATH/mlflow.db (or leave tracking.uri unset for WORKDIR/mlflow.db), or an MLflow server",
        )


def _check_server(uri: str, shown: str, timeout_s: float) -> None:
    import requests
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
            max_retries=0, backoff_factor=0, backoff_jitter=0, timeout=timeout_s, raise_on_status=False,
            json={"max_results": 1},
        )
    except requests.exceptions.Timeout:
        reason = f"no answer in {timeout_s:g} s"
        raise EdrayError(_FIELD, f"cannot reach MLflow at {shown} ({reason})", _FIX_SERVER) from None
    except Exception as err:  # requests' errors, or MLflow's wrapping of them
        reason = _short_reason(err)
        raise EdrayError(_FIELD, f"cannot reach MLflow at {shown} ({reason})", _FIX_SERVER) from None
    code = response.status_code
    if code in (401, 403):
        raise EdrayError(
            _FIELD, f"MLflow at {shown} refused the credentials (HTTP {code})",
            "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
        )
    if code == 404:
        raise EdrayError(_FIELD, f"{shown} answered 404: not an MLflow tracking server",
                         "check the host, port and path")
    if code >= 400:
        raise EdrayError(_FIELD, f"MLflow at {shown} answered HTTP {code}", _FIX_SERVER)


def _short_reason(err: BaseException) -> str:
    """The innermost cause of a connection error, on one line (urllib3 nests them deeply)."""
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "nodename nor servname", "timed out",
                   "No route to host", "Network is unreachable", "Temporary failure in name resolution",
                   "certificate verify failed"):
        if marker in text:
            return marker.lower()
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _check_sqlite(uri: str, shown: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        return  # in-memory: nothing on disk to check
    path = path.expanduser()
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdrayError(_FIELD, f"cannot create {parent} for {shown} ({err.strerror or err})",
                         "choose a writable --workdir or tracking.uri") from None
    if path.exists() and (not path.is_file() or not os.access(path, os.R_OK | os.W_OK)):
        raise EdrayError(_FIELD, f"{path} is not a writable file", "fix its permissions or choose another tracking.uri")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".edray-write-check-"):
            pass
    except OSError as err:
        raise EdrayError(_FIELD, f"{parent} is not writable ({err.strerror or err})",
                         "choose a writable --workdir or tracking.uri") from None

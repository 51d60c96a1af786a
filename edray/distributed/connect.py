"""Joining Ray: a private local Ray for one machine, or a running cluster by ``--address``.

``edray sweep`` (and ``--compare``) call :func:`join_ray` once; everything after it uses the
connection. A dead address is refused in one line within seconds, never a minutes-long hang.
"""

from __future__ import annotations

import os
from typing import Any

from edray.errors import RUNTIME_ERROR, EdrayError

__all__ = ["join_ray"]

_JOIN_TIMEOUT_S = 20
_FIX_ADDRESS = ("start the cluster (ray up / ray start --head), check the address (`ray status` on the head), "
                "and for token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def join_ray(address: str | None) -> None:
    """Start a private local Ray (no ``address``), or join the cluster at ``address``.

    Without an address this never joins a running cluster: ``ray.init()`` would read
    ``/tmp/ray/ray_current_cluster``, which a killed head leaves behind, and hang on it.

    Raises:
        EdrayError: ``--address`` names nothing that answers (within ~30 s, in one line).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DASHBOARD_HOST", "127.0.0.1")
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if not address:
        # The dashboard stays on (loopback only): without it, CPUs of trials stopped
        # early are not freed on a local cluster and the next trial hangs.
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
        return
    target = _answering(address)
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise EdrayError("--address", f"cannot join the Ray cluster at {address} ({reason})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None


def _answering(address: str) -> str:
    """``address`` resolved ("auto": ``$RAY_ADDRESS``, else the last ``ray start`` here) and
    checked to accept a connection within a few seconds: ``ray.init`` itself retries a dead
    address for minutes."""
    import socket

    from edray.clusters.ray_private import resolve

    try:
        resolved = resolve("canonicalize_bootstrap_address")(address) if address != "local" else None
    except Exception as err:  # auto with nothing running, or an address that does not parse
        raise EdrayError("--address", f"no Ray cluster found for {address!r} ({err})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None
    if resolved is None or address.startswith("ray://"):
        return address
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_JOIN_TIMEOUT_S):
            pass
    except (OSError, ValueError) as err:
        shown = resolved if address == "auto" else address
        reason = err.strerror if isinstance(err, OSError) else None  # a ValueError (a port not a number) has none
        raise EdrayError("--address", f"no Ray cluster answers at {shown} ({reason or err})", _FIX_ADDRESS,
                         exit_code=RUNTIME_ERROR) from None
    return resolved

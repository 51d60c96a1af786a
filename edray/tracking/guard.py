"""Calls to a tracking server, bounded in time, so a server that is down does not stall a sweep.

A tracking server that stops answering (no connection, or a timeout; not a 503, which is
an answer and is only retried) must not stall the sweep. Tune runs the tracker on
its own loop, and MLflow's HTTP client retries a dead server itself (7 times with backoff,
each request up to 120 s): under edray's three tries one call could block the driver for
many minutes. So MLflow tries once, for at most ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (8 s unless
the user set it), edray retries, and no call spends more than :data:`CALL_BUDGET_S`. Once a
call has failed that way the server counts as down: for :data:`DOWN_PAUSE_S` calls fail at
once (:class:`TrackingUnavailable`) instead of waiting again. The tracker keeps metric
batches meanwhile and sends them when it answers, and the end of the sweep says in one line
what was not recorded (:attr:`ServerGuard.missed`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

__all__ = ["CALL_BUDGET_S", "DOWN_PAUSE_S", "ServerGuard", "TrackingUnavailable", "bound_mlflow_http", "is_transient"]

log = logging.getLogger("edray.tracking.tracker")  # the tracker's lines, as users and tests know them

_TRIES = 3
_BACKOFF_S = 0.5
CALL_BUDGET_S = 30.0  # the most any one tracking call may take, its retries included
DOWN_PAUSE_S = 30.0  # after a call ran out of tries: how long calls fail at once before one tries again
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "8"}
_TRANSIENT_CODES = {
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
    "REQUEST_LIMIT_EXCEEDED", "ABORTED", "COULD_NOT_ACQUIRE_LOCK", "SERVICE_UNDER_MAINTENANCE",
}
_T = TypeVar("_T")


class TrackingUnavailable(ConnectionError):
    """The tracking server is taken as down (a recent call ran out of tries): not tried now."""


def bound_mlflow_http() -> None:
    """MLflow's own HTTP retries off and its request timeout short, unless the user set them."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def is_transient(err: BaseException) -> bool:
    """An error a later try may not meet: the server or network, not the request."""
    if isinstance(err, MlflowException):
        return err.error_code in _TRANSIENT_CODES or "database is locked" in str(err)
    return isinstance(err, OSError | ConnectionError | TimeoutError)


def _unreachable(err: BaseException) -> bool:
    """No answer at all: the connection failed or timed out (MLflow wraps the requests error)."""
    import requests

    cause = err.__cause__ or err.__context__
    return isinstance(err, OSError | TimeoutError) or isinstance(
        cause, requests.exceptions.ConnectionError | requests.exceptions.Timeout | OSError)


class ServerGuard:
    """Every call to one tracking server goes through :meth:`call` (see the module docstring).

    Args:
        uri: the server, for the lines it logs.
        sleep: waits between tries (tests pass a recorder).
        kept: how many metric batches the caller keeps unsent, for the line when the server is back.
    """

    def __init__(self, uri: str, *, sleep: Callable[[float], None] = time.sleep,
                 kept: Callable[[], int] = lambda: 0) -> None:
        bound_mlflow_http()
        self.uri = uri
        self.sleep = sleep
        self._kept = kept
        self.down = False  # a call ran out of tries and none has succeeded since
        self._down_until = 0.0  # monotonic time until which calls are not even tried
        self.missed = 0  # calls that were not recorded because the server was down

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, tried up to three times when MLflow or the network fails transiently,
        within :data:`CALL_BUDGET_S`; not tried at all while the server is taken as down."""
        now = time.monotonic()
        if now < self._down_until:
            self.missed += 1
            raise TrackingUnavailable(f"MLflow at {self.uri} did not answer; trying again in "
                                      f"{self._down_until - now:.0f} s")
        deadline = now + CALL_BUDGET_S
        for attempt in range(1, _TRIES + 1):
            try:
                result = fn()
            except Exception as err:
                if not is_transient(err):
                    raise
                wait = _BACKOFF_S * 2 ** (attempt - 1)
                if attempt == _TRIES or time.monotonic() + wait > deadline:
                    if _unreachable(err):  # a server that answers (a 503, a locked database) is not paused
                        self._went_down(err)
                    raise
                self.sleep(wait)
                continue
            if self.down:
                log.warning("MLflow at %s answers again; %d metric batches kept meanwhile are sent now",
                            self.uri, self._kept())
            self.down, self._down_until = False, 0.0
            return result
        raise AssertionError("unreachable")

    def answers_within(self, wait_s: float, probe: Callable[[], object]) -> bool:
        """True once the server answers ``probe()`` (at once when it is not taken as down),
        asking again each time its pause ends, for at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self.down:
            pause = self._down_until - time.monotonic()
            if pause > 0:
                if time.monotonic() + pause > deadline:
                    return False
                self.sleep(pause)
            try:
                self.call(probe)
            except Exception as err:
                if not is_transient(err):
                    raise
        return True

    def _went_down(self, err: BaseException) -> None:
        if not self.down:  # one line when it goes away, not one per call
            log.warning("MLflow at %s does not answer (%s); trials go on, metrics are kept and sent when it "
                        "answers again", self.uri, " ".join(str(err).split())[:160])
        self.down = True
        self.missed += 1
        self._down_until = time.monotonic() + DOWN_PAUSE_S

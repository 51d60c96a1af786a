"""Fault injection for the reliability tests (see RELIABILITY.md); off unless asked for.

Spot machines die in the middle of an epoch. To show that a trial survives it, a test
sets ``EDRAY_FAULT_KILL_AT_EPOCH=e`` and ``EDRAY_FAULT_MARKER=/some/file``: the worker of
rank ``EDRAY_FAULT_RANK`` (default 0) that has just trained epoch ``e`` dies on the spot
(``os._exit``: no cleanup, epoch ``e`` never reported, as with SIGKILL), once: the marker
file it leaves stops the restarted worker from dying again. It first waits a few
seconds, as a real epoch would last: Ray Train collects reports every 2 s, and a worker
dying sooner takes the report of epoch ``e - 1`` with it. Each start from a
checkpoint appends its epoch and grade to ``<marker>.resumed`` for the test to read.
Outside such a test (``EDRAY_FAULT_MARKER`` unset) ``trial.py`` never loads this module.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["KILL_AT_EPOCH", "MARKER", "RANK", "maybe_die", "note_resume"]

KILL_AT_EPOCH = "EDRAY_FAULT_KILL_AT_EPOCH"
MARKER = "EDRAY_FAULT_MARKER"
RANK = "EDRAY_FAULT_RANK"
_KILLED = 137  # the exit status of a SIGKILLed process
_EPOCH_S = 3.0  # > Ray Train's 2 s report polling


def maybe_die(epoch: int, rank: int) -> None:
    """Exit this process at once if a test asked for a death at ``epoch`` on ``rank``."""
    at, marker = os.environ.get(KILL_AT_EPOCH), os.environ.get(MARKER)
    if not at or not marker or int(at) != epoch or rank != int(os.environ.get(RANK, "0")):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly once, across restarts
    except FileExistsError:
        return
    os.write(fd, json.dumps({"epoch": epoch, "rank": rank, "pid": os.getpid()}).encode())
    os.close(fd)
    time.sleep(_EPOCH_S)
    os._exit(_KILLED)


def note_resume(checkpoint: dict[str, Any] | None, rank: int) -> None:
    """Record where a restarted worker resumed (only after an injected death)."""
    marker = os.environ.get(MARKER)
    if not marker or checkpoint is None or not os.path.exists(marker):
        return
    with open(f"{marker}.resumed", "a") as f:
        f.write(json.dumps({"epoch": checkpoint["epoch"], "grade": checkpoint["grade"], "rank": rank}) + "\n")

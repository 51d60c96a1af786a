"""Ctrl-C during a sweep, remembered until the driver acts on it.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal
is handled. Inside Ray's and Tune's machinery (a finaliser, a callback, a wait on a raylet
that the same Ctrl-C just stopped) it can be swallowed, and ``Tuner.fit`` then returns as if
the sweep had ended: the driver would write ``best.yaml`` for a part of a sweep. The handler
here also records the signal, and :func:`raise_if_interrupted` raises it again at the points
where the driver would otherwise go on to write results.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["catch_ctrl_c", "raise_if_interrupted"]

_seen = threading.Event()


def _on_sigint(signum, frame) -> None:
    _seen.set()
    raise KeyboardInterrupt


def catch_ctrl_c() -> None:
    """Record Ctrl-C (and raise as Python does); only the main thread may set handlers."""
    _seen.clear()
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not a host's own handler
        signal.signal(signal.SIGINT, _on_sigint)


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C came, even where something swallowed it."""
    if _seen.is_set():
        raise KeyboardInterrupt

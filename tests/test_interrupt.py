"""Ctrl-C that Ray or Tune swallowed still stops the sweep before it writes results
(the whole path, SIGINT to a running ``edray sweep``, is test_sweep_flags.py's)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from edray.distributed.interrupt import catch_ctrl_c, raise_if_interrupted


def test_a_swallowed_ctrl_c_is_raised_again_where_the_driver_checks():
    before = signal.getsignal(signal.SIGINT)
    # Python's own handler, as in a terminal: a shell's background job (as CI may run) starts with
    # SIGINT ignored, and catch_ctrl_c leaves an ignored or a host's own handler alone.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        catch_ctrl_c()
        raise_if_interrupted()  # nothing yet: no raise
        swallowed = False
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here, in the main thread
        except KeyboardInterrupt:
            swallowed = True  # as a finaliser or a callback inside Ray might
        assert swallowed
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        catch_ctrl_c()  # a new sweep in the same process starts clean
        raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, before)

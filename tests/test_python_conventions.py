"""What users of any Python CLI expect: ``python -m edray``, ``--version``, logging the flags control."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys

import pytest

import edray
from edray.logs import configure_logging


def test_python_dash_m_runs_the_cli_and_version_is_the_installed_one():
    out = subprocess.run([sys.executable, "-m", "edray", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"edray {edray.__version__}"
    assert importlib.metadata.version("edray") == edray.__version__  # one place: pyproject reads __init__


@pytest.fixture
def restore_logging():
    root, ours = logging.getLogger(), logging.getLogger("edray")
    saved = root.handlers[:], root.level, ours.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


def _emit() -> None:
    logging.getLogger("edray.atomic").debug("edray debug")
    logging.getLogger("edray.atomic").info("edray info")
    logging.getLogger("edray.atomic").error("edray error")
    logging.getLogger("urllib3.connectionpool").info("library info")
    logging.getLogger("urllib3.connectionpool").warning("library warning")


@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        ({}, ["edray info", "edray error", "library warning"]),
        ({"quiet": True}, ["edray error"]),
        ({"debug": True}, ["edray debug", "edray info", "edray error", "library info", "library warning"]),
    ],
)
def test_logging_levels_follow_quiet_and_debug(capsys, restore_logging, flags, shown):
    configure_logging(**flags)
    _emit()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == shown
    assert all(line.split(": ", 1)[0] in ("edray.atomic", "urllib3.connectionpool") for line in lines)

"""How the command line sets up Python logging.

edray's modules log through ``logging.getLogger(__name__)``; the CLI decides what reaches
stderr, as ``edray.atomic: message``: by default warnings from everything plus edray's own info lines (e.g. "another
process is building this store"), with ``--debug`` everything at debug level, with
``--quiet`` errors only. Library users configure logging themselves; nothing here runs
on import.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """Send log records to stderr as ``logger.name: message`` lines at the level the flags ask for."""
    root_level = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    edray_level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:  # main() may run twice in one process
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    logging.getLogger("edray").setLevel(edray_level)

"""One error type for every user mistake edray can name.

The CLI prints ``error: <path>: <problem>; fix: <fix>`` and exits 2 for a user mistake
(bad spec, flag or data path) and 1 for a failure at run time. The error pickles, so it
survives crossing Ray process boundaries.
"""

from __future__ import annotations

__all__ = ["EdrayError", "USER_ERROR", "RUNTIME_ERROR"]

USER_ERROR = 2
RUNTIME_ERROR = 1


class EdrayError(Exception):
    """A problem the user can fix, located by a field path, file or flag.

    Args:
        path: what is wrong, e.g. ``ed.temperatures[1]`` or a file path.
        problem: what is wrong with it, e.g. ``must be > 0, got -1``.
        fix: what to do about it.
        exit_code: 2 for user mistakes (default), 1 for run-time failures.
    """

    def __init__(self, path: str, problem: str, fix: str = "", *, exit_code: int = USER_ERROR):
        self.path = path
        self.problem = problem
        self.fix = fix
        self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        return f"{text}; fix: {self.fix}" if self.fix else text

    def __reduce__(self):
        return (_rebuild, (self.path, self.problem, self.fix, self.exit_code))


def _rebuild(path: str, problem: str, fix: str, exit_code: int) -> EdrayError:
    return EdrayError(path, problem, fix, exit_code=exit_code)

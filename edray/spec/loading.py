"""Spec files -> :class:`~edray.spec.schema.Spec`, with one-line errors.

A spec file is a whole spec: data, teachers, student, the ED recipe, optimisation and the
``search`` section that ``edray sweep`` searches. The shipped ones live in ``search_spaces/``
(the folder keeps the name users know, though each file in it is a whole spec). YAML -> ``Spec``
is the only place raw dicts exist; every other module reads typed fields. Every error names the
field path and what is allowed, so that ``edray validate`` can print one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edray.errors import EdrayError
from edray.spec.paths import apply_overrides
from edray.spec.schema import Spec
from edray.yaml_file import load_yaml_file

__all__ = ["load_spec", "spec_from_dict"]


def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and not item.startswith(("function-", "literal[", "list[", "union[")):
            # A key with a newline or no characters would break the one-line error: quote it.
            parts.append(("." if parts else "") + (item if item.isprintable() and item.strip() else repr(item)))
    return "".join(parts)


def _first_error(err: ValidationError) -> EdrayError:
    e = err.errors()[0]
    path = _format_loc(tuple(e["loc"])) or "spec"
    kind = e["type"]
    msg = e["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent = path.rsplit(".", 1)[0] if "." in path else "the top level"
        return EdrayError(path, "unknown key", f"remove it or check its spelling under {parent}")
    if kind == "missing":
        return EdrayError(path, "is required", "add it to the spec")
    given = e.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f", got {given!r}"
    return EdrayError(path, f"{msg}{shown}" if kind != "value_error" else msg, "see README.md 'Spec reference'")


def spec_from_dict(data: Any, *, source: str = "spec") -> Spec:
    """Validate a mapping into a :class:`Spec`.

    Raises:
        EdrayError: naming the first bad field.
    """
    if not isinstance(data, dict):
        raise EdrayError(source, f"must be a YAML mapping, got {type(data).__name__}", "write key: value pairs")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise _first_error(err) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read a YAML spec file (a whole spec, e.g. ``search_spaces/digits.yaml``), apply
    ``--set`` overrides, validate.

    Raises:
        EdrayError: a missing or unreadable file, bad YAML, or the first invalid field.
    """
    path = Path(path)
    _, data = load_yaml_file(path, what="spec", example="search_spaces/digits.yaml")
    if data is None:
        raise EdrayError(str(path), "is empty", "write a spec; see search_spaces/digits.yaml")
    if overrides:
        if not isinstance(data, dict):
            raise EdrayError(str(path), "must be a YAML mapping", "write key: value pairs")
        data = apply_overrides(data, overrides)
    return spec_from_dict(data, source=str(path))

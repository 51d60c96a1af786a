"""One-line problems in cluster files: where (a JSON path), what is wrong, and the fix.

Every check of :mod:`edray.clusters` reports through :func:`error_at`, so that
``edray validate`` prints ``FILE: <json path>: problem; fix: ...`` on one line. Errors of a
JSON schema (Ray's launcher schema, KubeRay's CRDs) are turned into that shape here too.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jsonschema

from edray.errors import EdrayError

__all__ = [
    "README", "DocLabel", "Part", "error_at", "field_path", "first_schema_error", "schema_error", "short", "walk",
]

Part = str | int
README = "see README.md 'Run on a cluster'"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_JSON_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "object": "a mapping", "array": "a list"}


class DocLabel(str):
    """A document of a multi-document manifest, shown as kubectl names it: ``RayCluster/edray``."""


def field_path(parts: Sequence[Part]) -> str:
    """``available_node_types["ray.head"].resources.GPU``: dots only where a key is a plain name."""
    out = ""
    for part in parts:
        if isinstance(part, DocLabel):
            out += part
        elif isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(top level)"


def error_at(src: str, parts: Sequence[Part], problem: str, fix: str) -> EdrayError:
    return EdrayError(f"{src}: {field_path(parts)}", " ".join(problem.split()), " ".join(fix.split()))


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def walk(node: Any, parts: tuple[Part, ...] = ()) -> Iterator[tuple[tuple[Part, ...], Any, Any]]:
    """Every (path, key, value) below ``node``; key is None for list items."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*parts, str(key)), key, value
            yield from walk(value, (*parts, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*parts, i), None, value
            yield from walk(value, (*parts, i))


def first_schema_error(schema: dict, instance: Any) -> jsonschema.ValidationError | None:
    """The error to show first: jsonschema's best match, except that an unknown key beside a
    missing one is named first (``minReplica`` is a misspelt ``minReplicas``, not two mistakes)."""
    as_json = json.loads(json.dumps(instance, default=str))  # YAML allows keys (1, true) a JSON schema does not
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(as_json))
    best = jsonschema.exceptions.best_match(errors)
    if best is None:
        return None
    unknown = (e for e in errors if e.validator == "additionalProperties" and e.absolute_path == best.absolute_path)
    return next(unknown, best)


def schema_error(
    error: jsonschema.ValidationError, src: str, prefix: Sequence[Part], schema: str,
    required_fix: Callable[[str], str] | None = None,
) -> EdrayError:
    """A JSON-schema error as one line: the dotted field, what ``schema`` says, and a fix.

    Args:
        prefix: the path of the validated object inside the file (``RayCluster/edray``).
        schema: whose schema, for the message (``"Ray's launcher schema"``).
        required_fix: the fix for a missing required key, by key; default "add KEY".
    """
    parts = [*prefix, *error.absolute_path]
    given = error.instance
    if error.validator == "additionalProperties" and isinstance(given, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in given if k not in allowed) or ["?"]
        near = difflib.get_close_matches(extra[0], allowed, n=1)
        fix = f"did you mean {near[0]!r}?" if near else f"allowed here: {short(', '.join(allowed), 300)}"
        return error_at(src, [*parts, extra[0]], f"unknown key ({schema} allows no other keys here)", fix)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        key = missing[0] if missing else "?"
        fix = required_fix(key) if required_fix else f"add {key} ({README})"
        return error_at(src, [*parts, key], f"missing (required by {schema})", fix)
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        names = " or ".join(str(_JSON_TYPES.get(t, t)) for t in wanted if t != "null")
        fix = 'quote it, e.g. "0"' if wanted == ["string"] else f"write {names} here"
        return error_at(src, parts, f"{short(repr(given), 60)} is not {names} ({schema})", fix)
    if error.schema.get("x-kubernetes-int-or-string") and error.validator in ("anyOf", "pattern"):
        if "pattern" in error.schema:  # a resource quantity
            return error_at(src, parts, f"{short(repr(given), 60)} is not a Kubernetes quantity",
                            'write e.g. "4", "500m", "16Gi"')
        return error_at(src, parts, f"{short(repr(given), 60)} is not an integer or a string ({schema})",
                        "write a number or a name, e.g. 8265 or dashboard")
    if error.validator == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return error_at(src, parts, f"{short(repr(given), 60)} is not allowed ({schema})", f"use one of: {choices}")
    return error_at(src, parts, f"{short(error.message)} ({schema})", README)

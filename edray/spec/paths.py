"""Dotted spec paths (``ed.temperatures[1]``): ``--set`` overrides and a trial's config.

Paths address the raw mapping a spec file holds, before validation, so that an override
or a sampled value is checked by the schema like any value written in the file.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from pydantic import BaseModel

from edray.errors import EdrayError
from edray.spec.schema import Spec

__all__ = ["apply_overrides", "get_path", "set_path"]


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``path.to.key=value`` overrides (YAML-typed values) to a raw spec mapping.

    ``ed.temperatures[1]=2`` sets one list item. The key must already exist in the
    spec or its defaults, so a misspelt override fails instead of doing nothing.
    """
    for item in overrides:
        if "=" not in item:
            raise EdrayError(f"--set {item}", "expected path.to.key=value", "write e.g. --set ed.alpha=0.5")
        path, value = item.split("=", 1)
        set_path(data, path.strip(), _parse_value(value), where=f"--set {path.strip()}")
    return data


def set_path(data: dict, path: str, value: Any, *, where: str | None = None) -> None:
    """Set ``value`` at a dotted spec ``path`` (``a.b[1].c``) inside a raw mapping.

    Raises:
        EdrayError: a key the schema does not know, or an index out of range.
    """
    where = where or path
    keys = _split_path(path, where)
    node: Any = data
    default_node: Any = _defaults_tree()
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                raise EdrayError(where, f"index {key} is out of range", "set the whole list instead")
            if last:
                node[key] = value
            else:
                node = node[key]
            continue
        if not isinstance(node, dict):
            raise EdrayError(where, f"{key!r} is not inside a mapping", "check the path")
        known = isinstance(default_node, dict) and key in default_node
        if key not in node and not known:
            raise EdrayError(where, f"unknown key {key!r}", "check the spelling against the spec")
        if last:
            node[key] = value
        else:
            if key not in node or node[key] is None:
                node[key] = {}
            node = node[key]
            default_node = default_node.get(key) if isinstance(default_node, dict) else None


def get_path(data: dict, path: str, *, where: str | None = None) -> Any:
    """The value at a dotted spec ``path`` in a raw mapping (KeyError/IndexError if absent).

    Raises:
        EdrayError: a malformed index (``a[x]``), located at ``where`` (default: ``path``).
    """
    node: Any = data
    for key in _split_path(path, where or path):
        node = node[key]
    return node


def _split_path(path: str, where: str) -> list[str | int]:
    """``a.b[1].c`` -> ``["a", "b", 1, "c"]``; a bad index is blamed on ``where``, the place
    the path came from (``--set ...``, ``search.params[2].path``)."""
    keys: list[str | int] = []
    for part in path.split("."):
        while "[" in part and part.endswith("]"):
            head, _, idx = part.partition("[")
            if head:
                keys.append(head)
            for piece in idx.rstrip("]").split("]["):
                if not piece.isdigit():
                    named = "" if path in where else f" in {path}"
                    raise EdrayError(where, f"bad index [{piece}]{named}", "use a non-negative integer")
                keys.append(int(piece))
            part = ""
        if part:
            keys.append(part)
    return keys


@functools.cache
def _defaults_tree() -> dict:
    """Every known key of the schema, as a nested dict, for override checking."""

    def tree(model: type[BaseModel]) -> dict:
        out: dict = {}
        for name, field in model.model_fields.items():
            ann = field.annotation
            args = getattr(ann, "__args__", (ann,))
            sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                sub = ann
            out[name] = tree(sub) if sub is not None else None
        return out

    return tree(Spec)

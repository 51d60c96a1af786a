"""YAML files users hand to edray (specs, cluster files): read strictly, fail in one line.

Plain YAML keeps the last of two values given for one key, so a spec with ``alpha`` twice
would run with whichever came last, and a cluster file with ``min_workers`` twice would
launch whatever the second says. Here a key written twice in one mapping is an error that
names its line; keys brought in by a ``<<`` merge may still be overridden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edray.errors import EdrayError

__all__ = ["UniqueKeyLoader", "load_yaml_file"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # a complex key: SafeLoader itself refuses the unhashable ones
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: Path, *, what: str, example: str, documents: bool = False) -> tuple[str, Any]:
    """The text of a YAML file and what it holds: one document, or (``documents``) the list
    of its non-empty documents, as a KubeRay manifest may have several.

    Args:
        what: the kind of file, for messages (``"spec"``, ``"cluster"``).
        example: a file of that kind the fix can point to.

    Raises:
        EdrayError: no such file, not UTF-8 text, unreadable, or invalid YAML (a key twice
            included), located at ``FILE: line N`` where YAML says which line.
    """
    src = str(path)
    if not path.is_file():
        raise EdrayError(src, f"no such {what} file", f"give the path of a YAML {what} file, e.g. {example}")
    try:
        text = path.read_text(encoding="utf-8")
        if documents:
            return text, [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
        return text, yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{src}: line {mark.line + 1}" if mark is not None else src
        problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line, whatever YAML says
        raise EdrayError(where, f"invalid YAML ({problem})", "fix the YAML syntax at that line") from None
    except UnicodeDecodeError:
        raise EdrayError(src, "not a UTF-8 text file", f"give a YAML {what} file, e.g. {example}") from None
    except OSError as err:
        raise EdrayError(src, f"cannot read ({err.strerror or err})", "check the file and its permissions") from None

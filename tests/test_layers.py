"""The house's layers: no import runs up them, and the ED loop knows nothing of Ray or MLflow.

Every ``import`` in ``edray/`` (also the lazy ones inside functions) is read from the
source, so a new upward import fails here with the module and the line, long before it
makes a cycle or drags Ray into ``edray validate``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edray"

# Lowest first. A module may import its own layer and those below it.
LAYERS: list[set[str]] = [
    {"errors", "atomic", "registry", "spec", "workdir", "trial_status", "search_space", "stats", "storage", "names",
     "yaml_file", "logs", "device"},
    {"data", "models", "logits", "layout", "cache"},
    {"distill"},
    {"preflight", "pipeline", "preparation"},
    {"distributed", "tracking", "report", "clusters", "ui"},
    {"cli", "__init__", "__main__"},
]
# The ED loop and everything below it run where there is no Ray and no MLflow (a GPU box,
# a notebook); Optuna belongs to the search.
FORBIDDEN = {
    "ray": {"errors", "atomic", "registry", "spec", "workdir", "trial_status", "search_space", "stats", "storage",
            "data", "models", "logits", "layout", "cache", "distill", "preflight", "pipeline", "preparation", "device"},
    "mlflow": {"errors", "atomic", "registry", "spec", "workdir", "trial_status", "search_space", "storage", "data",
               "models", "logits", "layout", "cache", "distill", "preflight", "pipeline", "preparation", "device"},
    "optuna": {"search_space", "data", "models", "logits", "distill", "preflight", "pipeline", "spec"},
}


def _part(module: str) -> str:
    """``edray.distill.loop`` -> ``distill``; ``edray`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"edray/{part}: not in any layer of tests/test_layers.py; add it where it belongs")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return out


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_import_runs_up_the_layers(path: Path):
    rel = path.relative_to(ROOT.parent)
    own = _part(".".join(rel.with_suffix("").parts))
    level = _layer(own)
    for line, module in _imports(path):
        top = module.split(".")[0]
        if top == "edray" and module != "edray":
            other = _part(module)
            assert _layer(other) <= level, f"{rel}:{line} imports {module}: {other} is above {own}"
        assert own not in FORBIDDEN.get(top, set()), f"{rel}:{line} imports {module}, which {own} must not"


def test_every_package_has_a_layer():
    parts = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    for part in parts:
        _layer(part)

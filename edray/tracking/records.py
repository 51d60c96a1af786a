"""Values as an MLflow run records them: keys, flat params, metric batches, YAML and the
results table. Pure functions: no client, no server."""

from __future__ import annotations

import csv
import io
import json
import numbers
import re
import time
from collections.abc import Iterable
from typing import Any

import yaml
from mlflow.entities import Metric

from edray.tracking.secrets import redact

__all__ = ["MAX_PARAM_VALUE", "MAX_TAG_VALUE", "as_text", "clip", "flatten", "metric_batch", "mlflow_key", "numeric",
           "redact_yaml", "results_csv", "to_yaml"]

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_TAG_VALUE = 8000
MAX_KEY = 250


def mlflow_key(path: str) -> str:
    """A spec path as a valid MLflow param/metric key: ``ed.switch_epochs[0]`` -> ``ed.switch_epochs.0``.

    MLflow keys allow letters, digits, ``_ - . / :`` and spaces only.
    """
    key = re.sub(r"\[(\d+)\]", r".\1", str(path))
    key = re.sub(r"[^\w.\-/: ]", "_", key)
    return key[:MAX_KEY]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as ``{dotted.key: str}``: lists of scalars as one string, lists of
    mappings indexed (``teachers.models.0.arch``), so each field is filterable in MLflow."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if value:
                out.update(flatten(value, f"{name}."))
            else:
                out[mlflow_key(name)] = "{}"
        elif isinstance(value, list | tuple) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    out.update(flatten(item, f"{name}.{i}."))
                else:
                    out[mlflow_key(f"{name}.{i}")] = as_text(item)
        else:
            out[mlflow_key(name)] = as_text(value)
    return out


def as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` as floats (numpy scalars included, bools and text left out)."""
    out = {}
    for key, value in values.items():
        number = _number(value)
        if number is not None:
            out[mlflow_key(key)] = number
    return out


def metric_batch(values: dict[str, float], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in values.items()]


def to_yaml(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)


def redact_yaml(text: str) -> str:
    """``text`` with secrets masked; the original text when nothing needed masking."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(tree, dict):
        return text
    clean = redact(tree)
    return text if clean == tree else to_yaml(clean)


def results_csv(rows: Iterable[dict]) -> str:
    """The results table: one row per trial, ``config.*`` columns for the searched values."""
    flat = []
    for row in rows:
        item = {k: v for k, v in row.items() if k != "config"}
        item.update({f"config.{k}": v for k, v in (row.get("config") or {}).items()})
        flat.append(item)
    columns: list[str] = []
    for item in flat:
        columns.extend(k for k in item if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for item in flat:
        writer.writerow({k: as_text(v) if isinstance(v, list | tuple | dict) else v for k, v in item.items()})
    return buf.getvalue()

"""What the sampled configs of every shipped spec hold, value by value (not only how many):
each resolves to a valid spec that carries the sampled values, every value lies within its
parameter's bounds or choices, and the space is explored, not constant."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edray.distributed.space import describe_space, resolve_config, sample_configs
from edray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))


def _value(spec, path: str):
    """The value at a dotted path with ``[i]`` indices, read from the resolved spec."""
    node = spec
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else getattr(node, part)
    return node


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_sample_is_a_valid_spec_within_its_bounds(path):
    spec = load_spec(path)
    configs = sample_configs(spec, 8)
    for config in configs:
        trial = resolve_config(spec, config)
        for key, value in config.items():
            if key.startswith("ed.") or key.startswith("optim."):
                assert _value(trial, key) == pytest.approx(value), key
        for param in spec.search.params:
            searched = _value(trial, param.path)
            values = searched if isinstance(searched, list) else [searched]
            if param.choices is not None:
                assert searched in param.choices, param.path
            elif param.type == "switch_epochs":
                bounds = [0, *searched, trial.optim.epochs]
                assert all(b - a >= param.min_grade_epochs for a, b in zip(bounds, bounds[1:])), searched
            else:
                assert all(param.low - 1e-9 <= v <= param.high + 1e-9 for v in values), (param.path, values)
            if param.type == "split_ratios":
                assert sum(searched) == pytest.approx(1.0)
    # Explored: each searched number takes more than one value over 8 samples.
    numeric = [k for k, v in configs[0].items() if isinstance(v, float)]
    assert numeric and all(len({c[k] for c in configs}) > 1 for k in numeric)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_each_line_of_the_space_names_its_parameter(path):
    spec = load_spec(path)
    lines = describe_space(spec)
    assert [line.split(":", 1)[0] for line in lines] == [p.path for p in spec.search.params]
    for line, param in zip(lines, spec.search.params):
        if param.choices is not None:
            assert all(str(c) in line for c in param.choices), line
        elif param.low is not None:
            assert f"[{param.low}, {param.high}]" in line, line

"""RELIABILITY.md tells the truth about its tests: every test a row names exists, and the
counts it quotes are the suite's. The bad-spec table itself: distinct cases, each a real
change of the shipped spec or of its flags."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import yaml

from .test_bad_specs import BASE, CASES

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "RELIABILITY.md").read_text()


def _named_tests() -> list[tuple[str, str]]:
    """(test file, test name or prefix ending in …) for every test the fault table names."""
    named = []
    for row in (line for line in DOC.splitlines() if re.match(r"\| \d+[a-z]? \|", line)):
        shown_by = row.rstrip("|").rsplit("|", 1)[1]
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(\w+…?)`", shown_by):
            current = file or current
            assert current, row
            named.append((current, name))
    return named


def _test_names(file: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / file).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_a_row_names_exists():
    named = _named_tests()
    assert len(named) > 25
    for file, name in named:
        names = _test_names(file)
        if name.endswith("…"):
            assert any(n.startswith(name[:-1]) for n in names), (file, name)
        else:
            assert name in names, (file, name)


def test_the_bad_spec_count_is_the_suites():
    (quoted,) = re.findall(r"`tests/test_bad_specs.py` runs (\d+) broken specs", DOC)
    assert int(quoted) == len(CASES)


def test_bad_spec_cases_are_distinct_and_each_changes_something():
    assert len({c[0] for c in CASES}) == len(CASES)
    shipped = yaml.safe_dump(BASE, sort_keys=False)
    for name, mutation, args, expected in CASES:
        assert expected, name
        if mutation is None:  # the shipped spec: the mistake is in the flags
            assert len(args) > 1, name
        elif isinstance(mutation, str):
            assert mutation != (ROOT / "search_spaces" / "digits.yaml").read_text(), name
        else:
            data = copy.deepcopy(BASE)
            mutation(data)
            assert yaml.safe_dump(data, sort_keys=False) != shipped, name


@pytest.mark.parametrize("word", ["distributed/faults.py", "EDRAY_FAULT"])
def test_no_word_of_the_removed_fault_hooks(word):
    assert word not in DOC

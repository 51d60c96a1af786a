"""The spec's ``search`` section, checked and applied, with no Optuna and no Ray.

Below both :mod:`edray.preflight` (which checks a spec before anything runs) and
:mod:`edray.distributed.space` (which compiles the space to an Optuna define-by-run
function): both need the same checks, and neither layer may import the other's.
A trial's config is a flat mapping ``spec path -> value`` (``ed.switch_epochs[0]``,
``ed.alpha``), which :func:`resolve_config` writes into the base spec.
"""

from __future__ import annotations

import copy
from typing import Any

from edray.errors import EdrayError
from edray.spec import SearchParam, SearchSpec, Spec, get_path, set_path, spec_from_dict

__all__ = [
    "BUDGET_KEY", "check_space", "drawn_names", "fidelity_spec", "resolve_config", "search_section", "switch_bounds",
    "with_derived",
]

BUDGET_KEY = "budget_epochs"  # in a trial's config: train the copy of the spec at this many epochs

# Each structured kind draws one value per grade, or per grade but one.
_DRAWS = {"switch_epochs": -1, "temperatures": 0, "split_ratios": -1}


def search_section(spec: Spec) -> SearchSpec:
    """``spec.search``, which every sweep needs.

    Raises:
        EdrayError: the spec has no search section.
    """
    if spec.search is None:
        raise EdrayError("search", "the spec has no search section",
                         "add search.params (see search_spaces/digits.yaml)")
    return spec.search


def check_space(spec: Spec) -> None:
    """Check that ``spec.search`` admits only valid trials, before any trial starts.

    Raises:
        EdrayError: no search section; a path that is not a spec field
            (``search.params[i].path``); bounds or choices outside the field's valid range,
            or that admit no config (``search.params[i]``); a misspelt or invalid
            ``search.points_to_evaluate[j]``.
    """
    search = search_section(spec)
    raw = spec.model_dump(mode="json")
    for i, p in enumerate(search.params):
        where = f"search.params[{i}].path"
        try:
            get_path(raw, p.path, where=where)
        except (KeyError, IndexError, TypeError):
            raise EdrayError(where, f"{p.path!r} is not a spec field", "use a path like ed.alpha") from None
        if p.type in _DRAWS and p.path.split(".")[-1] != p.type:
            raise EdrayError(where, f"type {p.type} applies to ed.{p.type}, got {p.path}", f"set path: ed.{p.type}")
        if p.type == "split_ratios":
            g = spec.ed.grades
            low, high = p.bounds()
            if low * g > 1 + 1e-9 or high * g < 1 - 1e-9:
                raise EdrayError(f"search.params[{i}]", f"{g} ratios in [{low}, {high}] cannot sum to 1",
                                 "widen low/high")
        if p.type in ("int", "float", "categorical"):
            for value in p.options() if p.type == "categorical" else p.bounds():
                _check_value(spec, i, p, int(value) if p.type == "int" else value)
    _check_points(spec)
    for p in search.params:
        if p.type == "switch_epochs":
            switch_bounds(spec, p)


def switch_bounds(spec: Spec, p: SearchParam) -> tuple[int, int, int]:
    """``(grades, epochs, min_grade_epochs)`` of a ``switch_epochs`` param, checked to fit."""
    grades, epochs, min_len = spec.ed.grades, spec.optim.epochs, p.min_grade_epochs
    if grades < 2:
        raise EdrayError("search.params", f"{p.path}: one grade has no switch epochs to search", "remove the param")
    if grades * min_len > epochs:
        raise EdrayError(
            "search.params", f"{p.path}: {grades} grades of at least {min_len} epochs do not fit in {epochs} epochs",
            "lower min_grade_epochs or raise optim.epochs",
        )
    return grades, epochs, min_len


def drawn_names(spec: Spec) -> set[str]:
    """The names the compiled space draws: ``ed.alpha``, ``ed.switch_epochs[0]``, ..."""
    names: set[str] = set()
    grades = spec.ed.grades
    for p in search_section(spec).params:
        if p.type in _DRAWS:
            names.update(f"{p.path}[{i}]" for i in range(grades + _DRAWS[p.type]))
        else:
            names.add(p.path)
    return names


def with_derived(spec: Spec, point: dict[str, Any]) -> dict[str, Any]:
    """``point`` plus what the space derives from it (the last split ratio), as its trial gets them."""
    out = dict(point)
    g = spec.ed.grades
    for p in search_section(spec).params:
        drawn = [f"{p.path}[{k}]" for k in range(g - 1)]
        if p.type == "split_ratios" and all(k in point for k in drawn):
            out[f"{p.path}[{g - 1}]"] = round(1.0 - sum(point[k] for k in drawn), 10)
    return out


def resolve_config(base: Spec | dict, config: dict[str, Any]) -> Spec:
    """The spec of one trial: ``base`` with every ``path -> value`` of ``config`` written in
    (and cut to ``budget_epochs``, scaled alike, when the config carries it: :func:`fidelity_spec`).

    Raises:
        EdrayError: the combined spec is invalid (e.g. a searched switch past the epochs).
    """
    raw = copy.deepcopy(base.model_dump(mode="json") if isinstance(base, Spec) else base)
    budget = config.get(BUDGET_KEY)
    for path, value in sorted(config.items()):
        if path != BUDGET_KEY:
            set_path(raw, path, value, where=f"search {path}")
    spec = spec_from_dict(raw)
    # A rung of successive halving trains a short copy of the config (see distributed/halving.py).
    return fidelity_spec(spec, int(budget)) if budget is not None else spec


def _scaled(values: list[int], factor: float, *, first: int, last: int) -> list[int]:
    """``values`` (strictly increasing) scaled by ``factor``, rounded, kept strictly increasing within
    [first, last]: a copy keeps every grade, however short."""
    out: list[int] = []
    n = len(values)
    for i, v in enumerate(values):
        lo = out[-1] + 1 if out else first
        hi = last - (n - 1 - i)
        out.append(min(max(round(v * factor), lo), hi))
    return out


def fidelity_spec(spec: Spec, epochs: int) -> Spec:
    """The copy of ``spec`` at ``epochs`` epochs: switch epochs and LR milestones scaled alike.

    The LR schedule runs over the copy's own epochs (a cosine reaches its end), so the copy
    is a whole, short run rather than the first epochs of a long one.
    """
    total = spec.optim.epochs
    if epochs == total:
        return spec
    raw = spec.model_dump(mode="json")
    factor = epochs / total
    raw["optim"]["epochs"] = epochs
    switches = spec.ed.switch_epochs
    if switches:
        raw["ed"]["switch_epochs"] = _scaled(switches, factor, first=1, last=epochs - 1)
    milestones = spec.optim.schedule.milestones
    if milestones:
        scaled = sorted({min(max(1, round(m * factor)), epochs - 1) for m in milestones})
        raw["optim"]["schedule"]["milestones"] = scaled
    return spec_from_dict(raw)


def _check_value(spec: Spec, index: int, p: SearchParam, value: Any) -> None:
    """A bound or choice must be a valid value of its field, or some trials fail after the
    sweep has started. Checks across fields (a switch past the epochs) are left to the trial."""
    try:
        resolve_config(spec, {p.path: value})
    except EdrayError as err:
        if err.path == p.path:
            raise EdrayError(f"search.params[{index}]", f"{p.path} = {value!r} is not allowed ({err.problem})",
                             "keep low/high or choices inside the field's valid range") from None


def _check_points(spec: Spec) -> None:
    """``search.points_to_evaluate``: a misspelt name would be ignored by Optuna, silently."""
    names = drawn_names(spec)
    for j, point in enumerate(search_section(spec).points_to_evaluate or []):
        where = f"search.points_to_evaluate[{j}]"
        unknown = sorted(set(point) - names)
        if unknown:
            raise EdrayError(where, f"{unknown[0]!r} is not a searched value", f"use some of {sorted(names)}")
        try:
            resolve_config(spec, with_derived(spec, point))
        except EdrayError as err:
            raise EdrayError(where, f"does not give a valid spec ({err.path}: {err.problem})",
                             "fix the values") from None

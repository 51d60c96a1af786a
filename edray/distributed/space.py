"""The spec's ``search`` section compiled to an Optuna define-by-run function.

Constraints of ED live inside the space rather than in rejection: switch epochs are
drawn in order with a minimum grade length, split ratios are drawn within bounds so
that the last one (the remainder) is in bounds too. A trial's config is a flat mapping
``spec path -> value`` (``ed.switch_epochs[0]``, ``ed.alpha``), which
:func:`resolve_config` writes into the base spec.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import optuna

from edray.errors import EdrayError
from edray.spec import SearchParam, Spec, get_path, set_path, spec_from_dict

__all__ = ["compile_space", "default_point", "describe_space", "resolve_config", "sample_configs"]

DefineByRun = Callable[[optuna.Trial], dict[str, Any] | None]


def _switch_bounds(spec: Spec, p: SearchParam) -> tuple[int, int, int]:
    grades, epochs, min_len = spec.ed.grades, spec.optim.epochs, p.min_grade_epochs
    if grades < 2:
        raise EdrayError("search.params", f"{p.path}: one grade has no switch epochs to search", "remove the param")
    if grades * min_len > epochs:
        raise EdrayError(
            "search.params", f"{p.path}: {grades} grades of at least {min_len} epochs do not fit in {epochs} epochs",
            "lower min_grade_epochs or raise optim.epochs",
        )
    return grades, epochs, min_len


def _check_paths(spec: Spec) -> None:
    raw = spec.model_dump(mode="json")
    for i, p in enumerate(spec.search.params):
        try:
            get_path(raw, p.path)
        except (KeyError, IndexError, TypeError):
            raise EdrayError(f"search.params[{i}].path", f"{p.path!r} is not a spec field", "use a path like ed.alpha")
        if p.type in ("switch_epochs", "split_ratios", "temperatures") and p.path.split(".")[-1] != p.type:
            raise EdrayError(f"search.params[{i}].path", f"type {p.type} applies to ed.{p.type}, got {p.path}",
                             f"set path: ed.{p.type}")
        if p.type == "split_ratios":
            g = spec.ed.grades
            if p.low * g > 1 + 1e-9 or p.high * g < 1 - 1e-9:
                raise EdrayError(f"search.params[{i}]", f"{g} ratios in [{p.low}, {p.high}] cannot sum to 1",
                                 "widen low/high")
        if p.type in ("int", "float", "categorical"):
            for value in p.choices if p.type == "categorical" else (p.low, p.high):
                _check_value(spec, i, p, int(value) if p.type == "int" else value)
    _check_points(spec)


def _check_value(spec: Spec, index: int, p: SearchParam, value: Any) -> None:
    """A bound or choice must be a valid value of its field, or some trials fail after the
    sweep has started. Checks across fields (a switch past the epochs) are left to the trial."""
    try:
        resolve_config(spec, {p.path: value})
    except EdrayError as err:
        if err.path == p.path:
            raise EdrayError(f"search.params[{index}]", f"{p.path} = {value!r} is not allowed ({err.problem})",
                             "keep low/high or choices inside the field's valid range") from None


def _drawn_names(spec: Spec) -> set[str]:
    """The names the compiled space draws: ``ed.alpha``, ``ed.switch_epochs[0]``, ..."""
    names: set[str] = set()
    grades = spec.ed.grades
    for p in spec.search.params:
        count = {"switch_epochs": grades - 1, "temperatures": grades, "split_ratios": grades - 1}.get(p.type)
        names.update([p.path] if count is None else (f"{p.path}[{i}]" for i in range(count)))
    return names


def _check_points(spec: Spec) -> None:
    """``search.points_to_evaluate``: a misspelt name would be ignored by Optuna, silently."""
    names = _drawn_names(spec)
    for j, point in enumerate(spec.search.points_to_evaluate or []):
        where = f"search.points_to_evaluate[{j}]"
        unknown = sorted(set(point) - names)
        if unknown:
            raise EdrayError(where, f"{unknown[0]!r} is not a searched value", f"use some of {sorted(names)}")
        try:
            resolve_config(spec, _with_derived(spec, point))
        except EdrayError as err:
            raise EdrayError(where, f"does not give a valid spec ({err.path}: {err.problem})",
                             "fix the values") from None


def _with_derived(spec: Spec, point: dict[str, Any]) -> dict[str, Any]:
    """``point`` plus what the space derives from it (the last split ratio), as its trial gets them."""
    out = dict(point)
    g = spec.ed.grades
    for p in spec.search.params:
        drawn = [f"{p.path}[{k}]" for k in range(g - 1)]
        if p.type == "split_ratios" and all(k in point for k in drawn):
            out[f"{p.path}[{g - 1}]"] = round(1.0 - sum(point[k] for k in drawn), 10)
    return out


def compile_space(spec: Spec) -> DefineByRun:
    """The define-by-run function: draws every searched value, returns derived constants.

    Raises:
        EdrayError: a path that is not a spec field, or bounds that admit no config.
    """
    if spec.search is None:
        raise EdrayError("search", "the spec has no search section",
                         "add search.params (see search_spaces/digits.yaml)")
    _check_paths(spec)
    for p in spec.search.params:
        if p.type == "switch_epochs":
            _switch_bounds(spec, p)
    return _DefineByRun(spec)


class _DefineByRun:
    """The compiled space as a picklable callable: Tune checkpoints its searcher, and
    with it this function, so that a sweep can resume."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        spec = self.spec
        constants: dict[str, Any] = {}
        for p in spec.search.params:
            if p.type == "int":
                trial.suggest_int(p.path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.type == "float":
                trial.suggest_float(p.path, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "categorical":
                trial.suggest_categorical(p.path, p.choices)
            elif p.type == "switch_epochs":
                grades, epochs, min_len = _switch_bounds(spec, p)
                prev = 0
                for i in range(grades - 1):
                    prev = trial.suggest_int(f"{p.path}[{i}]", prev + min_len, epochs - (grades - 1 - i) * min_len)
            elif p.type == "temperatures":
                for g in range(spec.ed.grades):
                    trial.suggest_float(f"{p.path}[{g}]", p.low, p.high, log=p.log)
            elif p.type == "split_ratios":
                g, used = spec.ed.grades, 0.0
                for k in range(g - 1):
                    left = g - 1 - k  # ratios still to place after this one
                    lo = max(p.low, 1.0 - used - p.high * left)
                    hi = min(p.high, 1.0 - used - p.low * left)
                    used += trial.suggest_float(f"{p.path}[{k}]", lo, max(lo, hi))
                constants[f"{p.path}[{g - 1}]"] = round(1.0 - used, 10)
        return constants


def resolve_config(base: Spec | dict, config: dict[str, Any]) -> Spec:
    """The spec of one trial: ``base`` with every ``path -> value`` of ``config`` written in
    (and cut to ``budget_epochs``, scaled alike, when the config carries it).

    Raises:
        EdrayError: the combined spec is invalid (e.g. a searched switch past the epochs).
    """
    from edray.distributed.schedulers import BUDGET_KEY, fidelity_spec

    raw = copy.deepcopy(base.model_dump(mode="json") if isinstance(base, Spec) else base)
    budget = config.get(BUDGET_KEY)
    for path, value in sorted(config.items()):
        if path != BUDGET_KEY:
            set_path(raw, path, value, where=f"search {path}")
    spec = spec_from_dict(raw)
    # A rung of successive halving trains a short copy of the config (see distributed/schedulers.py).
    return fidelity_spec(spec, int(budget)) if budget is not None else spec


def default_point(spec: Spec) -> dict[str, Any] | None:
    """The spec's own values as a first trial (the paper's defaults, in the shipped specs),
    or None when one of them falls outside the searched range."""
    raw = spec.model_dump(mode="json")
    point: dict[str, Any] = {}
    for p in spec.search.params:
        value = get_path(raw, p.path)
        if p.type in ("switch_epochs", "temperatures", "split_ratios"):
            items = value[:-1] if p.type == "split_ratios" else value
            for i, v in enumerate(items):
                if p.type != "switch_epochs" and not p.low <= v <= p.high:
                    return None
                point[f"{p.path}[{i}]"] = v
        elif p.type == "categorical":
            if value not in p.choices:
                return None
            point[p.path] = value
        else:
            if not p.low <= value <= p.high:
                return None
            point[p.path] = value
    return point


def sample_configs(spec: Spec, n: int, *, seed: int | None = None) -> list[dict[str, Any]]:
    """Draw ``n`` configs from the compiled space (for ``--dry-run``), constants included."""
    define = compile_space(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.search.seed if seed is None else seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = define(trial) or {}
        config = {**trial.params, **constants}
        resolve_config(spec, config)  # every sample must give a valid spec
        out.append(config)
        study.tell(trial, 0.0)
    return out


def describe_space(spec: Spec) -> list[str]:
    """One human-readable line per searched parameter."""
    lines = []
    for p in spec.search.params:
        if p.type == "categorical":
            lines.append(f"{p.path}: one of {p.choices}")
        elif p.type == "switch_epochs":
            lines.append(f"{p.path}: {spec.ed.grades - 1} ordered epochs in (0, {spec.optim.epochs}), "
                         f"each grade >= {p.min_grade_epochs} epochs")
        elif p.type == "split_ratios":
            lines.append(f"{p.path}: {spec.ed.grades} ratios in [{p.low}, {p.high}] summing to 1")
        elif p.type == "temperatures":
            lines.append(f"{p.path}: {spec.ed.grades} temperatures in [{p.low}, {p.high}]{' (log)' if p.log else ''}")
        else:
            lines.append(f"{p.path}: {p.type} in [{p.low}, {p.high}]{' (log)' if p.log else ''}")
    return lines

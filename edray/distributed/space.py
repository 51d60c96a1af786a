"""The spec's ``search`` section compiled to an Optuna define-by-run function.

Constraints of ED live inside the space rather than in rejection: switch epochs are
drawn in order with a minimum grade length, split ratios are drawn within bounds so
that the last one (the remainder) is in bounds too. The checks and
:func:`~edray.search_space.resolve_config` (a trial's flat config written into the base
spec) live in :mod:`edray.search_space`, below this module and :mod:`edray.preflight`;
``resolve_config`` is re-exported here for the sweep and its trials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from edray.search_space import check_space, resolve_config, search_section, switch_bounds
from edray.spec import Spec, get_path

__all__ = ["compile_space", "default_point", "describe_space", "resolve_config", "sample_configs"]

DefineByRun = Callable[[optuna.Trial], dict[str, Any] | None]


def compile_space(spec: Spec) -> DefineByRun:
    """The define-by-run function: draws every searched value, returns derived constants.

    Raises:
        EdrayError: a path that is not a spec field, or bounds that admit no config.
    """
    check_space(spec)
    return _DefineByRun(spec)


class _DefineByRun:
    """The compiled space as a picklable callable: Tune checkpoints its searcher, and
    with it this function, so that a sweep can resume."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        spec = self.spec
        constants: dict[str, Any] = {}
        for p in search_section(spec).params:
            if p.type == "int":
                low, high = p.bounds()
                trial.suggest_int(p.path, int(low), int(high), step=int(p.step or 1), log=p.log)
            elif p.type == "float":
                trial.suggest_float(p.path, *p.bounds(), log=p.log, step=p.step)
            elif p.type == "categorical":
                trial.suggest_categorical(p.path, p.options())
            elif p.type == "switch_epochs":
                grades, epochs, min_len = switch_bounds(spec, p)
                prev = 0
                for i in range(grades - 1):
                    prev = trial.suggest_int(f"{p.path}[{i}]", prev + min_len, epochs - (grades - 1 - i) * min_len)
            elif p.type == "temperatures":
                for g in range(spec.ed.grades):
                    trial.suggest_float(f"{p.path}[{g}]", *p.bounds(), log=p.log)
            elif p.type == "split_ratios":
                g, used = spec.ed.grades, 0.0
                low, high = p.bounds()
                for k in range(g - 1):
                    left = g - 1 - k  # ratios still to place after this one
                    lo = max(low, 1.0 - used - high * left)
                    hi = min(high, 1.0 - used - low * left)
                    used += trial.suggest_float(f"{p.path}[{k}]", lo, max(lo, hi))
                constants[f"{p.path}[{g - 1}]"] = round(1.0 - used, 10)
        return constants


def default_point(spec: Spec) -> dict[str, Any] | None:
    """The spec's own values as a first trial (the paper's defaults, in the shipped specs),
    or None when one of them falls outside the searched range."""
    raw = spec.model_dump(mode="json")
    point: dict[str, Any] = {}
    for p in search_section(spec).params:
        value = get_path(raw, p.path)
        if p.type in ("switch_epochs", "temperatures", "split_ratios"):
            items = value[:-1] if p.type == "split_ratios" else value
            for i, v in enumerate(items):
                if p.type != "switch_epochs" and not p.bounds()[0] <= v <= p.bounds()[1]:
                    return None
                point[f"{p.path}[{i}]"] = v
        elif p.type == "categorical":
            if value not in p.options():
                return None
            point[p.path] = value
        else:
            low, high = p.bounds()
            if not low <= value <= high:
                return None
            point[p.path] = value
    return point


def sample_configs(spec: Spec, n: int, *, seed: int | None = None) -> list[dict[str, Any]]:
    """Draw ``n`` configs from the compiled space (for ``--dry-run``), constants included."""
    define = compile_space(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = search_section(spec).seed if seed is None else seed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
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
    for p in search_section(spec).params:
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

"""The sweep's figures: optimisation history, parameter importance, parallel coordinates,
and learning curves per grade.

The trials are rebuilt as an in-memory Optuna study (``optuna.trial.create_trial``) so
that Optuna's own importance and parallel-coordinate plots apply, whatever storage the
sweep used. Learning curves are drawn one panel per grade: accuracy over all classes
means something different in grade 1 (a third of them seen) than in grade 3, so the
grades are not mixed on one axis. A figure that cannot be drawn (one trial, nothing
varied) becomes a placeholder saying why: a report never fails for a plot.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from edray.atomic import atomic_path
from edray.names import METRIC
from edray.spec import SearchParam
from edray.tracking.values import finite
from edray.trial_status import TrialStatus

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "TOP_CURVES", "build_study", "preload", "render_figures"]

log = logging.getLogger(__name__)

FIGURES = ("optimization_history", "param_importances", "parallel_coordinates", "learning_curves")
TOP_CURVES = 5  # trials the learning curves draw
_INDEXED = re.compile(r"^(?P<path>.+)\[(?P<i>\d+)\]$")
_STATES: dict[str, TrialState] = {TrialStatus.COMPLETED: TrialState.COMPLETE, TrialStatus.PRUNED: TrialState.PRUNED,
                                  TrialStatus.ERRORED: TrialState.FAIL}  # rows hold the values
_OWN = ("optimization_history", "learning_curves")  # drawn here, not by Optuna
_COLORS = {TrialStatus.COMPLETED: "tab:blue", TrialStatus.PRUNED: "tab:orange", TrialStatus.ERRORED: "tab:red"}


def render_figures(results: list[dict], history: dict[str, list[dict]], space: list[SearchParam], out_dir: Path,
                   *, metric: str = METRIC) -> dict[str, Path]:
    """Draw the four figures of a sweep as PNGs in ``out_dir`` and return ``{name: path}``.

    Args:
        results: one dict per trial: ``trial_id``, ``status`` (completed / pruned / errored),
            ``config`` (param path -> value) and ``metric`` (its best or last value).
        history: trial id -> per-epoch dicts (``epoch``, ``grade``, ``val_acc``, ...).
        space: the searched params (``spec.search.params``), for Optuna's distributions.
        metric: the value that ranks trials (higher is better).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    # Optuna's plots assume its ggplot style (their colour maps fade to white) and some set
    # it globally: each figure gets its style in a context, and the caller's settings come
    # back afterwards.
    with _quiet_optuna(), plt.rc_context():
        study = build_study(results, space, metric=metric, history=history)
        drawers: dict[str, Callable[[], Any]] = {
            "optimization_history": lambda: _history_figure(plt, results, metric),
            "param_importances": lambda: _importance_figure(plt, study),
            "parallel_coordinates": lambda: _parallel_figure(plt, study, metric),
            "learning_curves": lambda: _curves_figure(plt, results, history, metric),
        }
        paths = {}
        for name, draw in drawers.items():
            with plt.style.context("default" if name in _OWN else "ggplot"):
                try:
                    fig = draw()
                except Exception as err:  # a figure never fails the sweep
                    log.warning("figure %s: %s", name, err)
                    fig = _placeholder(plt, name, f"could not draw: {err}")
                paths[name] = _save(plt, fig, out_dir / f"{name}.png")
    return paths


# ---------------------------------------------------------------------- the Optuna study


def build_study(results: list[dict], space: list[SearchParam], *, metric: str = METRIC,
                history: dict[str, list[dict]] | None = None) -> optuna.Study:
    """The trials of ``results`` as an in-memory Optuna study (maximising ``metric``).

    Completed trials with a value are COMPLETE, pruned ones PRUNED (with their per-epoch
    values as intermediate values), the rest FAIL. Distributions come from ``space``,
    widened to every value seen so that no trial is refused.
    """
    history = history or {}
    configs = [{str(k): v for k, v in (r.get("config") or {}).items()} for r in results]
    dists = _distributions(configs, space)
    study = optuna.create_study(direction="maximize")
    for row, config in zip(results, configs):
        value = finite(row.get(metric))
        state = _STATES.get(str(row.get("status")), TrialState.FAIL)
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        params = {k: _coerce(v, dists[k]) for k, v in config.items() if k in dists}
        steps = {}
        for rec in history.get(str(row.get("trial_id")), []):
            epoch, val = finite(rec.get("epoch")), finite(rec.get(metric))
            if epoch is not None and val is not None:
                steps[int(epoch)] = val
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None, params=params,
            distributions={k: dists[k] for k in params}, intermediate_values=steps,
            user_attrs={"trial_id": str(row.get("trial_id"))},
        ))
    return study


def _distributions(configs: list[dict], space: list[SearchParam]) -> dict[str, BaseDistribution]:
    by_path = {p.path: p for p in space}
    seen: dict[str, list] = {}
    for config in configs:
        for key, value in config.items():
            if value is not None:
                seen.setdefault(key, []).append(value)
    out: dict[str, BaseDistribution] = {}
    for key, values in seen.items():
        match = _INDEXED.match(key)
        param = by_path.get(key) or (by_path.get(match["path"]) if match else None)
        out[key] = _distribution(param, values)
    return out


def _distribution(param: SearchParam | None, values: list) -> BaseDistribution:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    kind = param.type if param is not None else None
    if kind == "categorical" or not numeric:
        choices = list(param.options()) if param is not None and kind == "categorical" else []
        choices = [_choice(c) for c in choices]
        for v in map(_choice, values):
            if v not in choices:
                choices.append(v)
        return CategoricalDistribution(choices)
    lo, hi = min(values), max(values)
    if kind == "switch_epochs":
        return IntDistribution(1, max(1, int(hi)))
    if kind == "int" or (kind is None and all(isinstance(v, int) for v in values)):
        step = int(param.step or 1) if param is not None else 1
        low = int(min(param.low, lo)) if param is not None else int(lo)
        high = int(max(param.high, hi)) if param is not None else int(hi)
        log_scale = bool(param and param.log and low > 0)
        if log_scale or (high - low) % step:
            step = 1  # Optuna allows no step on a log scale; widened bounds may be off the grid
        return IntDistribution(low, high, log=log_scale, step=step)
    f_low = float(min(param.low, lo)) if param is not None and param.low is not None else float(lo)
    f_high = float(max(param.high, hi)) if param is not None and param.high is not None else float(hi)
    f_log = bool(param and param.log and f_low > 0 and kind in ("float", "temperatures"))
    f_step = param.step if param is not None and kind == "float" and not f_log else None
    if f_step is not None and not _on_grid(f_low, f_high, f_step):
        f_step = None
    return FloatDistribution(f_low, f_high, log=f_log, step=f_step)


def _on_grid(low: float, high: float, step: float) -> bool:
    n = (high - low) / step
    return abs(n - round(n)) < 1e-8


def _choice(value: Any) -> Any:
    """Optuna choices must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _coerce(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return int(round(value))
    if isinstance(dist, FloatDistribution):
        value = float(value)
        if dist.step is not None:  # snap onto the grid: a float written back may be 1e-12 off
            value = dist.low + round((value - dist.low) / dist.step) * dist.step
        return min(max(value, dist.low), dist.high)
    return _choice(value)


# ---------------------------------------------------------------------- the figures


def _history_figure(plt, results: list[dict], metric: str):
    """Every trial's value in order, by status, with the best-so-far line.

    Drawn here rather than by Optuna, which shows completed trials only: pruned trials
    are part of the story of a sweep.
    """
    points = [(i, finite(r.get(metric)), str(r.get("status"))) for i, r in enumerate(results)]
    if not any(v is not None for _, v, _ in points):
        return _placeholder(plt, "optimization_history", f"no trial reported {metric}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for status, color in _COLORS.items():
        xs = [i for i, v, s in points if s == status and v is not None]
        ys = [v for _, v, s in points if s == status and v is not None]
        if xs:
            ax.scatter(xs, ys, c=color, label=f"{status.value} ({len(xs)})", zorder=3,
                       marker="o" if status is TrialStatus.COMPLETED else "x")
    best, xs, ys = -math.inf, [], []
    for i, v, s in points:
        if s == TrialStatus.COMPLETED and v is not None:
            best = max(best, v)
        if best > -math.inf:
            xs.append(i)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best completed", zorder=2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in order of completion)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


# Importance from a handful of points is noise drawn as bars: below this, the report says so.
MIN_IMPORTANCE_TRIALS = 5


def too_few_for_importance(completed: int) -> str:
    return (f"too few completed trials for parameter importance: {completed}, "
            f"needs at least {MIN_IMPORTANCE_TRIALS}")


def _importance_figure(plt, study: optuna.Study):
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return _placeholder(plt, "param_importances", too_few_for_importance(len(complete)))
    varying = _varying(complete)
    if not varying:
        return _placeholder(plt, "param_importances", "no searched parameter varied across the completed trials")
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    try:
        ax = plot_param_importances(study, params=varying)
    except Exception:  # the default evaluator wants more trials than a small sweep has
        ax = plot_param_importances(study, params=varying, evaluator=FanovaImportanceEvaluator(seed=0))
    return ax.figure


def _varying(trials: list) -> list[str]:
    """Params that take more than one value across ``trials``, in a stable order."""
    names = sorted({k for t in trials for k in t.params})
    return [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]


def _parallel_figure(plt, study: optuna.Study, metric: str):
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete or not any(t.params for t in complete):
        return _placeholder(plt, "parallel_coordinates", "parallel coordinates need a completed trial with params")
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    shown = _varying(complete) or sorted({k for t in complete for k in t.params})
    ax = plot_parallel_coordinate(study, params=shown, target_name=metric)
    figure = cast("Figure", ax.figure)  # the Axes of a whole figure, not of a SubFigure
    figure.set_size_inches(max(7.0, 1.4 * (2 + len(shown))), 5)
    ax.set_title("Parallel coordinates (completed trials, searched values that varied)")
    return figure


def _curves_figure(plt, results: list[dict], history: dict[str, list[dict]], metric: str):
    """``metric`` per epoch of the top trials, one panel per grade, dashed lines at switches."""
    ranked = sorted((r for r in results if finite(r.get(metric)) is not None and history.get(str(r.get("trial_id")))),
                    key=lambda r: finite(r.get(metric)) or 0.0, reverse=True)  # all finite (filtered)[:TOP_CURVES]
    curves = {str(r["trial_id"]): _epochs(history[str(r["trial_id"])], metric) for r in ranked}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return _placeholder(plt, "learning_curves", f"no per-epoch {metric} to draw")
    grades = sorted({g for recs in curves.values() for _, g, _, _ in recs}, key=lambda g: (g is None, g or 0))
    fig, axes = plt.subplots(1, len(grades), figsize=(4.5 * len(grades), 4), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (trial_id, recs), color in zip(curves.items(), colors * 2):
        final = next(finite(r.get(metric)) for r in ranked if str(r["trial_id"]) == trial_id)
        label: str | None = f"{trial_id} ({final:.3f})"
        for ax, grade in zip(axes[0], grades):
            part = [(e, v, s) for e, g, v, s in recs if g == grade]
            if not part:
                continue
            ax.plot([e for e, _, _ in part], [v for _, v, _ in part], color=color, marker=".", label=label)
            label = None  # one legend entry per trial
            seen = [(e, s) for e, _, s in part if s is not None]
            if seen and grade != grades[-1]:
                ax.plot([e for e, _ in seen], [s for _, s in seen], color=color, linestyle=":", linewidth=1)
            if grade != grades[0]:
                ax.axvline(part[0][0] - 0.5, color=color, linestyle="--", linewidth=0.8, alpha=0.7)
    from matplotlib.ticker import MaxNLocator

    for ax, grade in zip(axes[0], grades):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"grade {grade}" if grade is not None else "all epochs")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (dotted: on seen classes)")
    fig.legend(loc="lower center", ncol=min(len(curves), TOP_CURVES), fontsize="small", frameon=False)
    fig.suptitle(f"Learning curves of the top {len(curves)} trials (dashed: grade switch)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def _epochs(records: list[dict], metric: str) -> list[tuple[int, Any, float, float | None]]:
    """(epoch, grade, value, value on seen classes) per epoch, in order, last report of an epoch kept."""
    by_epoch: dict[int, tuple] = {}
    for rec in records:
        epoch, value = finite(rec.get("epoch")), finite(rec.get(metric))
        if epoch is None or value is None:
            continue
        grade = finite(rec.get("grade"))
        by_epoch[int(epoch)] = (int(epoch), int(grade) if grade is not None else None, value,
                                finite(rec.get(f"{metric}_seen")))
    return [by_epoch[e] for e in sorted(by_epoch)]


def _placeholder(plt, name: str, reason: str):
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.6, name.replace("_", " "), ha="center", va="center", fontsize=13, weight="bold")
    ax.text(0.5, 0.35, reason, ha="center", va="center", fontsize=10, wrap=True)
    fig.edray_placeholder = reason  # written into the PNG's metadata by _save
    return fig


def _save(plt, fig, path: Path) -> Path:
    """Write atomically: a reader never sees half a PNG."""
    try:
        reason = getattr(fig, "edray_placeholder", None)
        metadata = {"Title": path.stem, "Description": f"placeholder: {reason}" if reason else "edray sweep figure"}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata=metadata)
    finally:
        plt.close(fig)
    return path


def preload() -> None:
    """Import what :func:`render_figures` needs (pyplot, Optuna's plots and importance,
    which pull in scikit-learn and SciPy: ~1.3 s) while the sweep's trials run, so the
    figures at its end do not wait for imports. Safe from a background thread."""
    _pyplot()
    import optuna.importance  # noqa: F401
    import optuna.visualization.matplotlib  # noqa: F401


def _pyplot():
    """pyplot on the Agg backend, unless the caller (a notebook) already chose one."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every study it creates and warns that its matplotlib plots are
    experimental: noise in a sweep's output. The caller's settings come back after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", module="optuna")
            yield
    finally:
        optuna.logging.set_verbosity(level)

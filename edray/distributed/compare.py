"""``edray sweep SPEC --compare kd,mtkd,ce``: ED against baselines tuned the same way.

A comparison with untuned baselines flatters whoever was tuned. Here every method gets
its own sweep (its own Optuna study) with the same number of trials, the same early
stopping and the same final evaluation; each searches its own knobs (KD and MTKD: the
temperature, alpha and lr; CE: lr), within ED's bounds for the same value where ED
searches it. Each method's best config is then trained on the same seeds and scored on
the test split, so the differences to ED are paired by seed.

The sweeps share the spec's MLflow experiment: one parent run per method (param
``method``), one child per trial (tag ``edray.method``). The table goes on ED's parent
run (``compare.json``, ``compare.<method>.*`` metrics) and into ``edray report``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from edray.errors import EdrayError
from edray.layout import Layout
from edray.names import BASELINES
from edray.search_space import search_section
from edray.spec import Spec, spec_from_dict
from edray.stats import paired_difference

__all__ = [
    "BASELINES", "CompareRow", "compare_plan", "compare_table", "format_compare", "method_spec", "parse_methods",
    "run_compare",
]

_DEFAULT_BOUNDS = {"temperature": (1.0, 8.0, True), "alpha": (0.1, 0.9, False)}


@dataclass(frozen=True)
class CompareRow:
    """One method's line of the comparison table."""

    method: str
    best_val_acc: float | None
    test_acc_mean: float | None
    test_acc_std: float | None
    test_accs: list[float]
    diff_to_ed: float | None  # paired over seeds: this method's test accuracy - ED's
    diff_low: float | None  # 95 % interval
    diff_high: float | None
    epochs: int  # epochs trained by the sweep (not counting the final evaluation)
    trials: int
    parent_run_id: str


def parse_methods(text: str | Sequence[str], where: str = "--compare") -> list[str]:
    """``kd,mtkd,ce`` -> ["kd", "mtkd", "ce"]; ED is always the reference, never listed."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if str(m).strip()]
    for m in items:
        if m not in BASELINES:
            raise EdrayError(where, f"unknown method {m!r}", f"use some of {', '.join(BASELINES)} (ED is always run)")
    if len(set(items)) != len(items) or not items:
        raise EdrayError(where, f"needs distinct methods, got {items}", "e.g. --compare kd,mtkd,ce")
    return items


def _bounds(spec: Spec, path: str, fallback: tuple[float, float, bool]) -> dict[str, Any]:
    """ED's own search range for a value, so that both sides search the same range."""
    for p in search_section(spec).params:
        if p.path == path or (p.type == "temperatures" and path.startswith(p.path)):
            return {"low": p.low, "high": p.high, "log": p.log}
    low, high, log = fallback
    return {"low": low, "high": high, "log": log}


def method_spec(spec: Spec, method: str) -> Spec:
    """The spec of ``method``'s sweep: the same everything, searching that method's knobs.

    KD and MTKD use the last grade's temperature (the full-class one) and ``ed.alpha``.

    Raises:
        EdrayError: the method cannot run with these teachers (KD needs shared ones).
    """
    raw = spec.model_dump(mode="json")
    last_t = f"ed.temperatures[{spec.ed.grades - 1}]"
    lr = spec.optim.lr
    lr_range = _bounds(spec, "optim.lr", (lr / 4, lr * 4, True))
    params = [{"path": "optim.lr", "type": "float", **lr_range}]
    if method != "ce":
        params = [{"path": last_t, "type": "float", **_bounds(spec, "ed.temperatures", _DEFAULT_BOUNDS["temperature"])},
                  {"path": "ed.alpha", "type": "float", **_bounds(spec, "ed.alpha", _DEFAULT_BOUNDS["alpha"])},
                  *params]
    raw["method"] = method
    raw["name"] = f"{spec.name}-{method}"
    raw["tracking"]["experiment"] = spec.tracking.experiment or spec.name
    raw["search"]["params"] = params
    raw["search"]["points_to_evaluate"] = None  # ED's points name ED's values
    raw["search"]["compare"] = None
    try:
        return spec_from_dict(raw)
    except EdrayError as err:
        raise EdrayError("--compare", f"{method} cannot run with this spec ({err.problem})",
                         f"leave {method} out of --compare, or change the teachers") from None


def compare_plan(specs: dict[str, Spec], num_samples: int | None, *, final_eval: bool = True) -> tuple[list[str], int]:
    """One line per method (trials, epochs) and the total epochs, final evaluation included."""
    from edray.distributed.search_setup import planned_epochs

    lines, total = [], 0
    for method, s in specs.items():
        n = num_samples or search_section(s).num_samples
        trials, epochs = planned_epochs(s, n)
        seeds = search_section(s).final_eval.seeds if final_eval else 0
        lines.append(f"  {method:<5} {trials} trials, {epochs} epochs + final evaluation {seeds} seeds x "
                     f"{s.optim.epochs} epochs")
        total += epochs + seeds * s.optim.epochs
    return lines, total


def compare_table(results: dict[str, Any]) -> list[CompareRow]:
    """Rows of the table from each method's ``SweepResult`` (ED first)."""
    ed = results["ed"].final_test_accs
    rows = []
    for method, r in results.items():
        accs = list(r.final_test_accs)
        diff = paired_difference(accs, ed) if method != "ed" and accs and len(accs) == len(ed) else None
        rows.append(CompareRow(
            method=method, best_val_acc=r.best_val_acc, test_acc_mean=r.final_test_acc_mean,
            test_acc_std=r.final_test_acc_std, test_accs=accs,
            diff_to_ed=diff.mean if diff else None, diff_low=diff.low if diff else None,
            diff_high=diff.high if diff else None, epochs=r.epochs_trained, trials=r.trials,
            parent_run_id=r.parent_run_id,
        ))
    return rows


def format_compare(rows: list[CompareRow]) -> str:
    """The table as text (what ``edray sweep --compare`` prints)."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    out = [f"{'method':<6} {'best val':>9} {'test mean ± std':>18} {'paired diff to ED [95 % CI]':>32} {'epochs':>7}"]
    for r in rows:
        test = "-" if r.test_acc_mean is None else f"{r.test_acc_mean:.4f} ± {r.test_acc_std or 0:.4f}"
        if r.method == "ed":
            diff = "(reference)"
        elif r.diff_to_ed is None:
            diff = "-"
        elif r.diff_low is None:
            diff = f"{r.diff_to_ed:+.4f}"
        else:
            diff = f"{r.diff_to_ed:+.4f} [{r.diff_low:+.4f}, {r.diff_high:+.4f}]"
        out.append(f"{r.method:<6} {num(r.best_val_acc):>9} {test:>18} {diff:>32} {r.epochs:>7}")
    seeds = max((len(r.test_accs) for r in rows), default=0)
    out.append(f"(test accuracy of each method's best config over the same {seeds} seeds)")
    return "\n".join(out)


def run_compare(spec: Spec, layout: Layout, options, methods: Sequence[str], *,
                log: Callable[[str], None] = print) -> tuple[Any, list[CompareRow]]:
    """ED's sweep, then one per baseline; returns ED's result and the table.

    Every method's spec is built (and checked) before the first trial: a method that
    cannot run fails the command at once, not after ED's sweep.
    """
    from edray.distributed.sweep import run_sweep
    from edray.distributed.sweep_state import has_state

    specs = {"ed": spec, **{m: method_spec(spec, m) for m in methods}}
    lines, total = compare_plan(specs, options.num_samples, final_eval=options.final_eval)
    log(f"--compare: {len(specs)} sweeps of {options.num_samples or search_section(spec).num_samples} configs each, "
        f"{total} epochs in all:")
    for line in lines:
        log(line)
    if not options.final_eval or search_section(spec).final_eval.seeds < 1:
        log("warning: no final evaluation, so no test accuracy and no paired differences")
    results = {}
    for method, s in specs.items():
        log(f"--compare: sweep of {method}")
        # A resumed comparison resumes each method's sweep; a sweep that never started starts.
        opts = options
        if options.resume and not has_state(layout, s.name):
            opts = replace(options, resume=False)
        results[method] = run_sweep(s, layout, opts, log=log)
    rows = compare_table(results)
    _log_table(results["ed"], rows)
    return results["ed"], rows


def _log_table(ed_result, rows: list[CompareRow]) -> None:
    """The table on ED's parent run: ``compare.json`` and one metric per number."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from edray.tracking import tags

    client = MlflowClient(tracking_uri=ed_result.tracking_uri)
    run_id = ed_result.parent_run_id
    client.log_text(run_id, json.dumps([asdict(r) for r in rows], indent=2), "compare.json")
    values = {}
    for r in rows:
        for key in ("best_val_acc", "test_acc_mean", "test_acc_std", "diff_to_ed", "diff_low", "diff_high", "epochs"):
            value = getattr(r, key)
            if value is not None:
                values[f"compare.{r.method}.{key}"] = float(value)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    client.set_tag(run_id, tags.COMPARE, ",".join(r.method for r in rows))

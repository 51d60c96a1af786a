"""One self-contained HTML page for a sweep: inline CSS, figures as ``data:`` URIs.

Nothing on the page is fetched: it opens from a file, an e-mail attachment or an
air-gapped cluster alike. Every value that came from MLflow is escaped (run names and
params are user text).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from edray.names import BASELINES
from edray.report.source import MethodResult, SweepRecord, TrialRow

__all__ = ["FIGURE_TEXT", "render_html"]

# Section id -> (title, what the figure says and why it is drawn that way).
FIGURE_TEXT = {
    "optimization_history": (
        "Optimisation history",
        "Every trial's final validation accuracy in the order trials finished, by status, with the best "
        "completed value so far.",
    ),
    "param_importances": (
        "Parameter importance",
        "How much of the variation in validation accuracy each searched value explains (completed trials; "
        "only values that varied).",
    ),
    "parallel_coordinates": (
        "Parallel coordinates",
        "One line per completed trial through its searched values, coloured by validation accuracy.",
    ),
    "learning_curves": (
        "Learning curves per grade",
        "Validation accuracy per epoch of the top trials, one panel per grade: accuracy over all classes means "
        "something different while only some groups have been taught. Dotted: accuracy on the classes seen so far.",
    ),
}
_INDEXED = re.compile(r"^(?P<path>.+)\[(?P<i>\d+)\]$")

_CSS = """
:root { --ink: #1d2733; --muted: #5b6878; --line: #d9dee5; --soft: #f4f6f9; --accent: #1f5fa8; --good: #1b7f3b; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p.lead, p.note, figcaption, .meta { color: var(--muted); }
p.note { margin: 4px 0 12px; }
.meta { font-size: 13px; margin: 0 0 18px; }
.meta code { font-size: 12px; }
nav { font-size: 14px; margin: 10px 0 6px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin: 16px 0; }
.card { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .s { font-size: 12px; color: var(--muted); }
figure { margin: 8px 0 0; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid var(--line);
             border-radius: 6px; background: #fff; }
figcaption { font-size: 13px; margin-top: 6px; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; text-align: left; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--soft); font-weight: 600; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
td.num, th.num { text-align: right; }
tr.best td { background: #eaf6ee; font-weight: 600; }
tr:last-child td { border-bottom: none; }
.status-completed { color: var(--good); }
.status-pruned { color: #b26b00; }
.status-errored { color: #b3261e; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px;
      font-size: 12.5px; line-height: 1.45; overflow-x: auto; margin: 8px 0 0; }
pre.yaml { max-height: 460px; overflow-y: auto; }
.narrow { display: inline-block; min-width: 360px; max-width: 100%; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); border-top: 1px solid var(--line); padding-top: 10px; }
"""


def render_html(record: SweepRecord, figures: dict[str, bytes], *, generated: datetime | None = None,
                version: str = "") -> str:
    """The report page of ``record``, with ``figures`` (name -> PNG bytes) inlined."""
    generated = generated or datetime.now(timezone.utc)
    title = f"edray report: {record.experiment}"
    sections = [
        ("summary", "Summary", _summary(record)),
        *((name, FIGURE_TEXT[name][0], _figure(name, figures.get(name), record)) for name in FIGURE_TEXT),
        ("baselines", "ED vs baselines", _baselines(record)),
        ("best-config", "Best config", _best(record)),
        ("results", "Results", _results(record)),
    ]
    nav = " ".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "\n".join(f'<section id="{sid}">\n<h2>{_e(name)}</h2>\n{content}\n</section>'
                     for sid, name, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="edray {_e(version)}">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
<p class="meta">{_meta(record)}</p>
<nav>{nav}</nav>
{body}
<footer>Written by edray {_e(version)} on {_e(_when(generated))} from the MLflow store
{_e(record.tracking_uri)}. Every number is read back from MLflow; the figures are drawn by the same code as
those on the sweep's parent run (artifacts <code>figures/*.png</code>).</footer>
</main>
</body>
</html>
"""


# ---------------------------------------------------------------------- sections


def _meta(r: SweepRecord) -> str:
    spec = r.spec or {}
    dataset = (spec.get("dataset") or {}).get("name", "?")
    student = (spec.get("student") or {}).get("arch", "?")
    grades = (spec.get("ed") or {}).get("grades", "?")
    epochs = (spec.get("optim") or {}).get("epochs", "?")
    parts = [
        f"sweep <b>{_e(r.run_name)}</b> (run <code>{_e(r.run_id)}</code>, {_e(r.status.lower())})",
        f"method <b>{_e(r.method)}</b> on <b>{_e(dataset)}</b>, student {_e(student)}, {_e(grades)} grades, "
        f"{_e(epochs)} epochs",
        f"started {_e(_when(r.start))}" + (f", took {_e(_duration(r.start, r.end))}" if r.end else ""),
    ]
    if r.other_sweeps:
        names = ", ".join(r.other_sweeps[:5]) + (" ..." if len(r.other_sweeps) > 5 else "")
        parts.append(f"other finished sweeps in this experiment: {_e(names)}")
    return "<br>".join(parts)


def _summary(r: SweepRecord) -> str:
    s = r.summary
    counts = {status: sum(t.status == status for t in r.trials) for status in ("completed", "pruned", "errored")}
    best = _best_trial(r.trials)
    best_val = s.get("best_val_acc", best.metric if best else None)
    cards = [
        ("trials", str(len(r.trials)), ", ".join(f"{n} {k}" for k, n in counts.items())),
        (f"best {r.metric}", _num(best_val), f"trial {best.trial_id}" if best else "no completed trial"),
        ("final test accuracy", _pm(s.get("final_test_acc_mean"), s.get("final_test_acc_std")),
         "best config, several seeds" if s.get("final_test_acc_mean") is not None else "final evaluation not run"),
        ("epochs trained", _int(s.get("epochs_trained")), "over all trials"),
        ("wall time", _seconds(s.get("wall_s")), "whole sweep"),
    ]
    html_cards = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
                         f'<div class="s">{_e(sub)}</div></div>' for k, v, sub in cards)
    return (f'<p class="note">Trials are ranked by {_e(r.metric)}, the accuracy on the validation split carved from '
            f"the training set; the test split is used only by the final evaluation.</p>"
            f'<div class="cards">{html_cards}</div>')


def _figure(name: str, png: bytes | None, record: SweepRecord | None = None) -> str:
    title, caption = FIGURE_TEXT[name]
    if name == "param_importances" and record is not None:
        from edray.tracking.figures import MIN_IMPORTANCE_TRIALS, too_few_for_importance

        completed = sum(t.status == "completed" for t in record.trials)
        if completed < MIN_IMPORTANCE_TRIALS:
            text = too_few_for_importance(completed)
            return f'<p class="note">{_e(text[0].upper() + text[1:])}: not drawn.</p>'
    if not png:
        return f'<p class="note">{_e(title)}: not drawn.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _comparison(r: SweepRecord) -> str:
    """The table of ``edray sweep --compare``: every method swept alike, tested on the same seeds."""
    rows = []
    for c in r.comparison:
        method = c.get("method", "?")
        if method == "ed":
            diff = "(reference)"
        elif c.get("diff_to_ed") is None:
            diff = "-"
        elif c.get("diff_low") is None:
            diff = f"{c['diff_to_ed']:+.4f}"
        else:
            diff = f"{c['diff_to_ed']:+.4f} [{c['diff_low']:+.4f}, {c['diff_high']:+.4f}]"
        rows.append(f'<tr{" class=best" if method == "ed" else ""}><td>{_e(method)}</td>'
                    f'<td class="num">{_e(_num(c.get("best_val_acc")))}</td>'
                    f'<td class="num">{_e(_pm(c.get("test_acc_mean"), c.get("test_acc_std")))}</td>'
                    f'<td class="num">{_e(diff)}</td><td class="num">{_e(_int(c.get("epochs")))}</td>'
                    f'<td class="num">{_e(_int(c.get("trials")))}</td></tr>')
    seeds = max((len(c.get("test_accs") or []) for c in r.comparison), default=0)
    return ('<p class="note">Each method swept with the same number of trials and the same early stopping, '
            f"searching its own knobs; each best config tested on the same {seeds} seeds. The difference to ED is "
            "paired by seed, with its 95 % interval.</p>"
            '<div class="scroll"><table><thead><tr><th>method</th><th class="num">best val_acc</th>'
            '<th class="num">test accuracy (mean ± std)</th><th class="num">test - ED, paired [95 % CI]</th>'
            '<th class="num">epochs</th><th class="num">trials</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _baselines(r: SweepRecord) -> str:
    if r.comparison:
        return _comparison(r)
    if not r.baselines:
        missing = ", ".join(m for m in BASELINES if m != r.method)
        return (f'<p class="note">No baseline ({_e(missing)}) was run in experiment <b>{_e(r.experiment)}</b>: '
                f"nothing to compare {_e(r.method)} with. Run one into the same experiment, e.g. "
                f"<code>edray sweep SPEC --set method=kd</code>, and write this report again.</p>")
    rows = "".join(_method_row(m, own=i == 0) for i, m in enumerate(r.methods))
    return ('<p class="note">Best validation accuracy per method in this experiment; test accuracy is the final '
            "evaluation of each method's best config (mean ± std over seeds) where one was run.</p>"
            '<div class="scroll"><table><thead><tr><th>method</th><th class="num">best val_acc</th>'
            '<th class="num">test accuracy</th><th class="num">runs</th><th>best run</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _method_row(m: MethodResult, *, own: bool) -> str:
    name = f"{m.method} (this sweep)" if own else m.method
    return (f'<tr{" class=best" if own else ""}><td>{_e(name)}</td><td class="num">{_e(_num(m.best_val_acc))}</td>'
            f'<td class="num">{_e(_pm(m.test_acc_mean, m.test_acc_std))}</td><td class="num">{m.runs}</td>'
            f"<td>{_e(m.source)}</td></tr>")


def _best(r: SweepRecord) -> str:
    best = _best_trial(r.trials)
    values = ""
    if best is not None:
        grouped = _grouped(best.config)
        rows = "".join(f"<tr><td>{_e(c)}</td><td>{_e(_value(grouped.get(c)))}</td></tr>" for c in _columns(r)
                       if c in grouped)
        values = (f'<p class="note">Searched values of trial <b>{_e(best.trial_id)}</b> ({_e(r.metric)} '
                  f"{_e(_num(best.metric))}):</p>"
                  f'<div class="scroll narrow"><table><thead><tr><th>path</th><th>value</th></tr></thead>'
                  f"<tbody>{rows}</tbody></table></div>")
    if not r.best_yaml.strip():
        return values + '<p class="note">This sweep logged no best config (<code>best.yaml</code>).</p>'
    return (values + '<p class="note">The whole config, a spec for <code>edray train</code> (also written by '
            f'<code>edray best {_e(r.experiment)}</code>):</p><pre class="yaml">{_e(r.best_yaml.rstrip())}</pre>')


def _best_trial(trials: list[TrialRow]) -> TrialRow | None:
    done = [t for t in trials if t.status == "completed" and t.metric is not None]
    return max(done, key=lambda t: t.metric or 0.0) if done else None  # every metric is set (filtered)


def _results(r: SweepRecord) -> str:
    if not r.trials:
        return '<p class="note">This sweep logged no results table.</p>'
    columns = _columns(r)
    ranked = sorted(r.trials, key=lambda t: (t.metric is None, -(t.metric or 0.0)))
    best = _best_trial(r.trials)
    head = ("<tr><th class=num>#</th><th>trial</th><th>status</th>"
            f'<th class="num">{_e(r.metric)}</th><th class="num">epochs</th>'
            + "".join(f"<th>{_breakable(c)}</th>" for c in columns) + "</tr>")
    rows = []
    for rank, t in enumerate(ranked, 1):
        values = _grouped(t.config)
        cells = "".join(f"<td>{_e(_value(values.get(c)))}</td>" for c in columns)
        rows.append(f'<tr{" class=best" if t is best else ""}><td class="num">{rank}</td><td>{_e(t.trial_id)}</td>'
                    f'<td class="status-{_e(t.status)}">{_e(t.status)}</td><td class="num">{_e(_num(t.metric))}</td>'
                    f'<td class="num">{_e(_int(t.epochs))}</td>{cells}</tr>')
    return ('<p class="note">One row per trial, best first; the searched values of each (lists are one value per '
            "grade or switch).</p>"
            f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>')


def _columns(r: SweepRecord) -> list[str]:
    """Searched paths in the search space's order, then any other path a trial carries."""
    seen: list[str] = [p.path for p in r.space]
    for t in r.trials:
        seen.extend(c for c in _grouped(t.config) if c not in seen)
    present = {c for t in r.trials for c in _grouped(t.config)}
    return [c for c in seen if c in present]


def _grouped(config: dict[str, Any]) -> dict[str, Any]:
    """``ed.temperatures[0..2]`` -> one ``ed.temperatures`` list, in index order."""
    out: dict[str, Any] = {}
    indexed: dict[str, dict[int, Any]] = {}
    for key, value in config.items():
        match = _INDEXED.match(str(key))
        if match:
            indexed.setdefault(match["path"], {})[int(match["i"])] = value
        else:
            out[str(key)] = value
    for path, items in indexed.items():
        out[path] = [items[i] for i in sorted(items)]
    return out


# ---------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _breakable(path: str) -> str:
    """A spec path that may wrap after a dot or an underscore (``ed.<wbr>optimizer_<wbr>at_<wbr>switch``)."""
    return "<wbr>".join(_e(part) for part in re.split(r"(?<=[._])", path))


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _int(value: float | None) -> str:
    return "—" if value is None else str(int(value))


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):  # one per grade: three significant digits are enough to compare
        return "[" + ", ".join(f"{v:.3g}" if isinstance(v, float) else _value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    value = float(value)
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "?"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "?"
    return _seconds((end - start).total_seconds())

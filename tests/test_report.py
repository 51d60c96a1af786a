"""``edray report``: the page of a real small sweep, read back from its MLflow store.

One real sweep (3 trials, 8 epochs, the session's trained teachers) runs once per test
session as a subprocess (conftest's ``small_sweep``; ``test_ui`` shares it). The page must carry
every section, inline every figure (the very PNGs logged on the sweep's parent run),
fetch nothing, and render in a real headless Chromium.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from edray.cli import main
from edray.errors import EdrayError
from edray.report import write_report
from edray.tracking import SweepTracker
from tests.helpers import EXPERIMENT

FIGURES = ("optimization_history", "param_importances", "parallel_coordinates", "learning_curves")
SECTIONS = ("summary", *FIGURES, "baselines", "best-config", "results")
CHROMIUM = Path("/usr/bin/chromium")
def sweep_run(client: MlflowClient):
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`edray.kind` = 'sweep'")
    return run


@pytest.fixture(scope="module")
def sweep(small_sweep) -> Path:
    return small_sweep


@pytest.fixture(scope="module")
def client(sweep) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")


@pytest.fixture(scope="module")
def report(sweep, client, tmp_path_factory) -> tuple[Path, str, list[str]]:
    """The page written through the CLI, and the parent's artifact listing before and after."""
    run_id = sweep_run(client).info.run_id
    before = _artifact_paths(client, run_id)
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    assert main(["report", EXPERIMENT, "--workdir", str(sweep), "-o", str(out)]) == 0
    assert _artifact_paths(client, run_id) == before, "writing a report must log nothing"
    return out, out.read_text(encoding="utf-8"), before


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(out)


def _inlined(page: str) -> dict[str, bytes]:
    """Figure section id -> the PNG inlined in it. Parameter importance from fewer than 5
    completed trials is a note, not a figure (this sweep has 3 trials)."""
    out = {}
    for sid in FIGURES:
        section = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
        assert section, f"no section {sid}"
        if sid == "param_importances" and "Too few completed trials for parameter importance" in section.group(1):
            assert "<img" not in section.group(1)
            continue
        match = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section.group(1))
        assert match, f"no inline PNG in {sid}"
        out[sid] = base64.b64decode(match.group(1), validate=True)
    return out


def test_report_has_every_section_and_the_sweeps_numbers(report, client):
    _, page, _ = report
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page and f'href="#{sid}"' in page
    parent = sweep_run(client)
    assert parent.info.run_name in page and parent.info.run_id in page
    results = client.download_artifacts(parent.info.run_id, "results.json", tempfile.mkdtemp())
    import json

    rows = json.loads(Path(results).read_text())
    assert len(rows) == 3
    table = re.search(r'<section id="results">(.*?)</section>', page, re.S).group(1)
    assert table.count("<tr") == 1 + len(rows)  # header + one row per trial
    for row in rows:
        assert row["trial_id"] in table and f"{row['val_acc']:.4f}" in table
    best = max(rows, key=lambda r: r["val_acc"])
    best_row = re.search(r"<tr class=best>(.*?)</tr>", table, re.S).group(1)
    assert best["trial_id"] in best_row  # the best trial is the one marked
    assert f"{parent.data.metrics['best_val_acc']:.4f}" in page
    # No baseline was run in this experiment: the page says so instead of an empty table.
    baselines = re.search(r'<section id="baselines">(.*?)</section>', page, re.S).group(1)
    assert "No baseline" in baselines and "<table" not in baselines


def test_best_config_is_the_sweeps_best_yaml(report, sweep):
    import html

    from edray.tracking.best import best_spec_yaml

    _, page, _ = report
    section = re.search(r'<section id="best-config">(.*?)</section>', page, re.S).group(1)
    shown = html.unescape(re.search(r'<pre class="yaml">(.*?)</pre>', section, re.S).group(1))
    assert shown.strip() == best_spec_yaml(EXPERIMENT, sweep).strip()


def test_figures_are_the_ones_on_the_parent_run(report, client):
    _, page, before = report
    assert [p for p in before if p.startswith("figures/")] == sorted(f"figures/{n}.png" for n in FIGURES)
    figures = client.download_artifacts(sweep_run(client).info.run_id, "figures", tempfile.mkdtemp())
    for name, png in _inlined(page).items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        assert png == (Path(figures) / f"{name}.png").read_bytes(), f"{name} differs from the parent run's"


def test_page_fetches_nothing(report):
    _, page, _ = report
    assert "http://" not in page and "https://" not in page
    for attr, value in re.findall(r'\b(src|href|action|srcset|poster)\s*=\s*"([^"]*)"', page):
        assert value.startswith(("data:image/png;base64,", "#")), f"{attr}={value[:60]}"
    for tag in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "url("):
        assert tag not in page.lower(), tag


@pytest.fixture(scope="module")
def store_copy(sweep, tmp_path_factory) -> str:
    """A copy of the sweep's store that tests may add runs to (a fresh store costs seconds of migrations)."""
    db = tmp_path_factory.mktemp("copy") / "mlflow.db"
    with closing(sqlite3.connect(sweep / "mlflow.db")) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


def test_baselines_are_compared_when_run(sweep, store_copy, tmp_path):
    """A kd sweep logged into (a copy of) the store, as ``edray sweep --set method=kd`` logs it."""
    uri = store_copy
    tracker = SweepTracker(uri, EXPERIMENT, artifact_root=tmp_path / "mlflow-artifacts")
    tracker.start_sweep(run_name="digits-kd", spec_dict={"name": EXPERIMENT, "method": "kd"})
    tracker.trial_run("kd0", params={"optim.lr": 0.05}, resolved_spec={"name": EXPERIMENT, "method": "kd"})
    tracker.log_epoch("kd0", {"val_acc": 0.9123}, epoch=1)
    tracker.end_trial("kd0", "completed")
    tracker.finish_sweep(best_config={"optim.lr": 0.05}, best_spec_yaml="method: kd\n",
                         results=[{"trial_id": "kd0", "status": "completed", "config": {"optim.lr": 0.05},
                                   "val_acc": 0.9123}], figures={},
                         summary={"best_val_acc": 0.9123, "final_test_acc_mean": 0.9012, "final_test_acc_std": 0.0034})
    out = write_report(EXPERIMENT, tmp_path, tmp_path / "r.html", tracking_uri=uri)
    page = out.read_text()
    section = re.search(r'<section id="baselines">(.*?)</section>', page, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S)[1:]
    assert len(rows) == 2
    assert "ed (this sweep)" in rows[0]
    assert ">kd<" in rows[1] and "0.9123" in rows[1] and "0.9012 ± 0.0034" in rows[1] and "digits-kd" in rows[1]
    # The newer kd sweep does not take the ED sweep's place as the subject of the report.
    ed_sweep = sweep_run(MlflowClient(f"sqlite:///{sweep / 'mlflow.db'}"))
    assert "method <b>ed</b>" in page and ed_sweep.info.run_id in page
    # `edray best` picks the same sweep by the same rule: ED's config, not the newer kd sweep's.
    from edray.tracking.best import best_spec_yaml

    assert best_spec_yaml(EXPERIMENT, tmp_path, tracking_uri=uri) == best_spec_yaml(EXPERIMENT, sweep) != "method: kd\n"


def test_unknown_experiment_and_missing_store_are_one_line_errors(sweep, tmp_path, capsys):
    with pytest.raises(EdrayError, match=r"no experiment 'nope'.*digits"):
        write_report("nope", sweep, tmp_path / "r.html")
    with pytest.raises(EdrayError, match=r"mlflow\.db: no MLflow store here.*edray sweep"):
        write_report(EXPERIMENT, tmp_path / "empty", tmp_path / "r.html")
    assert main(["report", "nope", "--workdir", str(sweep), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: EXPERIMENT: no experiment 'nope'") and "digits" in err
    assert not (tmp_path / "r.html").exists()


def test_no_finished_sweep_names_the_sweeps_there_are(store_copy, tmp_path):
    uri = store_copy
    tracker = SweepTracker(uri, "stopped", artifact_root=tmp_path / "mlflow-artifacts")
    tracker.start_sweep(run_name="stopped-1", spec_dict={"name": "stopped", "method": "ed"})
    tracker.finish_sweep(best_config={}, best_spec_yaml="", results=[], figures={}, summary={}, status="KILLED")
    with pytest.raises(EdrayError, match=r"no finished sweep, only: stopped-1 \(killed\).*--resume"):
        write_report("stopped", tmp_path, tmp_path / "r.html", tracking_uri=uri)
    MlflowClient(uri).create_experiment("empty", artifact_location=(tmp_path / "empty").as_uri())
    with pytest.raises(EdrayError, match=r"'empty' has no sweep run"):
        write_report("empty", tmp_path, tmp_path / "r.html", tracking_uri=uri)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium (Debian: apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    import numpy as np
    from PIL import Image

    page, _, _ = report
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        rgb = np.asarray(im.convert("RGB"))
    inked = float((rgb.min(axis=2) < 235).mean())
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    # Text, tables and four plots: far from a blank (or error) page.
    assert inked > 0.08, f"only {inked:.1%} of the page is drawn on"
    assert colours > 500, f"only {colours} colours: the figures did not render"


def test_report_reads_only_the_learning_curves_runs_and_histories(tmp_path):
    """A sweep's report reads the child runs and histories of the trials its curves draw, not
    every trial's (both grew with the trials over HTTP); a results.json without epochs (an older
    sweep) is read in full, so its table still shows each trial's epochs."""
    from edray.report.source import _trial_runs
    from edray.tracking.figures import TOP_CURVES

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "many", artifact_root=tmp_path / "artifacts")
    tracker.start_sweep(run_name="many", spec_dict={"name": "many"})
    results = []
    for i in range(TOP_CURVES + 3):
        trial = f"t{i}"
        tracker.trial_run(trial, params={"ed.alpha": i / 10}, resolved_spec={})
        for epoch in (1, 2):
            tracker.log_epoch(trial, {"val_acc": i / 10, "grade": epoch}, epoch=epoch)
        tracker.end_trial(trial, "completed")
        results.append({"trial_id": trial, "status": "completed", "val_acc": i / 10, "epochs": 2})
    client = MlflowClient(uri)
    runs, read = _trial_runs(client, tracker.experiment_id, tracker.parent_run_id, results)
    best = [f"t{i}" for i in range(TOP_CURVES + 2, 2, -1)]  # highest val_acc first
    assert sorted(read) == sorted(runs) == sorted(best) and all(len(records) == 2 for records in read.values())
    assert all(runs[t].data.tags["edray.trial_id"] == t for t in best)
    older = [{k: v for k, v in row.items() if k != "epochs"} for row in results]
    runs, read = _trial_runs(client, tracker.experiment_id, tracker.parent_run_id, older)
    assert sorted(runs) == sorted(read) == sorted(r["trial_id"] for r in results)

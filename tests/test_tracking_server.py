"""``best``, ``report`` and ``ui`` given ``--tracking-uri`` of a real ``mlflow server`` (its own
process group, stopped by it) serving the store of a real small sweep."""

from __future__ import annotations

import urllib.request

import pytest

from edray.cli import main

from .conftest import one_error_line
from .helpers import EXPERIMENT, MlflowServer

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never via a proxy


@pytest.fixture(scope="module")
def server(small_sweep, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = MlflowServer(small_sweep / "mlflow.db", small_sweep / "mlflow-artifacts", log).start()
    try:
        yield running.url
    finally:
        running.stop()


@pytest.mark.slow
def test_best_through_the_server_is_the_best_of_the_store(server, small_sweep, tmp_path):
    remote, local = tmp_path / "remote.yaml", tmp_path / "local.yaml"
    empty = tmp_path / "elsewhere"  # a work directory with no store: only the server can answer
    assert main(["best", EXPERIMENT, "--workdir", str(empty), "--tracking-uri", server, "-o", str(remote)]) == 0
    assert main(["best", EXPERIMENT, "--workdir", str(small_sweep), "-o", str(local)]) == 0
    assert remote.read_text() == local.read_text()
    assert not empty.exists() or not (empty / "mlflow.db").exists()


@pytest.mark.slow
def test_report_through_the_server_shows_the_sweep(server, small_sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "report.html"
    assert main(["report", EXPERIMENT, "--workdir", str(tmp_path / "elsewhere"), "--tracking-uri", server,
                 "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    client = MlflowClient(tracking_uri=f"sqlite:///{small_sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`edray.kind` = 'sweep'")
    assert parent.info.run_id in page
    for section in ("summary", "best-config", "results"):
        assert f'<section id="{section}">' in page, section


def test_ui_refuses_a_tracking_uri_that_is_already_a_server(tmp_path, capsys):
    """Nothing to start: the UI of a server is the server itself (refused before any contact)."""
    server = "http://127.0.0.1:5999"
    assert main(["ui", "--workdir", str(tmp_path), "--tracking-uri", server]) == 2
    one_error_line(capsys, "--tracking-uri", "is already an MLflow server", f"open {server}")
    assert list(tmp_path.iterdir()) == []



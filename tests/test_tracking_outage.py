"""A real ``mlflow server`` that goes away mid-sweep and comes back: the trials go on, the
driver says so in one line (not one per call), and the end records or names what was missed."""

from __future__ import annotations

import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DIGITS_YAML
from tests.helpers import MlflowServer, edray_args, edray_env, json_summary, sets
from tests.test_sweep import EPOCHS, SHORT, _kill_hard, _seed, _trial_states

OUTAGE_S = 20


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_mid_sweep_does_not_stop_or_stall_it(tmp_path_factory, teacher_workdir):
    base = tmp_path_factory.mktemp("outage")
    server = MlflowServer(base / "mlflow.db", base / "artifacts", base / "mlflow.log").start()
    workdir = _seed(teacher_workdir, base / "work")
    args = ["sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--num-samples", "3", "--no-final-eval",
            *sets([*SHORT, "search.early_stopping.kind=none", "search.max_concurrent=1"])]
    out, err = base / "stdout", base / "stderr"
    try:
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(edray_args(*args), env=edray_env(MLFLOW_TRACKING_URI=server.url),
                                    stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 420
        while "TERMINATED" not in _trial_states(workdir).values():  # one trial recorded, then the server goes
            assert proc.poll() is None, err.read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        server.stop()
        time.sleep(OUTAGE_S)
        assert proc.poll() is None, "the sweep stopped while the tracking server was away:\n" + err.read_text()[-4000:]
        server.start()  # the same port and database, as a restarted head's MLflow
        proc.wait(timeout=600)
        summary = json_summary((proc.returncode, out.read_text(), err.read_text()))
        assert summary["trials"] == 3 and summary["completed"] == 3

        lines = err.read_text().splitlines()
        gone = [line for line in lines if "does not answer" in line]
        assert len(gone) == 1, lines  # once when it went away, not once per call
        assert not any("Traceback" in line for line in lines)
        missed = [line for line in lines if "not recorded while" in line]

        client = MlflowClient(server.url)
        parent = client.get_run(summary["parent_run_id"])
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        epochs = {c.data.tags["edray.trial_id"]: len(client.get_metric_history(c.info.run_id, "val_acc"))
                  for c in children}
        if not missed:  # nothing said missing: then nothing is
            assert len(epochs) == 3 and set(epochs.values()) == {EPOCHS}, epochs
        else:  # what is missing is said, in one line
            assert len(missed) == 1 and (len(epochs) < 3 or min(epochs.values()) < EPOCHS), (missed, epochs)
    finally:
        if "proc" in locals() and proc.poll() is None:
            _kill_hard(proc)
        server.stop()

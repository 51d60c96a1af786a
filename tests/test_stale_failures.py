"""Tune hands a trial the failure of each outstanding task of its dead actor; after the first
restarts the trial, the rest must not end it as ERROR (ray_private.ignore_stale_trial_task_failures).
On Tune's own TuneController method, with the two attributes it reads set as Tune leaves them."""

from __future__ import annotations

import pytest
from ray.exceptions import RayActorError
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial

from edray.clusters.ray_private import ignore_stale_trial_task_failures


class _Controller:
    _trial_to_actor: dict = {}


def test_a_failure_of_a_restarted_trials_old_actor_is_dropped_and_a_live_one_is_not():
    ignore_stale_trial_task_failures()
    ignore_stale_trial_task_failures()  # idempotent: wrapped once
    handle = TuneController._trial_task_failure
    assert handle.edray_guard and handle.__closure__ and not getattr(
        handle.__closure__[0].cell_contents, "edray_guard", False)
    trial = Trial("run_trial", trial_id="t1", stub=True)
    trial.status = Trial.PENDING  # restarted after the first failure: its actor let go
    error = RayActorError()
    controller = _Controller()
    assert handle(controller, trial, error) is None  # dropped: Tune's own handler never ran

    trial.status = Trial.RUNNING  # a running trial's failure goes to Tune, which needs a real controller
    with pytest.raises(AttributeError):
        handle(controller, trial, error)

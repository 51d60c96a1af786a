"""The trained student as an MLflow model: logged, registered, and the ``champion`` alias.

A sweep's product is a student and the recipe that made it. The student is logged with
``mlflow.pytorch.log_model`` in the ``pt2`` format (``torch.export``): the graph and the
weights, so ``mlflow.pytorch.load_model`` and ``mlflow.pyfunc.load_model`` load it in a
process that has only mlflow and torch, without edray's classes or pickle.

What the model takes: **normalised float32 images**, ``(batch, channels, size, size)`` at
the training size, as edray's evaluation feeds them (the per-channel statistics are in the
model's metadata as ``normalisation``); what it returns: one logit per class, in the order
of the metadata's ``class_names`` (the dataset's class ids, not ED's group order).

Where: the best student on the sweep's parent run, and with ``tracking.log_models: all``
each finished trial's on its child run (:func:`read_student` builds it from the file the
trial saved to the shared location, so the driver needs no data). A model is logged to its
run by id, outside MLflow's fluent run context: leaving that context would mark the run
FINISHED before the sweep sets its real status.

Registration: the model is registered under ``<experiment>-<method>`` (``digits-ed``),
each version tagged with its test accuracy, the test protocol that accuracy was measured
on, and the sweep's parent run. The alias ``champion`` moves to a new version only when
it beats the current champion on the same protocol (same data, split and test set).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from edray.storage import read_bytes
from edray.tracking import tags

__all__ = [
    "CHAMPION",
    "Registration",
    "StudentModel",
    "build_student",
    "load_student_file",
    "log_student_model",
    "read_student",
    "register_student",
    "registered_model_name",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass(frozen=True)
class StudentModel:
    """A finished student and what a user needs to call it.

    Attributes:
        model: the exported plain student (outputs: the dataset's class ids).
        example: a few normalised input images, ``(n, channels, size, size)`` float32: they
            fix the signature and the input example, and trace the export.
        class_names: one per output logit, in order.
        normalisation: ``mean=..;std=..`` the inputs are normalised with.
    """

    model: nn.Module
    example: torch.Tensor
    class_names: list[str]
    normalisation: str


@dataclass(frozen=True)
class Registration:
    """A registered version and whether it is now the champion (``reason`` says why or why not)."""

    name: str
    version: str
    model_uri: str
    champion: bool
    reason: str

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.name}@{CHAMPION}"


def registered_model_name(experiment: str, method: str) -> str:
    """``digits`` + ``ed`` -> ``digits-ed``: baselines swept by ``--compare`` register apart."""
    return f"{experiment}-{method}"


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's model functions use its process-wide tracking URI, and setting it also sets
    ``MLFLOW_TRACKING_URI`` for every later MLflow call and child process: set it for the
    calls here only, and put back what the process had."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None unsets the URI and the variable (MLflow handles it; its annotation omits it).
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _pip_requirements() -> list[str]:
    # The pt2 graph needs torch only (no torchvision, no edray); mlflow adds itself.
    return [f"torch=={torch.__version__.split('+')[0]}"]


def build_student(state: dict, *, in_channels: int, image_size: int) -> nn.Module:
    """The plain student of a saved trial model (``arch``, ``num_classes``, ``state_dict``)."""
    from edray.models import build_backbone  # torchvision: only when a model is built

    model = build_backbone(state["arch"], num_classes=state["num_classes"], in_channels=in_channels,
                           image_size=image_size, load_weights=False)
    model.load_state_dict(state["state_dict"])
    return model.cpu().eval()


def load_student_file(model_path: str) -> dict:
    """The file a trial saved its student to (a path or a shared URI), as saved."""
    return torch.load(io.BytesIO(read_bytes(model_path)), map_location="cpu", weights_only=False)


def read_student(model_path: str) -> StudentModel:
    """The student a trial saved at ``model_path`` (a path or a shared URI) with what MLflow
    records beside it, which the trial saved too (edray.distributed.trial)."""
    state = load_student_file(model_path)
    missing = {"in_channels", "image_size", "example", "class_names", "normalisation"} - set(state)
    if missing:  # saved by an edray before trials kept them
        raise ValueError(f"{model_path} lacks {sorted(missing)}; it cannot be logged as an MLflow model")
    return StudentModel(model=build_student(state, in_channels=state["in_channels"], image_size=state["image_size"]),
                        example=state["example"], class_names=list(state["class_names"]),
                        normalisation=state["normalisation"])


def log_student_model(tracking_uri: str, run_id: str, student: StudentModel, *, name: str = "student",
                      step: int = 0) -> str:
    """Log ``student`` to run ``run_id`` as an MLflow model; returns its ``models:/`` URI.
    The run's metrics at ``step`` (a trial's last epoch) are the model's metrics in MLflow's UI.

    The run's status is left as it is (no fluent ``start_run``): its model is created in
    the run's experiment with the run's params, as ``log_model`` inside the run would."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    model = student.model.eval().cpu()
    example = student.example[:2].detach().float().cpu().contiguous()
    with torch.no_grad():
        outputs = model(example)
    inputs = example.numpy()
    run = MlflowClient(tracking_uri).get_run(run_id)
    with _fluent_uri(tracking_uri):
        # Without an active run, log_model would create its model in the fluent default
        # experiment ("Default"), not the run's: the model is created here, then filled.
        logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, params=run.data.params,
                                                experiment_id=run.info.experiment_id)
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            run_id=run_id,
            model_id=logged.model_id,
            step=step,
            signature=infer_signature(inputs, outputs.numpy()),
            input_example=inputs,
            serialization_format="pt2",
            pip_requirements=_pip_requirements(),
            metadata={
                "class_names": list(student.class_names),
                "input": "normalised float32 images (batch, channels, size, size)",
                "normalisation": student.normalisation,
            },
        )
    return info.model_uri


def _current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no alias yet (or no such model)
        return None


def register_student(tracking_uri: str, model_uri: str, name: str, *, test_acc: float, protocol: str,
                     sweep_run_id: str) -> Registration:
    """Register ``model_uri`` as a new version of ``name`` and move ``champion`` to it if it wins.

    It wins when there is no champion yet, or when the champion was tested on the same
    ``protocol`` and this version's ``test_acc`` is higher.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    marks = {tags.TEST_ACC: repr(float(test_acc)), tags.TEST_PROTOCOL: protocol, tags.SWEEP_RUN: sweep_run_id}
    with _fluent_uri(tracking_uri):
        version = mlflow.register_model(model_uri, name, tags=marks).version
    current = _current_champion(client, name)
    if current is None:
        champion, reason = True, "the first champion"
    elif current.tags.get(tags.TEST_PROTOCOL) != protocol:
        champion, reason = False, f"champion v{current.version} was tested on another test set; move the alias by hand"
    else:
        best = float(current.tags.get(tags.TEST_ACC, "nan"))
        champion = float(test_acc) > best
        reason = (f"test_acc {test_acc:.4f} {'beats' if champion else 'does not beat'} "
                  f"champion v{current.version}'s {best:.4f}")
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("registered %s v%s: %s", name, version, reason)
    return Registration(name=name, version=str(version), model_uri=model_uri, champion=champion, reason=reason)

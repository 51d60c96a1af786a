"""Checks of a spec against the registries and the disk, before anything trains.

The pydantic spec checks the shape of each field; it cannot know that ``resnet9000`` is
not an architecture, that nothing lies at ``dataset.root``, or that 11 grades do not fit
10 classes. Unchecked, those surface minutes later inside a trial, after the teachers
trained, under a bare path like ``arch``. The CLI and the sweep driver run these checks
first, so the error names the spec field and nothing has been written yet.
"""

from __future__ import annotations

from pathlib import Path

from edray.errors import EdrayError
from edray.search_space import check_space
from edray.spec import Spec

__all__ = ["preflight"]


def _check_arch(name: str, field: str) -> None:
    from edray.models import ARCHITECTURES

    if name not in ARCHITECTURES:
        raise EdrayError(field, f"unknown architecture {name!r}", f"use one of {', '.join(ARCHITECTURES.names())}")


def _check_student(spec: Spec, num_classes: int, in_channels: int, image_size: int) -> None:
    """Build the growing student on the meta device (no memory, no init cost): it refuses
    more grades than the backbone has units, or a grade with no classes."""
    import torch

    from edray.distill.plan import make_plan
    from edray.models import GrowingStudent, build_backbone

    plan = make_plan(spec, num_classes)  # more grades than classes: ed.grades
    grade_classes = plan.classes.grade_classes if plan.method == "ed" else [num_classes]
    with torch.device("meta"):
        backbone = build_backbone(spec.student.arch, num_classes=num_classes, in_channels=in_channels,
                                  image_size=image_size)
        GrowingStudent(backbone, grade_classes)


def _check_paths(spec: Spec) -> None:
    for i, teacher in enumerate(spec.teachers.models):
        if teacher.checkpoint and not Path(teacher.checkpoint).expanduser().is_file():
            raise EdrayError(f"teachers.models[{i}].checkpoint", f"no such file {teacher.checkpoint}",
                             "give the path of a trained teacher, or remove it to let `edray teach` train one")
    uri = spec.teachers.store_uri
    if uri and spec.method != "ce" and spec.teachers.logits == "precomputed" and "://" not in uri:
        if not Path(uri).expanduser().is_dir():
            raise EdrayError("teachers.store_uri", f"no such directory {uri}",
                             "build the stores with `edray precompute`, or unset store_uri to use WORKDIR/logits")


def preflight(spec: Spec, *, search: bool = True, offline: bool = False):
    """Check that what ``spec`` names exists and fits; return the loaded data (None if not loaded).

    Reads the dataset's file list (no image is decoded) and writes nothing.

    Args:
        spec: the validated spec.
        search: also compile the search space (``edray train`` does not use it).
        offline: ``edray validate`` and ``--dry-run``: a spec may be checked on a laptop
            before it runs on a cluster, so data, checkpoints and stores that are not on
            this machine are not errors; what is here is checked all the same.

    Raises:
        EdrayError: naming the field: an unknown dataset (``dataset.name``) or architecture
            (``student.arch``, ``teachers.models[i].arch``), no data at ``dataset.root``, a
            missing teacher checkpoint or store directory, more grades than the dataset has
            classes or the student has units (``ed.grades``), or a search space that admits
            no valid trial (``search.params[i]``).
    """
    from edray.data import DATASETS, load_data

    DATASETS.get(spec.dataset.name)  # unknown name: dataset.name, with the known ones
    _check_arch(spec.student.arch, "student.arch")
    for i, teacher in enumerate(spec.teachers.models):
        _check_arch(teacher.arch, f"teachers.models[{i}].arch")
    if search and spec.search is not None:
        check_space(spec)  # the checks compile_space runs, without Optuna or Ray
    if not offline:
        _check_paths(spec)
    try:
        data = load_data(spec.dataset)
    except EdrayError as err:
        if offline and err.path == "dataset.root":
            return None  # the data lives elsewhere; the run that uses it checks again
        raise
    _check_student(spec, data.num_classes, data.in_channels, data.image_size)
    return data

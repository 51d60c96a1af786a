"""The YAML spec of an edray run: its schema, ``--set`` path editing and file loading.

- :mod:`edray.spec.schema`: the typed models (:class:`Spec` and its sections);
- :mod:`edray.spec.paths`: dotted paths (``ed.temperatures[1]``) into a raw spec mapping;
- :mod:`edray.spec.loading`: spec files (e.g. ``search_spaces/digits.yaml``, each a whole
  spec) -> :class:`Spec`, every mistake as one line naming the field.
"""

from edray.spec.loading import load_spec, spec_from_dict
from edray.spec.paths import apply_overrides, get_path, set_path
from edray.spec.schema import (
    AugmentSpec,
    DatasetSpec,
    EarlyStoppingSpec,
    EDSpec,
    FinalEvalSpec,
    Method,
    OptimSpec,
    ScalingSpec,
    ScheduleSpec,
    SearchParam,
    SearchSpec,
    Spec,
    StudentSpec,
    TeacherSpec,
    TeachersSpec,
    TrackingSpec,
    TrainRecipe,
)

__all__ = [
    "AugmentSpec",
    "DatasetSpec",
    "EDSpec",
    "EarlyStoppingSpec",
    "FinalEvalSpec",
    "Method",
    "OptimSpec",
    "ScalingSpec",
    "ScheduleSpec",
    "SearchParam",
    "SearchSpec",
    "Spec",
    "StudentSpec",
    "TeacherSpec",
    "TeachersSpec",
    "TrackingSpec",
    "TrainRecipe",
    "apply_overrides",
    "get_path",
    "load_spec",
    "set_path",
    "spec_from_dict",
]

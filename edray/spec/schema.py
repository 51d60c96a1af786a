"""The spec's schema: one pydantic model per section of a spec file.

Unknown keys are errors (``extra="forbid"``), NaN / inf and booleans given for numbers are
refused, and cross-field rules (switch epochs before the last epoch, one teacher per grade,
...) live on the models, so a :class:`Spec` that exists is one that can run.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
]

Method = Literal["ed", "kd", "mtkd", "ce"]


def _takes_numbers(annotation: Any) -> bool:
    """True for ``int`` / ``float`` fields, also inside ``X | None``, ``list[X]`` and ``dict[str, X]``."""
    origin = get_origin(annotation)
    if origin in (list, dict):
        return _takes_numbers(get_args(annotation)[-1])
    if origin in (Union, types.UnionType):
        return any(_takes_numbers(a) for a in get_args(annotation) if a is not type(None))
    return annotation in (int, float)


def _holds_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(isinstance(v, bool) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, bool) for v in value.values())
    return isinstance(value, bool)


class _Strict(BaseModel):
    # NaN and inf are refused everywhere: a NaN temperature or ratio passes every "> 0"
    # and "sums to 1" check and only shows up as a NaN loss hours later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads yes/no/true as booleans, and pydantic would quietly take them as 1 and 0.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool(value) and _takes_numbers(field.annotation):
            raise ValueError(f"must be a number, not a boolean (got {value!r})")
        return value


class AugmentSpec(_Strict):
    """Training augmentation, replayable from ``(seed, sample index, view)``.

    A random crop of ``crop_padding`` pixels of zero padding on each side, then an optional
    horizontal flip (off for digits: a mirrored 3 is not a 3).
    """

    crop_padding: int = Field(1, ge=0, description="pixels of zero padding before a random crop")
    hflip: bool = Field(False, description="random horizontal flip")


class DatasetSpec(_Strict):
    """Which images, where on disk, and how train / validation / test are carved."""

    name: str = Field(
        "digits", description="digits, synthetic, cifar100, caltech256, food101, tiny_imagenet, imagefolder"
    )
    root: str | None = Field(None, description="directory holding the dataset; not used by digits / synthetic")
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="part of the training set held out for validation")
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="part held out for test, for datasets with no official test split"
    )
    split_seed: int = Field(0, description="seed of the train/validation (and test) carving")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0, description="keep this part of the training set (low-data runs)")
    image_size: int | None = Field(None, gt=0, description="resize images to this size; None keeps the native size")
    augmentation: AugmentSpec = Field(default_factory=AugmentSpec)
    cache: Literal["auto", "off"] = Field(
        "auto", description="file datasets: decode every image once into WORKDIR/images (uint8 Arrow, memory-mapped); "
        "off: decode the files every epoch"
    )
    # synthetic only
    num_classes: int | None = Field(None, gt=1, description="synthetic: number of classes")
    samples_per_class: int | None = Field(None, gt=0, description="synthetic: training samples per class")
    channels: int | None = Field(None, gt=0, description="synthetic: image channels")


class TrainRecipe(_Strict):
    """How ``edray teach`` trains a teacher (plain cross-entropy)."""

    epochs: int = Field(20, gt=0)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    seed: int = Field(0, description="teacher's own seed: runs of several student seeds share one teacher")


class TeacherSpec(_Strict):
    """One teacher: an architecture and either a checkpoint or a training recipe."""

    arch: str
    checkpoint: str | None = Field(None, description="path of a trained teacher; None: edray teach trains it")
    pretrained: str | None = Field(
        None, description="torchvision weights to start from, e.g. IMAGENET1K_V2 (read from $TORCH_HOME, "
        "never downloaded); the classifier is new, for the dataset's classes"
    )
    train: TrainRecipe = Field(default_factory=TrainRecipe)


class TeachersSpec(_Strict):
    """The teachers and how they relate to the class groups (docs/design.md#the-method).

    ``per_group``: teacher k is trained on group k only (one teacher per grade).
    ``shared``: every teacher is trained on all classes; group k reads its slice. With
    one teacher per grade, teacher k serves group k; otherwise every group averages all.
    """

    mode: Literal["per_group", "shared"] = "shared"
    logits: Literal["live", "precomputed"] = Field("live", description="run teachers live, or read an Arrow store")
    views: int = Field(8, ge=1, description="precomputed views per training sample (view 0 is unaugmented)")
    store_uri: str | None = Field(None, description="where the logit stores are read from, e.g. s3://bucket/logits; "
                                  "default WORKDIR/logits")
    view_seed: int = Field(0, description="seed of the augmentation views, apart from the training seed so that "
                           "runs of several seeds share one logit store")
    models: list[TeacherSpec] = Field(min_length=1)


class StudentSpec(_Strict):
    arch: str
    pretrained: str | None = Field(
        None, description="torchvision weights the model starts from (as teachers.models[i].pretrained); "
        "set for a teacher's own training run"
    )


class EDSpec(_Strict):
    """The Education Distillation recipe (docs/design.md#the-method)."""

    grades: int = Field(3, ge=1, description="number of grades (class groups and student segments)")
    split_ratios: list[float] = Field(default_factory=lambda: [0.33, 0.33, 0.34])
    class_order: Literal["natural", "shuffled"] = "natural"
    class_order_seed: int = 0
    switch_epochs: list[int] = Field(default_factory=list, description="epochs at which grades 2..G start")
    temperatures: list[float] = Field(default_factory=lambda: [4.0, 4.0, 4.0], description="one per grade")
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="weight of the cross-entropy term")
    replay: Literal["sequential", "mixed"] = "sequential"
    optimizer_at_switch: Literal["reset", "carry"] = "reset"

    @field_validator("split_ratios")
    @classmethod
    def _ratios_positive(cls, ratios: list[float]) -> list[float]:
        if any(r <= 0 for r in ratios):
            raise ValueError(f"every ratio must be > 0, got {ratios}")
        if abs(sum(ratios) - 1.0) > 1e-3:
            raise ValueError(f"must sum to 1, got {ratios} (sum {sum(ratios):.4g})")
        return ratios

    @field_validator("temperatures")
    @classmethod
    def _temperatures_positive(cls, temps: list[float]) -> list[float]:
        for i, t in enumerate(temps):
            if t <= 0:
                raise ValueError(f"temperature [{i}] must be > 0, got {t}")
        return temps

    @field_validator("switch_epochs")
    @classmethod
    def _switches_increase(cls, epochs: list[int]) -> list[int]:
        if any(e <= 0 for e in epochs):
            raise ValueError(f"switch epochs must be > 0, got {epochs}")
        if any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ValueError(f"switch epochs must strictly increase (n < m), got {epochs}")
        return epochs

    @model_validator(mode="after")
    def _lengths_match_grades(self) -> EDSpec:
        if len(self.split_ratios) != self.grades:
            raise ValueError(f"split_ratios has {len(self.split_ratios)} entries but grades is {self.grades}")
        if len(self.temperatures) != self.grades:
            raise ValueError(f"temperatures has {len(self.temperatures)} entries but grades is {self.grades}")
        if len(self.switch_epochs) != self.grades - 1:
            raise ValueError(
                f"switch_epochs needs {self.grades - 1} entries (one per grade after the first), "
                f"got {self.switch_epochs}"
            )
        return self


class ScheduleSpec(_Strict):
    """Learning-rate schedule over the whole run (not restarted at a grade switch)."""

    kind: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = Field(
        default_factory=list, description="multistep: epochs at which lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)


class OptimSpec(_Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(64, gt=0)
    num_workers: int | None = Field(
        None, ge=0, description="data-loader processes for datasets read from files; "
        "None: from scaling.resources_per_worker.CPU (one CPU stays with the training process)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs that have it, fp16 with a grad scaler on older GPUs, "
        "fp32 on CPU"
    )


class SearchParam(_Strict):
    """One searched parameter at a spec path.

    ``int`` / ``float`` (``log`` for a log scale) / ``categorical`` draw one value.
    Three structured kinds keep ED's constraints inside the space instead of rejecting
    samples: ``switch_epochs`` (ordered, each grade at least ``min_grade_epochs`` long),
    ``split_ratios`` (each in [low, high], summing to 1) and ``temperatures`` (one per
    grade in [low, high]).
    """

    path: str = Field(description="spec path, e.g. ed.alpha")
    type: Literal["int", "float", "categorical", "switch_epochs", "split_ratios", "temperatures"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    min_grade_epochs: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"search param {self.path}: categorical needs a non-empty choices list")
        elif self.type != "switch_epochs":
            if self.low is None or self.high is None:
                raise ValueError(f"search param {self.path}: {self.type} needs low and high")
            if self.low > self.high:
                raise ValueError(f"search param {self.path}: low ({self.low}) > high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"search param {self.path}: a log scale needs low > 0")
        if self.type == "temperatures" and self.low is not None and self.low <= 0:
            raise ValueError(f"search param {self.path}: temperatures must be > 0, got low {self.low}")
        return self

    def bounds(self) -> tuple[float, float]:
        """``(low, high)``; every type but categorical and switch_epochs has both (checked above)."""
        if self.low is None or self.high is None:
            raise ValueError(f"search param {self.path}: {self.type} has no low/high")
        return self.low, self.high

    def options(self) -> list[Any]:
        """The choices of a categorical param (checked non-empty above)."""
        if self.choices is None:
            raise ValueError(f"search param {self.path}: {self.type} has no choices")
        return self.choices


class EarlyStoppingSpec(_Strict):
    """How a sweep stops unpromising trials before their last epoch (README "The sweep").

    ``halving`` (budget-scaled successive halving): every config first trains a short copy
    of itself (``budgets``: fractions of ``optim.epochs``, with its switch epochs and LR
    milestones scaled alike), so it meets every class; only the best ``1/reduction_factor``
    of the configs that reached a budget go on to the next, the rest are pruned.
    ``asha``: rungs count epochs in the final grade, never epochs overall, so a trial still
    in grade 1 is never ranked against one facing all classes (saves little: epochs in
    earlier grades are never at risk).
    """

    kind: Literal["halving", "asha", "none"] = "asha"
    grace_epochs: int = Field(2, ge=1, description="asha: epochs in the final grade before a trial may be stopped")
    reduction_factor: float = Field(
        2.0, gt=1, description="keep the best 1/reduction_factor at each rung (halving: 4 unless given)"
    )
    budgets: list[float] = Field(
        default_factory=lambda: [0.2],
        description="halving: epochs of the short copies, as fractions of optim.epochs (ascending, each in (0, 1))",
    )

    @field_validator("budgets")
    @classmethod
    def _budgets_increase(cls, budgets: list[float]) -> list[float]:
        if not budgets:
            raise ValueError("needs at least one fraction, e.g. [0.2]")
        if any(not 0 < b < 1 for b in budgets):
            raise ValueError(f"every fraction must be in (0, 1), got {budgets}")
        if any(b <= a for a, b in zip(budgets, budgets[1:])):
            raise ValueError(f"fractions must strictly increase, got {budgets}")
        return budgets

    @model_validator(mode="after")
    def _halving_default(self) -> EarlyStoppingSpec:
        # Halving keeps a quarter: with copies at 20 % of the epochs, a half saves only 1.4x.
        if self.kind == "halving" and "reduction_factor" not in self.model_fields_set:
            self.reduction_factor = 4.0
        return self


class FinalEvalSpec(_Strict):
    seeds: int = Field(3, ge=0, description="seeds of the final test evaluation of the best config (0: none)")


class SearchSpec(_Strict):
    params: list[SearchParam] = Field(min_length=1)
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    storage: str | None = Field(None, description="Optuna storage URL for the study (e.g. sqlite:///study.db)")
    points_to_evaluate: list[dict[str, Any]] | None = Field(
        None, description="first configs to try (param path -> value); default: the spec's own values"
    )
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    final_eval: FinalEvalSpec = Field(default_factory=FinalEvalSpec)
    compare: list[Literal["kd", "mtkd", "ce"]] | None = Field(
        None, description="baselines swept and tested like ED, at the same budget (edray sweep --compare)"
    )

    @model_validator(mode="after")
    def _unique_paths(self) -> SearchSpec:
        paths = [p.path for p in self.params]
        dup = {p for p in paths if paths.count(p) > 1}
        if dup:
            raise ValueError(f"search params repeat {sorted(dup)}")
        return self


def _one_cpu() -> dict[str, float]:  # typed: mypy reads a lambda's {"CPU": 1} as dict[str, int]
    return {"CPU": 1}


class ScalingSpec(_Strict):
    """Workers per trial (Ray Train's ScalingConfig)."""

    num_workers: int = Field(1, ge=1, description="data-parallel workers per trial")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=_one_cpu)
    max_failures: int = Field(2, ge=0, description="restarts of a trial from its last checkpoint")
    trainer: Literal["auto", "inline", "torch_trainer"] = Field(
        "auto", description="auto: single-worker trials train inside the Tune trial, others via TorchTrainer"
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _resources_non_negative(cls, resources: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in resources.items() if v < 0}
        if bad:
            raise ValueError(f"resources must be >= 0, got {bad}")
        return resources


class TrackingSpec(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db")
    experiment: str | None = Field(None, description="default: the spec's name")
    log_models: Literal["best", "all", "none"] = "best"


class Spec(_Strict):
    """A whole edray run: data, teachers, student, the ED recipe, optimisation."""

    name: str = Field("edray", pattern=r"^[A-Za-z0-9_.-]+$", description="experiment name")
    seed: int = 0
    method: Method = "ed"
    deterministic: bool = Field(True, description="deterministic torch kernels (exact resume on CPU)")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    teachers: TeachersSpec
    student: StudentSpec
    ed: EDSpec = Field(default_factory=EDSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    search: SearchSpec | None = Field(None, description="what `edray sweep` searches; absent: nothing to sweep")
    scaling: ScalingSpec = Field(default_factory=lambda: ScalingSpec())
    tracking: TrackingSpec = Field(default_factory=lambda: TrackingSpec())

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        if self.ed.switch_epochs and self.ed.switch_epochs[-1] >= self.optim.epochs:
            raise ValueError(
                f"ed.switch_epochs {self.ed.switch_epochs} must all be < optim.epochs ({self.optim.epochs})"
            )
        if self.teachers.mode == "per_group" and len(self.teachers.models) != self.ed.grades:
            raise ValueError(
                f"teachers.mode per_group needs one teacher per grade ({self.ed.grades}), "
                f"got {len(self.teachers.models)}"
            )
        if self.method == "kd" and self.teachers.mode != "shared":
            raise ValueError("method kd distils from one full-class teacher: set teachers.mode to shared")
        schedule = self.optim.schedule
        if schedule.kind == "multistep" and any(m >= self.optim.epochs for m in schedule.milestones):
            raise ValueError(f"optim.schedule.milestones must be < optim.epochs ({self.optim.epochs})")
        cpus = self.scaling.resources_per_worker.get("CPU", 1)
        if self.optim.num_workers is not None and self.optim.num_workers > cpus:
            raise ValueError(
                f"optim.num_workers ({self.optim.num_workers}) exceeds the CPUs each worker gets "
                f"(scaling.resources_per_worker.CPU = {cpus:g}); lower it or leave it unset"
            )
        workers = self.scaling.num_workers
        if workers > 1 and self.scaling.trainer != "inline" and self.optim.batch_size % workers:
            # Every global batch is cut into equal slices, one per worker (see distill.loop._shard).
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be a multiple of scaling.num_workers ({workers})"
            )
        return self

"""The growing ED student: a backbone cut into G segments plus a teaching-reference head per grade.

Grade g runs segments 1..g and then TR head g, which maps segment g's features to
logits over the classes of groups 1..g (docs/design.md#the-method). The last grade's head is the
backbone's own classifier, so the finished student *is* the plain target model.

The student holds the whole backbone from the start and merely skips the segments a
grade does not reach. Its ``state_dict`` therefore has the same keys and shapes at
every grade: a checkpoint taken at any grade loads into a fresh student, and switching
grade never touches a trained weight.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from edray.errors import EdrayError
from edray.models.backbone import Backbone

__all__ = ["TRHead", "GrowingStudent", "segment_sizes"]


class TRHead(nn.Module):
    """Teaching-reference head: 1x1 conv + BN + ReLU + global average pool + linear.

    The 1x1 conv lets a head read mid-network features that were not trained to be
    linearly separable, which a bare pool + linear head could not.

    Args:
        in_channels: channels of the segment output it reads.
        num_outputs: classes seen at its grade.
        hidden: channels after the 1x1 conv (default ``in_channels``).
    """

    def __init__(self, in_channels: int, num_outputs: int, *, hidden: int | None = None):
        super().__init__()
        hidden = in_channels if hidden is None else hidden
        self.conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(hidden, num_outputs)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def segment_sizes(num_units: int, num_segments: int) -> list[int]:
    """Units per segment, as equal as can be; earlier segments take the remainder.

    Segment 1 is the "main body" of the paper, so it is the one that grows when the
    units do not divide evenly: 4 units in 3 segments are ``[2, 1, 1]``.
    """
    if not 1 <= num_segments <= num_units:
        raise ValueError(f"cannot cut {num_units} units into {num_segments} segments")
    base, extra = divmod(num_units, num_segments)
    return [base + (1 if i < extra else 0) for i in range(num_segments)]


class GrowingStudent(nn.Module):
    """A backbone that grows through G grades, each with its own teaching-reference head.

    Args:
        backbone: the target model; its units and classifier are used, not copied.
        grade_classes: ``grade_classes[g-1]`` = number of classes seen at grade g, strictly
            increasing, the last equal to ``backbone.num_classes``. ``G = len(grade_classes)``.

    Raises:
        EdrayError: more grades than the backbone has units (``ed.grades``), or a grade
            that adds no classes (``ed.split_ratios``).
    """

    def __init__(self, backbone: Backbone, grade_classes: Sequence[int]):
        super().__init__()
        classes = [int(c) for c in grade_classes]
        num_units = len(backbone.units)
        if not classes:
            raise EdrayError("ed.grades", "must be >= 1, got 0", "set ed.grades to 1 or more")
        if len(classes) > num_units:
            raise EdrayError(
                "ed.grades",
                f"the student has {num_units} units ({backbone.widths} channels), so it can grow through at most "
                f"{num_units} grades, got {len(classes)}",
                f"set ed.grades <= {num_units} or choose a student architecture with more units",
            )
        if classes[0] < 1 or any(b <= a for a, b in zip(classes, classes[1:])):
            raise EdrayError(
                "ed.split_ratios",
                f"every grade must add classes, got classes seen per grade {classes}",
                "raise the smallest split ratios or use fewer grades",
            )
        if classes[-1] != backbone.num_classes:
            raise ValueError(f"the last grade sees {classes[-1]} classes but the backbone has {backbone.num_classes}")

        self.grade_classes = classes
        self.num_grades = len(classes)
        self.num_classes = backbone.num_classes
        self.widths = list(backbone.widths)
        self.grade = 1
        bounds = [0]
        for size in segment_sizes(num_units, self.num_grades):
            bounds.append(bounds[-1] + size)
        units = list(backbone.units)
        self.segments = nn.ModuleList(nn.Sequential(*units[a:b]) for a, b in zip(bounds, bounds[1:]))
        self.segment_widths = [self.widths[b - 1] for b in bounds[1:]]
        self.heads = nn.ModuleList(TRHead(self.segment_widths[g], classes[g]) for g in range(self.num_grades - 1))
        self.classifier = backbone.classifier

    def set_grade(self, g: int) -> None:
        """Make grade ``g`` (1..G) the one ``forward`` runs; no weight changes."""
        self.grade = self._check_grade(g)

    def head(self, g: int) -> nn.Module:
        """The head of grade ``g``: TR head g, or the backbone's classifier at grade G."""
        g = self._check_grade(g)
        return self.classifier if g == self.num_grades else self.heads[g - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments[: self.grade]:
            x = segment(x)
        return self.head(self.grade)(x)

    def grade_parameters(self, g: int) -> list[nn.Parameter]:
        """Every parameter grade ``g`` uses: segments 1..g and head g."""
        g = self._check_grade(g)
        return [p for s in self.segments[:g] for p in s.parameters()] + list(self.head(g).parameters())

    def new_parameters(self, g: int) -> list[nn.Parameter]:
        """Parameters grade ``g`` adds over grade g-1: segment g and head g (all of grade 1's for g = 1)."""
        g = self._check_grade(g)
        if g == 1:
            return self.grade_parameters(1)
        return list(self.segments[g - 1].parameters()) + list(self.head(g).parameters())

    def to_backbone(self) -> Backbone:
        """The plain target model, sharing this student's trained weights (no TR heads)."""
        units = [unit for segment in self.segments for unit in cast(nn.Sequential, segment)]
        model = Backbone(units, self.widths, num_classes=self.num_classes, classifier=self.classifier)
        model.training = self.training
        return model

    def extra_repr(self) -> str:
        return f"grade={self.grade}/{self.num_grades}, grade_classes={self.grade_classes}"

    def _check_grade(self, g: int) -> int:
        try:
            grade = operator.index(g)
        except TypeError:
            grade = 0
        if isinstance(g, bool) or not 1 <= grade <= self.num_grades:
            raise ValueError(f"grade must be an integer in 1..{self.num_grades}, got {g!r}")
        return grade

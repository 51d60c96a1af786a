"""Class groups: the label set split into grades by split ratios (docs/design.md#the-method).

Internally the ED loop works in *ordered* class space: group 1's classes come first,
then group 2's, and so on, so that "the classes seen at grade g" is a prefix
``[0, seen(g))`` of the logits. ``rank`` maps a natural label to its ordered position;
``order`` maps back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edray.errors import EdrayError

__all__ = ["ClassGroups", "group_sizes", "split_classes"]


def group_sizes(num_classes: int, ratios: list[float]) -> list[int]:
    """Classes per group: largest-remainder rounding of ``ratio * num_classes``, each >= 1.

    Raises:
        EdrayError: more groups than classes.
    """
    g = len(ratios)
    if g > num_classes:
        raise EdrayError(
            "ed.grades", f"{g} grades need at least {g} classes, the dataset has {num_classes}", "use fewer grades"
        )
    total = sum(ratios)
    exact = [r / total * num_classes for r in ratios]
    sizes = [max(1, int(np.floor(x))) for x in exact]
    # Hand out the remaining classes by largest remainder, take back any excess from the
    # largest groups; a tiny ratio still keeps one class.
    while sum(sizes) < num_classes:
        i = max(range(g), key=lambda k: (exact[k] - sizes[k], -k))
        sizes[i] += 1
    while sum(sizes) > num_classes:
        i = max((k for k in range(g) if sizes[k] > 1), key=lambda k: (sizes[k] - exact[k], k))
        sizes[i] -= 1
    return sizes


@dataclass(frozen=True)
class ClassGroups:
    """Disjoint class groups, in grade order.

    Attributes:
        groups: natural class ids of each group.
        num_classes: size of the whole label set.
    """

    groups: tuple[tuple[int, ...], ...]
    num_classes: int

    @property
    def order(self) -> list[int]:
        """Ordered position -> natural class id."""
        return [c for grp in self.groups for c in grp]

    @property
    def rank(self) -> torch.Tensor:
        """Natural class id -> ordered position (int64 [num_classes])."""
        rank = torch.empty(self.num_classes, dtype=torch.long)
        rank[torch.tensor(self.order)] = torch.arange(self.num_classes)
        return rank

    @property
    def group_of(self) -> torch.Tensor:
        """Natural class id -> 0-based group index (int64 [num_classes])."""
        out = torch.empty(self.num_classes, dtype=torch.long)
        for k, grp in enumerate(self.groups):
            out[list(grp)] = k
        return out

    @property
    def sizes(self) -> list[int]:
        return [len(g) for g in self.groups]

    @property
    def offsets(self) -> list[int]:
        """Start of each group in ordered space, plus the end."""
        return [0, *np.cumsum(self.sizes).tolist()]

    def seen(self, grade: int) -> int:
        """Number of classes seen at ``grade`` (1-based): groups 1..grade."""
        return self.offsets[grade]

    @property
    def grade_classes(self) -> list[int]:
        return [self.seen(g) for g in range(1, len(self.groups) + 1)]


def split_classes(num_classes: int, ratios: list[float], *, order: str = "natural", seed: int = 0) -> ClassGroups:
    """Split ``range(num_classes)`` into ``len(ratios)`` groups.

    ``order="shuffled"`` permutes the classes with ``seed`` before cutting, so the
    groups are not the first/middle/last classes of the dataset's own order.
    """
    sizes = group_sizes(num_classes, ratios)
    classes = list(range(num_classes))
    if order == "shuffled":
        classes = np.random.default_rng(seed).permutation(num_classes).tolist()
    groups, start = [], 0
    for size in sizes:
        groups.append(tuple(sorted(classes[start : start + size])))
        start += size
    return ClassGroups(groups=tuple(groups), num_classes=num_classes)

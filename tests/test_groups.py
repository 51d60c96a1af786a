import pytest
import torch

from edray.data.groups import group_sizes, split_classes
from edray.errors import EdrayError


@pytest.mark.parametrize(
    ("n", "ratios", "sizes"),
    [
        (10, [0.33, 0.33, 0.34], [3, 3, 4]),
        (100, [0.33, 0.33, 0.34], [33, 33, 34]),
        (257, [1 / 3, 1 / 3, 1 / 3], [86, 86, 85]),
        (10, [0.01, 0.01, 0.98], [1, 1, 8]),  # tiny ratios still keep one class
        (3, [0.2, 0.3, 0.5], [1, 1, 1]),
        (10, [1.0], [10]),
        (5, [0.9, 0.05, 0.05], [3, 1, 1]),
    ],
)
def test_group_sizes(n, ratios, sizes):
    assert group_sizes(n, ratios) == sizes
    assert sum(sizes) == n


def test_more_groups_than_classes_is_an_error():
    with pytest.raises(EdrayError, match="ed.grades"):
        group_sizes(2, [0.3, 0.3, 0.4])


def test_natural_order_groups_are_contiguous():
    g = split_classes(10, [0.3, 0.3, 0.4])
    assert g.groups == ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
    assert g.grade_classes == [3, 6, 10]
    assert g.offsets == [0, 3, 6, 10]


def test_shuffled_order_is_seeded_and_a_partition():
    a = split_classes(20, [0.25, 0.25, 0.5], order="shuffled", seed=1)
    b = split_classes(20, [0.25, 0.25, 0.5], order="shuffled", seed=1)
    c = split_classes(20, [0.25, 0.25, 0.5], order="shuffled", seed=2)
    assert a == b and a != c
    assert sorted(a.order) == list(range(20))
    rank = a.rank
    assert [a.order[r] for r in rank.tolist()] == list(range(20))
    gof = a.group_of
    for k, grp in enumerate(a.groups):
        assert torch.all(gof[list(grp)] == k)
        # ordered positions of group k are its offset range
        assert sorted(rank[list(grp)].tolist()) == list(range(a.offsets[k], a.offsets[k + 1]))

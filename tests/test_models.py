"""Backbones, the growing student, TR heads and MAC counting, on real torch modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edray.errors import EdrayError
from edray.models import ARCHITECTURES, Backbone, GrowingStudent, TRHead, build_backbone, count_macs
from edray.models.student import segment_sizes

TORCHVISION = {"resnet18", "resnet34", "resnet50", "mobilenet_v2"}
EXPECTED = {
    "cnn_small", "cnn_medium", "cnn_large",
    "resnet20", "resnet32", "resnet56", "resnet110",
    "wrn_16_2", "wrn_16_4", "wrn_40_2", "wrn_28_10",
    *TORCHVISION,
}  # fmt: skip


def _unit_shapes(model: Backbone, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    for unit in model.units:
        x = unit(x)
        shapes.append(tuple(x.shape))
    return shapes


def _small_student(grade_classes: list[int], seed: int = 0) -> GrowingStudent:
    torch.manual_seed(seed)
    backbone = build_backbone("cnn_small", num_classes=grade_classes[-1], in_channels=1, image_size=8)
    return GrowingStudent(backbone, grade_classes)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


# ---------------------------------------------------------------- backbones


def test_registry_holds_every_promised_architecture():
    assert EXPECTED <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_widths_match_real_unit_outputs(arch):
    size = 32 if arch in TORCHVISION else 8
    torch.manual_seed(0)
    model = build_backbone(arch, num_classes=7, in_channels=1, image_size=size).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        shapes = _unit_shapes(model, x)
        logits = model(x)
        features = model.forward_features(x)
    assert [s[1] for s in shapes] == model.widths
    assert all(s[0] == 2 and s[2] >= 1 and s[3] >= 1 for s in shapes)
    assert tuple(features.shape) == shapes[-1]
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.num_classes == 7
    assert isinstance(model.classifier, nn.Sequential)
    assert isinstance(model.classifier[-1], nn.Linear)
    assert (model.classifier[-1].in_features, model.classifier[-1].out_features) == (model.widths[-1], 7)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_nets_keep_imagenet_strides_for_large_images(arch):
    model = build_backbone(arch, num_classes=5, in_channels=3, image_size=96).eval()
    with torch.no_grad():
        shapes = _unit_shapes(model, torch.randn(1, 3, 96, 96))
    assert [s[1] for s in shapes] == model.widths
    assert [s[2] for s in shapes] == [24, 12, 6, 3]  # output strides 4, 8, 16, 32


def test_small_images_are_not_downsampled_to_nothing():
    for arch, units in (("resnet18", 4), ("resnet20", 3), ("wrn_16_2", 3), ("cnn_small", 3)):
        model = build_backbone(arch, num_classes=3, in_channels=3, image_size=32).eval()
        with torch.no_grad():
            shapes = _unit_shapes(model, torch.randn(1, 3, 32, 32))
        assert len(shapes) == units
        assert shapes[0][2] == 32 and shapes[-1][2] == 32 // 2 ** (units - 1), arch


def test_unknown_arch_is_an_edray_error_listing_names():
    with pytest.raises(EdrayError) as err:
        build_backbone("resnet_9000", num_classes=10, in_channels=3, image_size=32)
    assert err.value.path == "arch"
    assert "resnet_9000" in err.value.problem
    assert "cnn_small" in err.value.fix and "wrn_28_10" in err.value.fix


def test_non_positive_sizes_are_edray_errors():
    with pytest.raises(EdrayError) as err:
        build_backbone("cnn_small", num_classes=0, in_channels=1, image_size=8)
    assert err.value.path == "num_classes"


def test_backbone_rejects_widths_that_do_not_match_units():
    with pytest.raises(ValueError):
        Backbone([nn.Identity(), nn.Identity()], [4], num_classes=2)


# ---------------------------------------------------------------- MACs


def test_count_macs_matches_hand_count_and_restores_mode():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )  # fmt: skip
    model.train()
    expected = 4 * 6 * 6 * 2 * 9 + 4 * 3 * 3 * 2 * 9 + 5 * 36
    assert count_macs(model, (2, 6, 6)) == expected
    assert count_macs(model, (3, 2, 6, 6)) == expected  # a batch shape counts per sample
    assert all(m.training for m in model.modules())


def test_large_cnn_costs_at_least_four_times_the_small_one():
    small = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=8)
    medium = build_backbone("cnn_medium", num_classes=10, in_channels=1, image_size=8)
    large = build_backbone("cnn_large", num_classes=10, in_channels=1, image_size=8)
    macs = [count_macs(m, (1, 8, 8)) for m in (small, medium, large)]
    assert macs[0] < macs[1] < macs[2]
    assert macs[2] >= 4 * macs[0]


# ---------------------------------------------------------------- student


def test_segment_sizes_are_balanced_with_main_body_first():
    assert segment_sizes(3, 3) == [1, 1, 1]
    assert segment_sizes(4, 3) == [2, 1, 1]
    assert segment_sizes(3, 2) == [2, 1]
    assert segment_sizes(4, 1) == [4]
    with pytest.raises(ValueError):
        segment_sizes(3, 4)


def test_tr_head_shapes_and_hidden_width():
    head = TRHead(16, 5, hidden=8)
    assert head.conv.out_channels == 8 and head.fc.in_features == 8
    assert head(torch.randn(3, 16, 4, 4)).shape == (3, 5)
    assert TRHead(16, 5).conv.out_channels == 16


@pytest.mark.parametrize("grade_classes", [[10], [4, 10], [3, 6, 10]])
def test_output_shape_per_grade(grade_classes):
    student = _small_student(grade_classes)
    assert student.num_grades == len(grade_classes) == len(student.segments)
    assert len(student.heads) == len(grade_classes) - 1
    assert student.grade == 1
    x = torch.randn(4, 1, 8, 8)
    for g, classes in enumerate(grade_classes, start=1):
        student.set_grade(g)
        assert student.grade == g
        assert student(x).shape == (4, classes)
    assert student.head(len(grade_classes)) is student.classifier


def test_four_unit_backbone_in_three_grades():
    backbone = build_backbone("resnet18", num_classes=6, in_channels=3, image_size=16)
    student = GrowingStudent(backbone, [2, 4, 6]).eval()
    assert [len(s) for s in student.segments] == [2, 1, 1]
    assert student.segment_widths == [128, 256, 512]
    with torch.no_grad():
        for g, classes in enumerate([2, 4, 6], start=1):
            student.set_grade(g)
            assert student(torch.randn(2, 3, 16, 16)).shape == (2, classes)


def test_only_the_active_grade_gets_gradients():
    student = _small_student([3, 6, 10])
    student(torch.randn(4, 1, 8, 8)).sum().backward()
    used = _ids(student.grade_parameters(1))
    for p in student.parameters():
        assert (p.grad is not None) == (id(p) in used)


def test_set_grade_preserves_trained_weights():
    student = _small_student([3, 6, 10])
    before_training = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.SGD(student.grade_parameters(1), lr=0.5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(student(x), y).backward()
    optimizer.step()
    trained = {k: v.clone() for k, v in student.state_dict().items()}
    seg1 = [k for k in trained if k.startswith("segments.0.")]
    assert any(not torch.equal(trained[k], before_training[k]) for k in seg1)  # the step did train segment 1

    for g in (2, 3, 1, 3):
        student.set_grade(g)
        after = student.state_dict()
        assert after.keys() == trained.keys()
        for k in trained:
            assert torch.equal(after[k], trained[k]), k


def test_state_dict_fits_every_grade():
    trained = _small_student([3, 6, 10], seed=1)
    trained.set_grade(3)
    fresh = _small_student([3, 6, 10], seed=2)
    fresh.set_grade(1)
    fresh.load_state_dict(trained.state_dict())  # strict: same keys and shapes at any grade
    trained.eval()
    fresh.eval()
    x = torch.randn(2, 1, 8, 8)
    for g in (1, 2, 3):
        trained.set_grade(g)
        fresh.set_grade(g)
        assert torch.equal(trained(x), fresh(x))


def test_to_backbone_is_the_trained_plain_model():
    student = _small_student([3, 6, 10]).eval()
    student.set_grade(3)
    model = student.to_backbone()
    assert isinstance(model, Backbone)
    assert not any(isinstance(m, TRHead) for m in model.modules())
    assert model.classifier is student.classifier
    assert _ids(model.parameters()) == _ids(student.grade_parameters(3))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), student(x))
        # The export reloads into a freshly built architecture: same keys, same logits.
        rebuilt = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt(x), student(x))


def test_new_and_grade_parameters_are_consistent():
    student = _small_student([3, 6, 10])
    everything = _ids(student.parameters())
    new = [_ids(student.new_parameters(g)) for g in (1, 2, 3)]
    assert new[0] == _ids(student.grade_parameters(1))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not new[a] & new[b]
    assert set().union(*new) | _ids(student.heads[0].parameters()) | _ids(student.heads[1].parameters()) == everything
    for g in (2, 3):
        previous = _ids(student.grade_parameters(g - 1)) - _ids(student.head(g - 1).parameters())
        assert _ids(student.grade_parameters(g)) == previous | new[g - 1]
        assert not _ids(student.head(g - 1).parameters()) & _ids(student.grade_parameters(g))
    assert _ids(student.grade_parameters(3)) == _ids(student.to_backbone().parameters())


def test_more_grades_than_units_is_an_edray_error():
    backbone = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(EdrayError) as err:
        GrowingStudent(backbone, [2, 4, 6, 10])
    assert err.value.path == "ed.grades"
    assert "3" in err.value.fix


def test_a_grade_without_new_classes_is_an_edray_error():
    backbone = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(EdrayError) as err:
        GrowingStudent(backbone, [4, 4, 10])
    assert err.value.path == "ed.split_ratios"


def test_bad_grade_numbers_are_rejected():
    student = _small_student([3, 6, 10])
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError):
            student.set_grade(bad)
    assert student.grade == 1

"""Pretrained teachers: torchvision weights read from a real file in a temp TORCH_HOME, never downloaded."""

from __future__ import annotations

import pytest
import torch
import torchvision

from edray.errors import EdrayError
from edray.layout import Layout
from edray.models import build_backbone
from edray.models.pretrained import load_weights, weights_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _place_resnet18(torch_home) -> dict[str, torch.Tensor]:
    """A freshly initialised torchvision resnet18's weights, saved where torchvision looks for IMAGENET1K_V1."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = weights_file("resnet18", "IMAGENET1K_V1")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's own file name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_pretrained_weights_load_from_the_torch_cache_with_a_new_classifier(torch_home):
    state = _place_resnet18(torch_home)
    assert torch.equal(load_weights("resnet18", "IMAGENET1K_V1")["fc.weight"], state["fc.weight"])
    model = build_backbone("resnet18", num_classes=7, in_channels=3, image_size=32, pretrained="IMAGENET1K_V1")
    stem = model.units[0]
    assert stem[0].kernel_size == (7, 7)  # torchvision's ImageNet stem, even at 32 px: the weights need it
    assert torch.equal(stem[0].weight, state["conv1.weight"])
    assert torch.equal(model.units[3][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(stem[1].running_mean, state["bn1.running_mean"])
    fc = model.classifier[-1]
    assert (fc.in_features, fc.out_features) == (512, 7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    layout = build_backbone("resnet18", num_classes=7, in_channels=3, image_size=32, pretrained="IMAGENET1K_V1",
                            load_weights=False)  # for loading a fine-tuned checkpoint: same keys and shapes
    assert {k: v.shape for k, v in layout.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert not torch.equal(layout.units[0][0].weight, state["conv1.weight"])


def test_missing_weights_give_one_line_naming_the_file_and_the_fix(torch_home):
    field = "teachers.models[0].pretrained"
    with pytest.raises(EdrayError) as err:
        build_backbone("resnet50", num_classes=3, in_channels=3, image_size=64, pretrained="IMAGENET1K_V2",
                       field=field)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{field}: ResNet50_Weights.IMAGENET1K_V2 is not in the torch cache")
    assert str(torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in text
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in err.value.fix
    assert "TORCH_HOME" in err.value.fix
    assert not (torch_home / "hub").exists()  # nothing downloaded, nothing half-written


def test_bad_pretrained_requests_are_refused(torch_home):
    with pytest.raises(EdrayError, match=r"'IMAGENET9K' is not a torchvision weight of resnet18.*IMAGENET1K_V1"):
        build_backbone("resnet18", num_classes=3, in_channels=3, image_size=32, pretrained="IMAGENET9K")
    with pytest.raises(EdrayError, match="cnn_small has no torchvision weights"):
        build_backbone("cnn_small", num_classes=3, in_channels=3, image_size=32, pretrained="IMAGENET1K_V1")
    with pytest.raises(EdrayError, match="take RGB images, this dataset has 1 channels"):
        build_backbone("resnet18", num_classes=3, in_channels=1, image_size=32, pretrained="IMAGENET1K_V1")
    path = weights_file("resnet18", "IMAGENET1K_V1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EdrayError, match=r"cannot read .*resnet18-f37072fd.pth"):
        load_weights("resnet18", "IMAGENET1K_V1")


def test_a_pretrained_teacher_is_fine_tuned_saved_and_reloaded(torch_home, tmp_path):
    from edray.data import load_data
    from edray.distill.teachers import load_teacher, teacher_path
    from edray.pipeline import teach
    from edray.spec import load_spec
    from tests.conftest import DIGITS_YAML
    from tests.helpers import write_image_folder

    state = _place_resnet18(torch_home)
    root = write_image_folder(tmp_path / "data", classes=3, per_class=6)
    teacher = "{arch: resnet18, pretrained: IMAGENET1K_V1, train: {epochs: 1, batch_size: 8, lr: 0.01}}"
    spec = load_spec(DIGITS_YAML, ["dataset.name=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                                   "method=kd", f"teachers.models=[{teacher}]", "optim.precision=bf16"])
    data = load_data(spec.dataset)
    [trained] = teach(spec, Layout.at(tmp_path / "work"), data=data)
    assert trained.path.is_file() and trained.model.classifier[-1].out_features == 3
    tuned = trained.model.units[3][1].conv2.weight.detach().cpu()
    placed = state["layer4.1.conv2.weight"]
    assert not torch.equal(tuned, placed)  # fine-tuned, not frozen ...
    # ... from the placed weights (another init would be ~1.4 away in this measure)
    assert (tuned - placed).norm() / placed.norm() < 0.3
    again = load_teacher(spec, 0, data, Layout.at(tmp_path / "work"))
    assert torch.equal(again.model.units[3][1].conv2.weight, tuned)
    scratch = load_spec(DIGITS_YAML, ["dataset.name=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                                      "method=kd", "teachers.models=[{arch: resnet18}]"])
    # never mistaken for a scratch teacher
    assert teacher_path(scratch, 0, data, Layout.at(tmp_path / "work")) != trained.path

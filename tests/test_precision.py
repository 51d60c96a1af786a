"""Mixed precision (edray.distill.precision): resolution per device, autocast, scaler, errors."""

from __future__ import annotations

import pytest
import torch

from edray.distill.precision import Precision, prepare_model, resolve_precision, to_device
from edray.errors import EdrayError
from edray.models import build_backbone


def test_auto_is_fp32_on_cpu_and_bf16_runs_when_asked():
    assert resolve_precision("auto", "cpu") == Precision("fp32", "cpu")
    assert resolve_precision("fp32", "cpu").dtype is None
    bf16 = resolve_precision("bf16", "cpu")
    assert bf16.dtype is torch.bfloat16 and not bf16.grad_scaler().is_enabled()
    model = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=8)
    x = torch.randn(4, 1, 8, 8)
    with bf16.autocast():
        out = model(x)
    assert out.dtype is torch.bfloat16  # the linear layers really ran in bf16
    with resolve_precision("fp32", "cpu").autocast():
        assert model(x).dtype is torch.float32
    assert all(p.dtype is torch.float32 for p in model.parameters())  # weights stay fp32


def test_fp16_on_cpu_is_a_one_line_error():
    with pytest.raises(EdrayError) as err:
        resolve_precision("fp16", "cpu")
    assert str(err.value) == (
        "optim.precision: fp16 needs a CUDA GPU; this run is on the CPU; fix: use bf16, fp32 or auto on a CPU"
    )
    assert err.value.exit_code == 2


def test_cpu_batches_and_models_are_left_as_they_are():
    model = build_backbone("cnn_small", num_classes=3, in_channels=3, image_size=8)
    assert prepare_model(model, "cpu") is model
    x = torch.randn(2, 3, 8, 8)
    assert to_device(x, "cpu") is x and x.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_uses_amp_channels_last_and_pinned_copies():
    precision = resolve_precision("auto", "cuda")
    assert precision.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    model = prepare_model(build_backbone("resnet18", num_classes=5, in_channels=3, image_size=96), "cuda")
    x = to_device(torch.randn(2, 3, 96, 96), "cuda")
    assert x.is_contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        assert model(x).dtype is precision.dtype


def test_bf16_training_on_cpu_is_finite_and_as_accurate_as_fp32(digits_data):
    """A whole run under bf16 autocast (the loop, evaluation and export), set against fp32.

    Two comparisons: one the code guarantees (the same fp32 weights evaluated with and
    without autocast: bf16 only rounds the logits, so few near-ties flip), and the one a
    user cares about (both trainings reach the same test accuracy within 2 points; seen
    0-1.1 points apart over seven seeds here).
    """
    from edray.distill.loop import _evaluate, run_ed
    from tests.conftest import fast_spec

    fp32 = run_ed(fast_spec("method=ce", "optim.precision=fp32"), digits_data, None)
    bf16 = run_ed(fast_spec("method=ce", "optim.precision=bf16"), digits_data, None)
    losses = [m.train_loss for m in bf16.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert bf16.test_acc > 0.9 and abs(bf16.test_acc - fp32.test_acc) <= 0.02
    assert all(p.dtype is torch.float32 for p in bf16.model.parameters())  # a plain fp32 model is exported
    classes = torch.arange(digits_data.num_classes)
    test = digits_data.test
    plain, _ = _evaluate(fp32.model, test, classes, len(classes), "cpu", resolve_precision("fp32", "cpu"))
    autocast, _ = _evaluate(fp32.model, test, classes, len(classes), "cpu", resolve_precision("bf16", "cpu"))
    assert plain == fp32.test_acc and abs(autocast - plain) <= 0.02

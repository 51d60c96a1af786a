"""The final evaluation reads the test split, all of it once, and nothing else; a sweep's
trials (``evaluate_test=False``) never read it. The test split here is made unlike the
validation split (its own size, labels rotated), so a score from the wrong split shows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edray.data.imagesets import SubsetImageSet
from edray.distill.loop import run_ed

from .conftest import fast_spec


class CountedImages(SubsetImageSet):
    """A real subset of a split that counts the rows read from it."""

    def __init__(self, base, rows, labels=None):
        super().__init__(base, rows)
        if labels is not None:
            self.labels = labels
        self.rows_read = 0

    def load(self, indices):
        self.rows_read += len(indices)
        return super().load(indices)

    def load_pixels(self, indices):
        self.rows_read += len(indices)
        return super().load_pixels(indices)


def _splits(digits_data):
    val = CountedImages(digits_data.val, torch.arange(len(digits_data.val)))
    # 37 rows of the validation images with every label moved to the next class.
    rows = torch.arange(37)
    test = CountedImages(digits_data.val, rows, labels=(digits_data.val.labels[rows] + 1) % digits_data.num_classes)
    return dataclasses.replace(digits_data, val=val, test=test), val, test


def _accuracy(model, images) -> float:
    with torch.no_grad():
        pred = model(images.load(torch.arange(len(images)))).argmax(1)
    return (pred == images.labels).sum().item() / len(images)


@pytest.mark.parametrize("evaluate_test", [True, False])
def test_final_evaluation_reads_the_test_split_once_and_only_it(evaluate_test, digits_data):
    spec = fast_spec("method=ce", "optim.epochs=3", "ed.switch_epochs=[1, 2]")
    data, val, test = _splits(digits_data)
    result = run_ed(spec, data, None, evaluate_test=evaluate_test)
    assert val.rows_read == spec.optim.epochs * len(val)  # one validation pass per epoch
    if not evaluate_test:
        assert test.rows_read == 0 and result.test_acc is None
        return
    read = test.rows_read
    assert read == len(test)  # every test row once
    expected = _accuracy(result.model, test)
    assert result.test_acc == pytest.approx(expected, abs=1e-12)
    assert round(result.test_acc * len(test)) == pytest.approx(result.test_acc * len(test), abs=1e-9)
    # The same images with their true labels score otherwise: the score is the rotated split's.
    assert _accuracy(result.model, SubsetImageSet(digits_data.val, torch.arange(37))) != pytest.approx(expected)

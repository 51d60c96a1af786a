"""Every field of the logit-store key names another store, and a store built for other
views is refused (naming the field), never read in place of the right one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from edray.distill.precompute import store_key
from edray.distill.stored_teachers import open_teacher_stores
from edray.distill.teachers import load_teacher
from edray.errors import EdrayError
from edray.layout import Layout
from edray.logits.key import FORMAT_VERSION, StoreKey
from edray.logits.reader import open_store
from edray.pipeline import make_teacher_logits
from edray.preparation import LocalRunner, plan_preparation, precompute_stores, prepare

from .conftest import fast_spec

BASE = StoreKey(
    teacher_arch="cnn_medium", teacher_sha256="ab" * 32, dataset_name="digits", dataset_split="train",
    dataset_samples=1222, dataset_fingerprint="cd" * 32, crop_padding=1, hflip=False, image_size=8,
    normalisation="mean=0.3;std=0.4", views=8, seed=0,
)
# Another value for each field: the teacher's bytes, the data, the transform, views, seed, format.
CHANGED = {
    "teacher_arch": "cnn_large", "teacher_sha256": "ef" * 32, "dataset_name": "cifar100", "dataset_split": "val",
    "dataset_samples": 1221, "dataset_fingerprint": "ce" * 32, "crop_padding": 2, "hflip": True, "image_size": 32,
    "normalisation": "mean=0.5;std=0.4", "views": 4, "seed": 1, "format_version": FORMAT_VERSION + 1,
}


def test_the_table_names_every_field_of_the_key():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(StoreKey)}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_each_field_changes_the_key_and_is_named_when_it_differs(field):
    other = dataclasses.replace(BASE, **{field: CHANGED[field]})
    assert other.digest() != BASE.digest() and other.name != BASE.name
    assert [name for name, _, _ in other.differences(BASE.fields())] == [field]
    assert StoreKey.from_fields(other.fields()) == other  # what a manifest gives back


def test_a_store_of_other_views_is_refused_and_a_new_one_built(tmp_path, digits_data, teacher_workdir):
    workdir = tmp_path / "work"
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    layout = Layout.at(workdir)
    two = fast_spec("method=kd", "teachers.views=2")
    three = fast_spec("method=kd", "teachers.views=3")
    built = {info.split: info.path for info in precompute_stores(two, digits_data, layout)}
    before = sorted(p.relative_to(workdir) for p in (workdir / "logits").rglob("*"))

    with pytest.raises(EdrayError, match="no logit store here.*edray precompute"):
        open_teacher_stores(three, digits_data, layout)  # the 2-view store is not taken for a 3-view one
    teacher = load_teacher(three, 0, digits_data, layout)
    with pytest.raises(EdrayError, match="built for a different views: store has 2"):
        open_store(built["train"], store_key(three, teacher, digits_data, "train", views=3))

    # What `edray train` does: prepare what the spec needs, then read it.
    prepare(plan_preparation(three, digits_data, layout), three, digits_data, layout, LocalRunner())
    stores = make_teacher_logits(three, digits_data, layout)
    assert stores.views == 3 and stores.stores[0].path != str(built["train"])
    assert Path(stores.stores[0].path).name == store_key(three, teacher, digits_data, "train", views=3).name
    # The 2-view store is still there, unchanged, for the runs that want it.
    assert open_teacher_stores(two, digits_data, layout).views == 2
    after = sorted(p.relative_to(workdir) for p in (workdir / "logits").rglob("*"))
    assert set(before) <= set(after)

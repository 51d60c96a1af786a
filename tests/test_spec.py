"""Spec loading: the default validates, errors name the field, overrides reach any leaf."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edray.errors import EdrayError
from edray.spec import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits.yaml"


def _digits() -> dict:
    return yaml.safe_load(DIGITS.read_text())


def test_digits_spec_loads():
    spec = load_spec(DIGITS)
    assert spec.dataset.name == "digits" and spec.ed.grades == 3
    assert spec.ed.switch_epochs[0] < spec.ed.switch_epochs[1] < spec.optim.epochs


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["ed"].update(alpah=0.3), "ed.alpah"),
        (lambda d: d.update(methd="ed"), "methd"),
        (lambda d: d["ed"].update(switch_epochs=[12, 6]), "ed.switch_epochs"),
        (lambda d: d["ed"].update(switch_epochs=[6, 6]), "ed.switch_epochs"),
        (lambda d: d["ed"].update(split_ratios=[0.5, 0.2, 0.2]), "ed.split_ratios"),
        (lambda d: d["ed"].update(split_ratios=[0.5, 0.5]), "ed"),
        (lambda d: d["ed"].update(temperatures=[4, -1, 4]), "ed.temperatures"),
        (lambda d: d["ed"].update(temperatures=[4, 0, 4]), "ed.temperatures"),
        (lambda d: d["ed"].update(alpha=1.5), "ed.alpha"),
        (lambda d: d["ed"].update(replay="random"), "ed.replay"),
        (lambda d: d.update(method="dkd"), "method"),
        (lambda d: d["optim"].update(lr="fast"), "optim.lr"),
        (lambda d: d["optim"].update(epochs=10), "spec"),  # switch at 12 >= 10 epochs
        (lambda d: d["teachers"].update(models=[]), "teachers.models"),
        (lambda d: d["teachers"]["models"][1].update(arch=None), "teachers.models[1].arch"),
        (lambda d: d.pop("student"), "student"),
        (lambda d: d["dataset"].update(val_fraction=1.5), "dataset.val_fraction"),
        (lambda d: d["teachers"].update(mode="per_group", models=d["teachers"]["models"][:2]), "spec"),
    ],
)
def test_bad_specs_name_the_field(mutate, path):
    data = _digits()
    mutate(data)
    with pytest.raises(EdrayError) as err:
        spec_from_dict(data)
    assert err.value.path == path, str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_reach_leaves_and_list_items(tmp_path):
    spec = load_spec(DIGITS, ["ed.alpha=0.5", "ed.temperatures[1]=2", "optim.schedule.kind=constant",
                              "ed.switch_epochs=[3, 9]", "dataset.augmentation.hflip=true"])
    assert spec.ed.alpha == 0.5 and spec.ed.temperatures == [4.0, 2.0, 4.0]
    assert spec.optim.schedule.kind == "constant" and spec.ed.switch_epochs == [3, 9]
    assert spec.dataset.augmentation.hflip is True


@pytest.mark.parametrize("override", ["ed.alhpa=0.5", "ed.temperatures[7]=1", "noequals", "ed.alpha=2"])
def test_bad_overrides_are_errors(override):
    with pytest.raises(EdrayError):
        load_spec(DIGITS, [override])


def test_override_of_default_only_key():
    spec = load_spec(DIGITS, ["dataset.image_size=16"])
    assert spec.dataset.image_size == 16


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(EdrayError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ed: [1, 2\n")
    with pytest.raises(EdrayError, match="invalid YAML"):
        load_spec(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(EdrayError, match="empty"):
        load_spec(empty)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(EdrayError, match="mapping"):
        load_spec(scalar)


def test_cli_validate_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edray.cli", "validate", str(DIGITS)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = _digits()
    data["ed"]["alpah"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "edray.cli", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ed.alpah: unknown key") and res.stderr.count("\n") == 1
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == [bad]  # nothing written

"""Every shipped spec validates and compiles its search space (`--dry-run`), offline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edray.distributed.space import sample_configs
from edray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_all_expected_specs_ship():
    names = {p.stem for p in SPECS}
    assert {"digits", "cifar100", "caltech256", "food101", "tiny_imagenet"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_validates_and_samples(path):
    spec = load_spec(path)
    assert spec.search is not None
    configs = sample_configs(spec, 4)
    assert len(configs) == 4


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_cli_validate_and_dry_run(path, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edray.cli", "validate", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    workdir = tmp_path / "work"
    dry = subprocess.run(
        [sys.executable, "-m", "edray.cli", "sweep", str(path), "--dry-run", "--json", "--workdir", str(workdir)],
        capture_output=True, text=True,
    )
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] and len(summary["samples"]) == 3 and summary["space"]
    assert not workdir.exists()  # a dry run writes nothing


def test_paper_setting():
    spec = load_spec(ROOT / "search_spaces" / "cifar100.yaml")
    assert spec.student.arch == "resnet20" and {t.arch for t in spec.teachers.models} == {"resnet110"}
    assert spec.optim.epochs == 240 and spec.ed.switch_epochs == [150, 180]
    assert spec.optim.schedule.milestones == [150, 180, 210] and spec.ed.alpha == 0.3

"""The search-space compiler: constraints hold in every sample, bad spaces are errors."""

from pathlib import Path

import optuna
import pytest

from edray.distributed.space import compile_space, default_point, describe_space, resolve_config, sample_configs
from edray.errors import EdrayError
from edray.preflight import preflight
from edray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits.yaml"


def test_samples_respect_ed_constraints():
    spec = load_spec(DIGITS)
    configs = sample_configs(spec, 60, seed=3)
    p_switch = next(p for p in spec.search.params if p.type == "switch_epochs")
    p_ratio = next(p for p in spec.search.params if p.type == "split_ratios")
    for c in configs:
        trial = resolve_config(spec, c)
        n, m = trial.ed.switch_epochs
        assert p_switch.min_grade_epochs <= n and n + p_switch.min_grade_epochs <= m
        assert m + p_switch.min_grade_epochs <= trial.optim.epochs
        assert abs(sum(trial.ed.split_ratios) - 1) < 1e-6
        assert all(p_ratio.low - 1e-9 <= r <= p_ratio.high + 1e-9 for r in trial.ed.split_ratios)
        assert all(1.0 <= t <= 8.0 for t in trial.ed.temperatures)
        assert trial.ed.replay in ("sequential", "mixed")
    # the space is explored, not constant
    assert len({tuple(resolve_config(spec, c).ed.switch_epochs) for c in configs}) > 5


def test_default_point_is_the_spec_itself():
    spec = load_spec(DIGITS)
    point = default_point(spec)
    assert point["ed.switch_epochs[0]"] == spec.ed.switch_epochs[0]
    assert point["ed.alpha"] == spec.ed.alpha
    # the point is inside the space: optuna can enqueue and replay it
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(point)
    trial = study.ask()
    constants = compile_space(spec)(trial)
    assert {**trial.params, **constants}["ed.split_ratios[2]"] == pytest.approx(spec.ed.split_ratios[2])


def test_seeded_sampling_is_repeatable():
    spec = load_spec(DIGITS)
    assert sample_configs(spec, 5, seed=1) == sample_configs(spec, 5, seed=1)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("search.params[0].min_grade_epochs=20", "search.params"),  # 3 grades x 20 > 30 epochs
        ("search.params[3].path=ed.alhpa", "search.params[3].path"),
        ("search.params[1].low=0.5", "search.params[1]"),  # 3 ratios >= 0.5 cannot sum to 1
        ("search.params[2].path=optim.momentum", "search.params[2].path"),  # temperatures type on a scalar
        ("search.params[3].path=ed.temperatures[x]", "search.params[3].path"),  # a bad index, not a --set
    ],
)
def test_impossible_spaces_are_errors(override, field):
    spec = load_spec(DIGITS, [override])
    with pytest.raises(EdrayError) as err:
        compile_space(spec)
    assert err.value.path == field


def test_a_bad_index_is_blamed_where_the_path_came_from():
    spec = load_spec(DIGITS, ["search.params[3].path=ed.temperatures[x]"])
    with pytest.raises(EdrayError) as err:
        preflight(spec, offline=True)  # the same check, without Optuna
    assert str(err.value).startswith("search.params[3].path: bad index [x] in ed.temperatures[x]")
    with pytest.raises(EdrayError) as err:
        load_spec(DIGITS, ["ed.temperatures[x]=2"])
    assert str(err.value).startswith("--set ed.temperatures[x]: bad index [x];")


@pytest.mark.parametrize(
    "override",
    ["search.params[1].low=0.6", "search.params[2].low=-1", "search.params=[]", "search.params[5].choices=[]"],
)
def test_invalid_search_params_fail_validation(override):
    with pytest.raises(EdrayError):
        load_spec(DIGITS, [override])


def test_describe_space_has_a_line_per_param():
    spec = load_spec(DIGITS)
    assert len(describe_space(spec)) == len(spec.search.params)

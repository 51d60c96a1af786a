"""Every user mistake is one line naming the field, exit code 2, no traceback, nothing written.

Each case is a real spec file (the shipped digits spec, broken one way) run through the
real CLI entry point, as a user would run it: ``validate`` for most, and ``train``,
``teach``, ``precompute`` or ``sweep`` where the mistake is theirs to catch. A property
based fuzzer then throws arbitrary trees, texts and overrides at the spec loader: it may
only ever raise :class:`EdrayError`.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from collections.abc import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edray.cli import main
from edray.errors import EdrayError
from edray.spec import Spec, apply_overrides, load_spec, spec_from_dict

from .conftest import DIGITS_YAML

BASE = yaml.safe_load(DIGITS_YAML.read_text())
GRADES3 = {"split_ratios": [0.33, 0.33, 0.34], "temperatures": [4.0, 4.0, 4.0]}


def _set(path: str, value) -> Callable[[dict], None]:
    """A mutation that writes ``value`` at a dotted path (``a.b.0.c``), creating nothing."""

    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _grades(n: int) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        d["ed"].update(grades=n, split_ratios=[1 / n] * (n - 1) + [1 - (n - 1) / n], temperatures=[4.0] * n,
                       switch_epochs=list(range(2, 2 * n, 2)))
        d["search"] = None

    return mutate


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        for m in mutations:
            m(d)

    return mutate


# (id, mutation of the digits spec / raw YAML text / None for the spec as shipped, command + args, text of the line)
CASES: list[tuple[str, Callable[[dict], None] | str | None, list[str], str]] = [
    # -- misspelt keys and wrong types
    ("misspelt top-level key", _set("methd", "ed"), ["validate"], "methd: unknown key"),
    ("misspelt nested key", _set("ed.alpah", 0.3), ["validate"], "ed.alpah: unknown key"),
    ("misspelt --set key", None, ["validate", "--set", "ed.alhpa=0.5"], "--set ed.alhpa: unknown key 'alhpa'"),
    ("--set without =", None, ["validate", "--set", "ed.alpha"], "--set ed.alpha: expected path.to.key=value"),
    ("--set index out of range", None, ["validate", "--set", "ed.temperatures[7]=1"], "index 7 is out of range"),
    ("string for a float", _set("optim.lr", "fast"), ["validate"], "optim.lr:"),
    ("fraction for an int", _set("optim.epochs", 3.5), ["train"], "optim.epochs:"),
    ("boolean for an int", _set("optim.epochs", True), ["validate"], "optim.epochs: must be a number, not a boolean"),
    ("string for a section", _set("teachers", "resnet"), ["validate"], "teachers:"),
    ("no teachers", _set("teachers.models", []), ["teach"], "teachers.models:"),
    ("missing section", _drop("student"), ["validate"], "student: is required"),
    ("null architecture", _set("student.arch", None), ["validate"], "student.arch:"),
    ("unknown method", _set("method", "dkd"), ["train"], "method:"),
    ("name with a slash", _set("name", "my sweep/1"), ["validate"], "name:"),
    # -- the ED recipe
    ("n > m", _set("ed.switch_epochs", [12, 6]), ["validate"], "ed.switch_epochs: switch epochs must strictly"),
    ("n == m", _set("ed.switch_epochs", [6, 6]), ["sweep", "--dry-run"], "ed.switch_epochs:"),
    ("switch after the last epoch", _set("optim.epochs", 10), ["train"], "ed.switch_epochs [8, 16] must all be <"),
    ("one switch for three grades", _set("ed.switch_epochs", [8]), ["validate"], "switch_epochs needs 2 entries"),
    ("ratios sum to 0.9", _set("ed.split_ratios", [0.5, 0.2, 0.2]), ["validate"], "ed.split_ratios: must sum to 1"),
    ("two ratios for three grades", _set("ed.split_ratios", [0.5, 0.5]), ["validate"], "split_ratios has 2 entries"),
    ("negative ratio", _set("ed.split_ratios", [1.2, -0.1, -0.1]), ["validate"], "ed.split_ratios: every ratio"),
    ("negative temperature", _set("ed.temperatures", [4, -1, 4]), ["train"], "ed.temperatures: temperature [1]"),
    ("zero temperature", _set("ed.temperatures", [4, 0, 4]), ["validate"], "ed.temperatures: temperature [1]"),
    ("NaN temperature", _set("ed.temperatures", [math.nan, 4, 4]), ["validate"], "ed.temperatures[0]: "),
    ("two temperatures for three grades", _set("ed.temperatures", [4, 4]), ["validate"], "temperatures has 2"),
    ("alpha above 1", _set("ed.alpha", 1.5), ["validate"], "ed.alpha:"),
    ("unknown replay", _set("ed.replay", "random"), ["validate"], "ed.replay:"),
    ("more grades than classes", _grades(11), ["train"], "ed.grades: 11 grades need at least 11 classes"),
    ("more grades than student units", _grades(5), ["validate"], "ed.grades: the student has 3 units"),
    # -- names and paths that must exist
    ("unknown dataset", _set("dataset.name", "mnist2"), ["train"], "dataset.name: unknown dataset 'mnist2'"),
    ("unknown student architecture", _set("student.arch", "resnet9000"), ["sweep"], "student.arch: unknown arch"),
    ("unknown teacher architecture", _set("teachers.models.1.arch", "vit"), ["teach"],
     "teachers.models[1].arch: unknown architecture 'vit'"),
    ("missing dataset root", _both(_set("dataset.name", "caltech256"), _set("dataset.root", "/nonexistent/cal")),
     ["precompute"], "dataset.root: no Caltech-256 found at /nonexistent/cal"),
    ("image folder without root", _set("dataset.name", "imagefolder"), ["train"], "dataset.root:"),
    ("missing teacher checkpoint", _set("teachers.models.0.checkpoint", "/nonexistent/t.pt"), ["train"],
     "teachers.models[0].checkpoint: no such file"),
    ("missing logit store directory", _set("teachers.store_uri", "/nonexistent/stores"), ["sweep"],
     "teachers.store_uri: no such directory"),
    ("validation fraction 1.5", _set("dataset.val_fraction", 1.5), ["validate"], "dataset.val_fraction:"),
    ("two per-group teachers for three grades",
     _both(_set("teachers.mode", "per_group"), lambda d: d["teachers"]["models"].pop()), ["teach"],
     "per_group needs one teacher per grade"),
    ("kd from per-group teachers", _both(_set("method", "kd"), _set("teachers.mode", "per_group")), ["validate"],
     "set teachers.mode to shared"),
    ("zero views", _set("teachers.views", 0), ["precompute"], "teachers.views:"),
    # -- optimisation and scaling
    ("zero batch size", _set("optim.batch_size", 0), ["validate"], "optim.batch_size:"),
    ("infinite learning rate", _set("optim.lr", math.inf), ["validate"], "optim.lr: Input should be a finite number"),
    ("milestone after the last epoch", _set("optim.schedule", {"kind": "multistep", "milestones": [50]}),
     ["validate"], "optim.schedule.milestones must be <"),
    ("zero workers", _set("scaling.num_workers", 0), ["validate"], "scaling.num_workers:"),
    ("more loader workers than CPUs", _set("optim.num_workers", 4), ["validate"],
     "optim.num_workers (4) exceeds the CPUs each worker gets (scaling.resources_per_worker.CPU = 1)"),
    ("unknown precision", _set("optim.precision", "fp8"), ["validate"], "optim.precision:"),
    ("fp16 on a CPU", lambda d: (_set("method", "ce")(d), _set("optim.precision", "fp16")(d)), ["train"],
     "optim.precision: fp16 needs a CUDA GPU; this run is on the CPU"),
    ("unknown image cache mode", _set("dataset.cache", "always"), ["validate"], "dataset.cache:"),
    ("batch not divisible by workers", _set("scaling.num_workers", 3), ["sweep"],
     "optim.batch_size (32) must be a multiple of scaling.num_workers (3)"),
    ("negative resources", _set("scaling.resources_per_worker", {"CPU": -1}), ["validate"],
     "scaling.resources_per_worker: resources must be >= 0"),
    # -- the search space
    ("empty search space", _set("search.params", []), ["sweep"], "search.params:"),
    ("no search section", _set("search", None), ["sweep"], "search:"),
    ("low above high", _set("search.params.3", {"path": "ed.alpha", "type": "float", "low": 0.9, "high": 0.1}),
     ["validate"], "search.params[3]: search param ed.alpha: low (0.9) > high (0.1)"),
    ("negative searched temperature", _set("search.params.2.low", -1.0), ["sweep", "--dry-run"],
     "search.params[2]:"),
    ("ratios that cannot sum to 1", _set("search.params.1.low", 0.4), ["validate"],
     "search.params[1]: 3 ratios in [0.4, 0.5] cannot sum to 1"),
    ("grades too long for the epochs", _set("search.params.0.min_grade_epochs", 20), ["sweep"],
     "3 grades of at least 20 epochs do not fit in 40 epochs"),
    ("empty choices", _set("search.params.5.choices", []), ["validate"], "search.params[5]:"),
    ("choice the field refuses", _set("search.params.5.choices", ["sequential", "shuffled"]), ["validate"],
     "search.params[5]: ed.replay = 'shuffled' is not allowed"),
    ("searched alpha above 1", _set("search.params.3.high", 1.5), ["sweep"], "search.params[3]: ed.alpha = 1.5"),
    ("searched path that is no field", lambda d: d["search"]["params"].append(
        {"path": "ed.alphaa", "type": "float", "low": 0.1, "high": 0.2}), ["validate"],
     "search.params[7].path: 'ed.alphaa' is not a spec field"),
    ("searched path twice", lambda d: d["search"]["params"].append(d["search"]["params"][3]), ["validate"],
     "search params repeat ['ed.alpha']"),
    ("misspelt point to evaluate", _set("search.points_to_evaluate", [{"ed.alhpa": 0.3}]), ["sweep"],
     "search.points_to_evaluate[0]: 'ed.alhpa' is not a searched value"),
    ("zero concurrent trials", _set("search.max_concurrent", 0), ["validate"], "search.max_concurrent:"),
    ("MLflow file store", _set("tracking", {"uri": "./mlruns"}), ["sweep"], "tracking.uri: ./mlruns is an MLflow file"),
    # -- the file itself and the flags
    ("invalid YAML", "name: digits\ned: [1, 2\n", ["validate"], "invalid YAML"),
    ("empty file", "", ["train"], "is empty"),
    ("list instead of a mapping", "- 1\n- 2\n", ["validate"], "must be a YAML mapping"),
    ("key written twice", "ed:\n  alpha: 0.3\n  alpha: 0.5\n", ["validate"], "invalid YAML (duplicate key 'alpha')"),
    ("zero trials", _set("search.num_samples", 3), ["sweep", "--num-samples", "0"], "--num-samples: must be >= 1"),
    ("zero views flag", None, ["precompute", "--views", "0"], "--views: must be >= 1"),
    ("zero threads", None, ["train", "--threads", "0"], "--threads: must be >= 1"),
    ("resume of nothing", None, ["sweep", "--resume"], "--resume: no sweep to resume"),
]


@pytest.mark.parametrize(("mutation", "args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_exit_2_nothing_written(mutation, args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default workdir (./edray-out) would land here too
    monkeypatch.delenv("EDRAY_WORKDIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tmp_path / "spec.yaml"
    if mutation is None:  # the shipped spec: the mistake is in the flags
        spec.write_text(DIGITS_YAML.read_text())
    elif isinstance(mutation, str):
        spec.write_text(mutation)
    else:
        data = copy.deepcopy(BASE)
        mutation(data)
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
    command, *extra = args
    code = main([command, str(spec), *extra, "--workdir", str(tmp_path / "work")])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no workdir, no edray-out, no store


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The same contract through the installed entry point, in a fresh interpreter."""
    data = copy.deepcopy(BASE)
    data["ed"]["temperatures"] = [4, -1, 4]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "edray.cli", "sweep", str(spec), "--workdir", str(tmp_path / "w")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error: ed.temperatures: temperature [1] must be > 0") and res.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_valid_spec_still_passes(capsys):
    assert main(["validate", str(DIGITS_YAML)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


# ---------------------------------------------------------------------- property-based fuzzing

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["ed", "kd", "digits", "cnn_small", "shared", "per_group", "1e-3", ""]),
)
_value = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _paths(tree, prefix=()) -> list[tuple]:
    """Every location in a spec tree: dict keys and list positions."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


_PATHS = _paths(BASE)
_OVERRIDE_PATHS = [".".join(map(str, p)) for p in _PATHS] + ["ed.temperatures[1]", "x[", "a.b[0]", "ed[0]"]


@st.composite
def _broken_specs(draw) -> dict:
    """The digits spec with 1-4 random edits: a value replaced, a key removed or added."""
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_PATHS))
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(_value)
            elif action == "delete" and isinstance(node, dict):
                del node[path[-1]]
            elif isinstance(node, dict):
                node[draw(st.text(max_size=8))] = draw(_value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced this branch
    return data


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_edray_errors(call) -> None:
    try:
        result = call()
    except EdrayError as err:
        assert "\n" not in str(err) and err.exit_code == 2
    else:
        assert isinstance(result, Spec)


@_FUZZ
@given(_broken_specs())
def test_fuzz_spec_from_dict_raises_only_its_own_error(data):
    _only_edray_errors(lambda: spec_from_dict(data))


@_FUZZ
@given(_value)
def test_fuzz_any_yaml_value_as_a_spec(data):
    _only_edray_errors(lambda: spec_from_dict(data))


@_FUZZ
@given(st.lists(st.tuples(st.sampled_from(_OVERRIDE_PATHS), st.text(max_size=10)), min_size=1, max_size=3))
def test_fuzz_overrides(pairs):
    overrides = [f"{path}={value}" for path, value in pairs]

    def run():
        return spec_from_dict(apply_overrides(copy.deepcopy(BASE), overrides))

    _only_edray_errors(run)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 _broken_specs().map(lambda d: yaml.safe_dump(d, sort_keys=False))))
def test_fuzz_load_spec_on_any_text(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _only_edray_errors(lambda: load_spec(path))


def test_fuzz_load_spec_on_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00name: \x9f\n")
    with pytest.raises(EdrayError):
        load_spec(path)

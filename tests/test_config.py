"""Every TrainConfig field and every hyperparameter has a type and a range, declared once beside its
definition, and a wrong value is refused with an error that names it and what it allows."""

import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unified_rlhf import checks, objectives
from unified_rlhf.config import EXTENDABLE, TrainConfig, default_config, extendable_fields, field_specs, load_config
from unified_rlhf.data import PACKAGE_ROOT

# (field, value, part of the message): the values the issue found accepted, and their neighbours
WRONG = [
    ("max_steps", 2.5, "max_steps must be an integer in [0, inf), got 2.5"),
    ("max_steps", "abc", "max_steps must be an integer in [0, inf), got 'abc'"),
    ("max_steps", -1, "max_steps must be an integer in [0, inf)"),
    ("max_steps", True, "max_steps must be an integer"),
    ("batch_size", 2.5, "batch_size must be an integer in [1, inf), got 2.5"),
    ("batch_size", 0, "batch_size must be an integer in [1, inf), got 0"),
    ("lr", math.nan, "lr must be a number in (0, 1], got nan"),
    ("lr", math.inf, "lr must be a number in (0, 1], got inf"),
    ("lr", 0, "lr must be a number in (0, 1]"),
    ("lr", "1e-3", "lr must be a number in (0, 1], got '1e-3'"),
    ("lr", 3.5e38, "lr must be a number in (0, 1]"),
    ("grad_clip", math.nan, "grad_clip must be a number in (0, inf]"),
    ("weight_decay", -0.1, "weight_decay must be a number in [0, 100]"),
    ("eval_prompts", -3, "eval_prompts must be an integer in [1, inf), got -3"),
    ("eval_samples", 0, "eval_samples must be an integer in [1, inf)"),
    ("eval_every", -1, "eval_every must be an integer in [0, inf)"),
    ("checkpoint_every", 0, "checkpoint_every must be an integer in [1, inf)"),
    ("max_length", 1, "max_length must be an integer in [2, inf)"),
    ("max_new_tokens", 0, "max_new_tokens must be an integer in [1, inf)"),
    ("samples_per_prompt", -2, "samples_per_prompt must be an integer in [1, inf)"),
    ("temperature", -1.0, "temperature must be a number in [1e-3, 1e3]"),
    ("temperature", 1e-300, "temperature must be a number in [1e-3, 1e3]"),
    ("kl_coef", math.nan, "kl_coef must be a number in [0, 1e3]"),
    ("update_epochs", 0, "update_epochs must be an integer in [1, inf)"),
    ("seed", -1, "seed must be an integer in [0, 4294967295]"),
    ("seed", 2**32, "seed must be an integer in [0, 4294967295]"),
    ("progress", "nope", "progress must be true or false, got 'nope'"),
    ("eval_at_start", 1, "eval_at_start must be true or false, got 1"),
    ("model", "", "model must be a non-empty string"),
    ("model", 3, "model must be a non-empty string"),
    ("reference", 3, "reference must be a non-empty string (or null)"),
    ("hyperparameters", [1], "hyperparameters must be a mapping"),
]


@pytest.mark.parametrize("field, value, message", WRONG)
def test_a_wrong_field_is_named_with_its_range(field, value, message):
    with pytest.raises(checks.SettingError) as error:
        default_config("dpo", **{field: value})
    assert message in str(error.value)


# (method, hyperparameters, part of the message)
WRONG_HYPERPARAMETERS = [
    ("dpo", {"beta": math.nan}, "dpo: hyperparameter 'beta' must be a number in (0, 1e6], got nan"),
    ("dpo", {"beta": math.inf}, "dpo: hyperparameter 'beta' must be a number in (0, 1e6], got inf"),
    ("dpo", {"beta": -1}, "dpo: hyperparameter 'beta' must be a number in (0, 1e6], got -1"),
    ("ipo", {"tau": 1e-300}, "ipo: hyperparameter 'tau' must be a number in [1e-6, 1e6]"),
    ("ppo_clip", {"eps": 1.5}, "ppo_clip: hyperparameter 'eps' must be a number in (0, 1)"),
    ("cdpo", {"eps": 0.7}, "cdpo: hyperparameter 'eps' must be a number in [0, 0.5]"),
    ("unlikelihood", {"kappa": 0}, "unlikelihood: hyperparameter 'kappa' must be a number in (0, 1)"),
    ("una", {"loss": "hinge"}, "una: option 'loss' must be one of 'mse', 'bce', got 'hinge'"),
    ("ipo", {"length_normalize": "nope"}, "ipo: option 'length_normalize' must be true or false, got 'nope'"),
    ("sft", {"length_normalize": 1}, "sft: option 'length_normalize' must be true or false, got 1"),
]


@pytest.mark.parametrize("method, hp, message", WRONG_HYPERPARAMETERS)
def test_a_wrong_hyperparameter_is_named_with_its_range(method, hp, message):
    with pytest.raises(checks.SettingError) as error:
        default_config(method, hyperparameters=hp)
    assert message in str(error.value)


def test_a_hyperparameter_of_the_wrong_type_is_named():
    with pytest.raises(TypeError, match=r"dpo: hyperparameter 'beta' must be a number in \(0, 1e6\], got 'x'"):
        default_config("dpo", hyperparameters={"beta": "x"})


def test_what_a_method_needs_is_checked_with_the_config():
    with pytest.raises(ValueError, match="batch_size must be at least 2 for KTO"):
        default_config("kto", batch_size=1)
    for method in ("grpo", "rloo"):
        with pytest.raises(ValueError, match="samples_per_prompt must be at least 2"):
            default_config(method, samples_per_prompt=1)
    default_config("vpg", samples_per_prompt=1)  # a running baseline needs no group


def test_values_in_range_are_kept_and_integral_floats_become_integers():
    config = default_config("grpo", max_steps=3.0, grad_clip=math.inf, hyperparameters={"beta": 0.0}, model=Path("m"))
    assert config.max_steps == 3 and isinstance(config.max_steps, int)
    assert config.grad_clip == math.inf and config.hyperparameters == {"beta": 0.0} and config.model == "m"


def test_every_field_has_a_type_a_range_where_numeric_and_a_comment_on_its_line():
    source = (PACKAGE_ROOT / "unified_rlhf" / "config.py").read_text().splitlines()
    for f in fields(TrainConfig):
        kind, spec, optional, _ = field_specs()[f.name]
        assert kind in (str, int, float, bool, dict), f.name
        if kind in (int, float):
            assert isinstance(spec, checks.Interval), f"{f.name} declares no range"
        [line] = [line for line in source if re.match(rf"    {f.name}: ", line)]
        assert "  # " in line and len(line.split("  # ", 1)[1]) > 10, f"{f.name} is not documented on its line"
    assert extendable_fields() == {"max_steps", "eval_every", "eval_prompts", "eval_samples", "eval_at_start",
                                   "checkpoint_every", "progress", "reference_cache"}
    assert EXTENDABLE == "may change on --resume"


def test_every_record_declares_valid_ranges_and_its_defaults_and_sweep_lie_in_them():
    for obj in objectives.REGISTRY.values():
        for key, (value, _) in obj.defaults.items():
            assert isinstance(obj.range_of(key), checks.Interval) and value in obj.range_of(key), (obj.name, key)
        for key, default in obj.options.items():
            if isinstance(default, str):
                assert isinstance(obj.range_of(key), tuple) and default in obj.range_of(key), (obj.name, key)
        if obj.sweep is not None and obj.sweep[0] in obj.defaults:
            assert all(v in obj.range_of(obj.sweep[0]) for v in obj.sweep[1]), obj.name
    with pytest.raises(checks.SettingError, match="'beta' must be a number in"):
        objectives.register(objectives.Objective("bad_range", objectives.get("dpo").formula, shape="paired",
                                                 family="paired", data="paired", paper="",
                                                 defaults={"beta": (-1.0, "")}))
    with pytest.raises(ValueError, match="ranges for unknown hyperparameter"):
        objectives.register(objectives.Objective("bad_range", objectives.get("dpo").formula, shape="paired",
                                                 family="paired", data="paired", paper="",
                                                 defaults={"beta": (0.1, "")}, ranges={"bta": "(0, 1)"}))
    assert "bad_range" not in objectives.REGISTRY


def test_intervals_parse_print_and_contain():
    interval = checks.Interval.parse("(0, 1]")
    assert 1 in interval and 0 not in interval and math.nan not in interval and str(interval) == "(0, 1]"
    assert str(checks.Interval.parse("[2, inf)")) == "[2, inf)"
    with pytest.raises(ValueError, match="not an interval"):
        checks.Interval.parse("0 to 1")


def test_the_default_paths_fall_back_to_the_repository_outside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: the defaults are the repository's, not a hub id
    config = default_config("dpo")
    assert config.model == str(PACKAGE_ROOT / "data" / "reference") and config.data_dir == str(PACKAGE_ROOT / "data")
    (tmp_path / "data").mkdir()  # a data/ of your own in the working directory wins
    assert default_config("dpo").data_dir == "data"
    assert default_config("dpo", model="other/model").model == "other/model"


def test_a_config_file_with_a_bad_value_names_file_field_and_range(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"method": "dpo", "max_steps": "abc"}')
    with pytest.raises(checks.SettingError, match=r"max_steps must be an integer in \[0, inf\), got 'abc'"):
        load_config(path)
    path.write_text('{"method": 3}')
    with pytest.raises(checks.SettingError, match="method must be a non-empty string"):
        load_config(path)


# ------------------------------------------------------------------------ property: any value, any field
NUMERIC = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True))
ANYTHING = st.one_of(NUMERIC, st.booleans(), st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = [f.name for f in fields(TrainConfig) if f.name not in ("method", "objective")]
HYPERPARAMETERS = [(m, k) for m, obj in objectives.REGISTRY.items() for k in (*obj.defaults, *obj.options)]


def _allowed(kind, spec, optional, value) -> bool:
    if value is None:
        return optional
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:  # a string field with a tuple of choices takes only those
        return isinstance(value, str) and bool(value.strip()) and (spec is None or value in spec)
    if kind is dict:
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind is int and not float(value).is_integer():
        return False
    return value in spec


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=ANYTHING)
def test_any_value_of_any_field_is_refused_by_name_or_kept_in_range(field, value):
    kind, spec, optional, _ = field_specs()[field]
    try:
        config = default_config("dpo", **{field: value})
    except checks.SettingError as error:
        assert str(error).startswith(f"{field} must be "), error
        assert not _allowed(kind, spec, optional, value) or field == "hyperparameters", (field, value)
        return
    except (ValueError, TypeError) as error:  # hyperparameters of the wrong kind: the objective names them
        assert field == "hyperparameters" and "dpo: " in str(error), error
        return
    assert _allowed(kind, spec, optional, value), (field, value)
    kept = getattr(config, field)
    assert kept == value or (kind is str and field in ("model", "data_dir")) or (field == "out" and value is None)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(pair=st.sampled_from(HYPERPARAMETERS), value=ANYTHING)
def test_any_value_of_any_hyperparameter_is_refused_by_name_or_kept_in_range(pair, value):
    method, key = pair
    obj = objectives.get(method)
    try:
        config = default_config(method, hyperparameters={key: value})
    except (ValueError, TypeError) as error:
        assert f"{method}: " in str(error) and f"'{key}'" in str(error) or "must be at least" in str(error), error
        return
    allowed = obj.range_of(key)
    if key in obj.defaults:
        assert not isinstance(value, bool) and isinstance(value, (int, float)) and value in allowed, (pair, value)
    else:
        default = obj.options[key]
        assert type(value) is type(default) and (not isinstance(allowed, tuple) or value in allowed), (pair, value)
    assert config.hyperparameters == {key: value}


def test_every_method_default_and_sweep_point_is_a_valid_config():
    for name, obj in objectives.REGISTRY.items():
        default_config(name)  # the record's task_defaults lie in the fields' ranges
        if obj.sweep is not None:
            knob, values = obj.sweep
            for value in values:
                if knob in obj.defaults:
                    default_config(name, hyperparameters={knob: value})
                else:
                    default_config(name, **{knob: value})

"""Property: any value of the wrong type or range, in any TrainConfig field or hyperparameter, given to
`unified-rlhf train`, ends in one of two ways: a clean one-line error that names the setting, with no run
directory left behind, or a valid run. (Config-level properties over every method are in test_config.py.)"""

import contextlib
import io
import json
import math
import os
import shutil
import uuid
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unified_rlhf import cli, objectives
from unified_rlhf.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
pytestmark = pytest.mark.skipif(not (DATA / "reference").is_dir(), reason="data/ not built")

METHODS = ("dpo", "kto", "grpo")  # offline paired, unpaired with a hook, online with a group estimator
BASE = {"data_dir": str(DATA), "model": str(DATA / "reference"), "max_steps": 1, "batch_size": 2,
        "samples_per_prompt": 2, "max_new_tokens": 4, "eval_every": 0, "eval_prompts": 2, "eval_samples": 1,
        "progress": False}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    directory = tmp_path_factory.mktemp("property")
    previous = os.environ.get("UNIFIED_RLHF_CACHE")
    os.environ["UNIFIED_RLHF_CACHE"] = str(directory / "cache")
    yield directory
    if previous is None:
        del os.environ["UNIFIED_RLHF_CACHE"]
    else:
        os.environ["UNIFIED_RLHF_CACHE"] = previous


WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
NOT_INTEGERS = st.floats().filter(lambda x: not (math.isfinite(x) and x.is_integer()))


def counts(low, high, *too_large):
    """An integer field: small values around the valid range (so a valid run stays cheap), values below
    it, values that are not integers, values above it where the field has a ceiling, and the wrong types."""
    return st.one_of(st.integers(low, high), st.integers(-10**9, -1), NOT_INTEGERS, st.sampled_from(too_large or [-1]),
                     WRONG_TYPES)


# paths: missing local ones and the wrong types; a bare word would be looked up on the hub (no network here)
PATHS = st.one_of(WRONG_TYPES.filter(lambda v: not isinstance(v, str)), st.just(""), st.just(":"),
                  st.text(alphabet="ab:", min_size=1, max_size=4).map(lambda t: f"./missing/{t}"))
VALUES = {  # per field: what to throw at it
    "model": PATHS, "reference": st.one_of(PATHS, st.just(str(DATA / "reference"))), "data_dir": PATHS,
    "data_file": PATHS, "out": st.one_of(st.integers(), st.just(""), st.lists(st.integers(), max_size=1)),
    "max_steps": counts(-2, 2), "batch_size": counts(-2, 3), "lr": NUMBERS, "warmup_steps": counts(-2, 10**9),
    "weight_decay": NUMBERS, "grad_clip": NUMBERS, "max_length": counts(-2, 80, 10**9),
    "seed": counts(-2, 3, 2**32, 2**32 - 1, 10**30),
    "hyperparameters": st.one_of(WRONG_TYPES, st.dictionaries(st.sampled_from(["beta", "bogus"]), NUMBERS)),
    "samples_per_prompt": counts(-2, 3), "max_new_tokens": counts(-2, 70, 10**9), "temperature": NUMBERS,
    "kl_coef": NUMBERS, "update_epochs": counts(-2, 2),
    "reward_model": st.one_of(PATHS, st.just(str(DATA / "reference"))),
    "reference_cache": st.one_of(WRONG_TYPES.filter(lambda v: not isinstance(v, str)), st.just("")),
    "eval_every": counts(-2, 1), "eval_prompts": counts(-2, 3, 10**9), "eval_samples": counts(-2, 2),
    "eval_at_start": st.one_of(WRONG_TYPES, NUMBERS), "checkpoint_every": counts(-2, 10**9),
    "progress": st.one_of(WRONG_TYPES, NUMBERS),
    "data_split": st.one_of(WRONG_TYPES.filter(lambda v: not isinstance(v, str)), st.just("")),
    "data_columns": st.one_of(WRONG_TYPES.filter(lambda v: not isinstance(v, dict)),
                              st.dictionaries(st.sampled_from(["chosen", "bogus"]), st.text(max_size=3), max_size=1)),
    "sampling": st.one_of(WRONG_TYPES, st.sampled_from(["offline", "online", "semi_online", "sometimes"])),
    "refresh_every": counts(-2, 3),
    "pair_rule": st.one_of(WRONG_TYPES, st.sampled_from(["best_worst", "all_pairs", "bradley_terry", "median"])),
    "label_rule": st.one_of(WRONG_TYPES, st.sampled_from(["group_mean", "threshold", "median"])),
    "label_threshold": NUMBERS,
    "lora_r": counts(-2, 2, 5000), "lora_alpha": NUMBERS, "lora_dropout": NUMBERS,
    "lora_target_modules": st.one_of(WRONG_TYPES.filter(lambda v: not isinstance(v, str)), st.just(""),
                                     st.just("no_such_module")),
    "gradient_checkpointing": st.one_of(WRONG_TYPES, NUMBERS), "bf16": st.one_of(WRONG_TYPES, NUMBERS),
    "packing": st.one_of(WRONG_TYPES, NUMBERS),
}


def test_every_field_gets_values_thrown_at_it():
    assert set(VALUES) == {f.name for f in fields(TrainConfig)} - {"method", "objective"}


def hyperparameter_values(method):
    obj = objectives.get(method)
    keys = [*obj.defaults, *obj.options]
    return st.tuples(st.sampled_from(keys), st.one_of(NUMBERS, WRONG_TYPES))


SETTING = st.sampled_from(METHODS).flatmap(lambda method: st.one_of(
    st.sampled_from(sorted(VALUES)).flatmap(lambda f: st.tuples(st.just(method), st.just("--set"), st.just(f),
                                                                VALUES[f])),
    hyperparameter_values(method).map(lambda kv: (method, "--hp", *kv))))


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(setting=SETTING)
def test_a_wrong_value_gives_a_clean_error_and_no_directory_or_a_valid_run(work, setting):
    method, flag, name, value = setting
    out = work / uuid.uuid4().hex
    argv = ["train", "--method", method, "--out", str(out)]
    for key, base in BASE.items():
        argv += ["--set", f"{key}={json.dumps(base)}"]
    argv += [flag, f"{name}={json.dumps(value)}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    message = err.getvalue().strip()
    assert code in (0, 2), (setting, code, message)
    if code == 2:
        assert "\n" not in message and "Traceback" not in message, message
        assert name in message or (flag == "--set" and name == "hyperparameters" and f"{method}: " in message), \
            (setting, message)
        assert not out.exists(), (setting, message)  # an error leaves nothing behind
    else:
        assert (out / "model").is_dir() and json.loads((out / "config.json").read_text())["method"] == method
        if flag == "--set" and isinstance(value, (int, float)) and not isinstance(value, bool):
            assert math.isfinite(value) or (name == "grad_clip" and value == math.inf), setting
        shutil.rmtree(out)

"""Training configuration: one dataclass, every field documented on its line.

The objective's own defaults (beta, eps, ...) come from the paper and live on its record in
objectives/, and so do the values it trains with on the book's task (`Objective.task_defaults`:
learning rate, batch size, steps, sampling), which the papers' numbers cannot tell us for a
1M-parameter model on synthetic reviews. Every run writes its resolved config to `config.json`.

Each field's type is its annotation and its range is declared beside it (`Annotated[int, "[0, inf)"]`,
see checks.py); a config is checked when it is made and again when a run starts, and an error names the
field and what it allows. Fields marked EXTENDABLE do not change what training computes, so a resumed
run may change them (a longer max_steps, another evaluation schedule); any other difference from the
saved run is refused on resume.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Annotated

from . import checks, objectives
from .data import DEFAULT_DATA_DIR, DEFAULT_MODEL, resolve_default

EXTENDABLE = "may change on --resume"


@dataclass
class TrainConfig:
    method: str  # the objective's registered name (`unified-rlhf list`); with `objective`, the name it defines
    objective: str | None = None  # FILE.py:NAME, your own objective: FILE.py is imported and NAME registered
    model: str = DEFAULT_MODEL  # starting policy, local or hub; default ./data/reference, else the repository's
    reference: str | None = None  # the frozen reference policy; default: the starting model
    data_dir: str = DEFAULT_DATA_DIR  # data files (<kind>_train/_test.jsonl); default ./data, else the repository's
    data_file: str | None = None  # any datasets source (file, directory, hub id); default <data_dir>/<kind>_train.jsonl
    data_split: str | None = None  # the split of data_file to train on, for a source with splits (default 'train')
    data_columns: dict = field(default_factory=dict)  # field -> column of data_file, e.g. {"chosen": "response_good"}
    out: str | None = None  # run directory; default runs/<method>
    max_steps: Annotated[int, "[0, inf)", EXTENDABLE] = 150  # optimiser steps (online: rollouts of update_epochs steps)
    batch_size: Annotated[int, "[1, inf)"] = 32  # global rows (offline) or prompts (online) per step
    lr: Annotated[float, "(0, 1]"] = 5e-4  # AdamW learning rate after warm-up
    warmup_steps: Annotated[int, "[0, inf)"] = 10  # linear learning-rate warm-up from lr/warmup_steps
    weight_decay: Annotated[float, "[0, 100]"] = 0.0  # AdamW weight decay
    grad_clip: Annotated[float, "(0, inf]"] = 1.0  # gradient-norm clipping threshold (inf: no clipping)
    max_length: Annotated[int, "[2, inf)"] = 64  # tokens per row (<= context); completions cut, long prompts dropped
    seed: Annotated[int, "[0, 4294967295]"] = 0  # seeds the model's randomness, the epoch order and the samples
    hyperparameters: dict = field(default_factory=dict)  # overrides of the objective's defaults (beta, eps, ...)
    samples_per_prompt: Annotated[int, "[1, inf)"] = 4  # online: completions sampled per prompt (the group size k)
    max_new_tokens: Annotated[int, "[1, inf)"] = 24  # online and evaluation: longest sampled completion
    temperature: Annotated[float, "[1e-3, 1e3]"] = 1.0  # online: sampling temperature (1: on-policy samples)
    kl_coef: Annotated[float, "[0, 1e3]"] = 0.05  # online: KL-to-reference penalty folded into the reward (RLHF, RLOO)
    update_epochs: Annotated[int, "[1, inf)"] = 1  # online: optimisation passes over each batch of samples (PPO)
    reward_model: str | None = None  # online: a trained reward model directory; default: the task's gold reward
    sampling: Annotated[str, ("offline", "online", "semi_online")] = "offline"  # paired/unpaired objectives: the
    # data file's completions, or samples_per_prompt samples per prompt from the policy at every step (online)
    # or from a copy of it refreshed every refresh_every steps (semi_online), labelled by the reward
    refresh_every: Annotated[int, "[1, inf)"] = 10  # semi_online: steps between refreshes of the sampling policy
    pair_rule: Annotated[str, ("best_worst", "all_pairs", "bradley_terry")] = "best_worst"  # online pairs per group
    label_rule: Annotated[str, ("group_mean", "threshold")] = "group_mean"  # online unpaired labels per sample
    label_threshold: Annotated[float, "[-1e6, 1e6]"] = 0.5  # label_rule threshold: desirable above this reward
    lora_r: Annotated[int, "[0, 4096]"] = 0  # LoRA rank: train adapters only, reference = the base (0: every weight)
    lora_alpha: Annotated[float, "(0, 1e6]"] = 16.0  # LoRA: the adapters are scaled by lora_alpha / lora_r
    lora_dropout: Annotated[float, "[0, 1)"] = 0.0  # dropout on the LoRA adapters' input
    lora_target_modules: str = "all-linear"  # LoRA: "all-linear", or module names separated by commas ("q_proj,v_proj")
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    packing: bool | None = None  # pack each forward's sequences into rows of max_length tokens (less padding, the
    # same log-probs); null: wherever the model allows it (not with sliding-window layers or flash attention)
    bf16: bool | None = None  # bf16 autocast: null = where CUDA supports it; true: also on CPU; false: float32
    reference_cache: Annotated[str | None, EXTENDABLE] = None  # cached reference log-probs; default in refcache.py
    eval_every: Annotated[int, "[0, inf)", EXTENDABLE] = 50  # evaluate every this many steps and at the end (0: never)
    eval_prompts: Annotated[int, "[1, inf)", EXTENDABLE] = 64  # held-out prompts per evaluation
    eval_samples: Annotated[int, "[1, inf)", EXTENDABLE] = 2  # samples per held-out prompt
    eval_at_start: Annotated[bool, EXTENDABLE] = True  # evaluate the starting model as step 0 (a sweep does it once)
    checkpoint_every: Annotated[int, "[1, inf)", EXTENDABLE] = 50  # checkpoint every this many steps and at the end
    progress: Annotated[bool, EXTENDABLE] = True  # show a progress bar

    def __post_init__(self):
        self.validate()

    def validate(self) -> TrainConfig:
        """Check every field against its type and range, the method's hyperparameters against the record's
        ranges, and what the method's estimator and hooks need; fill in the defaults that depend on others.
        Raises an error naming the field (or hyperparameter) and what it allows."""
        for name, (kind, spec, optional, _) in field_specs().items():
            setattr(self, name, checks.check(name, getattr(self, name), kind, spec, optional))
        if self.objective is not None:
            from .custom import load_objective

            loaded = load_objective(self.objective)
            if loaded.name != self.method:
                raise checks.SettingError(f"method must be the name of the objective in {self.objective} "
                                          f"('{loaded.name}'), got '{self.method}'")
        obj = objectives.get(self.method)  # fails early, listing the known methods
        self.out = self.out or f"runs/{self.method}"
        self.model, self.data_dir = resolve_default(self.model), resolve_default(self.data_dir)
        if self.sampling != "offline" and obj.data not in ("paired", "unpaired"):
            raise checks.SettingError(f"sampling '{self.sampling}' turns the policy's own samples into pairs or "
                                      f"labels, for paired and unpaired objectives; {self.method} reads {obj.data} "
                                      f"data (use sampling 'offline')")
        if self.sampling != "offline" and self.samples_per_prompt < 2:
            raise checks.SettingError(f"samples_per_prompt must be at least 2 with sampling '{self.sampling}' "
                                      f"(preferences compare samples of one prompt), got {self.samples_per_prompt}")
        obj.validate(self)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def field_specs() -> dict:
    """field name -> (type, range, may be None, extendable on resume), read off the annotations."""
    specs = {}
    for name, hint in typing.get_type_hints(TrainConfig, include_extras=True).items():
        metadata = ()
        if typing.get_origin(hint) is Annotated:
            hint, *metadata = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
        kind = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
        spec = next((m for m in metadata if m != EXTENDABLE), None)
        specs[name] = (kind, checks.allowed(spec), optional, EXTENDABLE in metadata)
    return specs


def extendable_fields() -> set:
    """The fields a resumed run may change (they do not alter what training computes)."""
    return {name for name, (*_, extendable) in field_specs().items() if extendable}


def default_config(method: str, **overrides) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
    if overrides.get("objective") is not None:  # a custom objective: import it before reading its record
        from .custom import load_objective

        load_objective(overrides["objective"])
    values = {**objectives.get(method).task_defaults, **overrides}
    return TrainConfig(method=method, **values)


DERIVED = ("objective_hyperparameters", "evaluation", "fingerprint")  # config.json keys a run writes for readers


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A JSON (or YAML) file of TrainConfig fields; command-line overrides win."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yml", ".yaml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    for derived in DERIVED:  # written by a run for its reader, not settings
        values.pop(derived, None)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    method = values.pop("method", None)
    if method is None:
        raise ValueError(f"{path}: the config names no 'method'")
    if not isinstance(method, str):
        raise checks.SettingError(f"method must be a non-empty string, got {method!r}")
    return default_config(method, **values)


def resume_differences(saved: dict, current: dict) -> list[str]:
    """What a resumed run would change, as 'field (saved X, now Y)' items: every setting that is not
    EXTENDABLE, the objective's resolved hyperparameters, and the content of the data, the models and the
    loss (the `fingerprint` a run writes; paths may differ where the content does not)."""
    differences = []

    def compare(label, before, after):
        if json.dumps(before, sort_keys=True, default=str) != json.dumps(after, sort_keys=True, default=str):
            differences.append(f"{label} (saved {_short(before)}, now {_short(after)})")

    compare("method", saved.get("method"), current["method"])
    if differences:  # another method: its hyperparameters and loss differ too, by construction
        return differences
    by_content = {"model", "reference", "data_dir", "data_file", "reward_model", "objective", "out",
                  "hyperparameters"}
    # a run saved before a field existed ran with its default
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(TrainConfig)}
    for name in field_specs():
        if name not in extendable_fields() and name not in by_content and name != "method":
            compare(name, saved.get(name, defaults[name]), current[name])
    before, after = saved.get("objective_hyperparameters", {}), current["objective_hyperparameters"]
    for key in sorted(set(before) | set(after)):
        compare(f"hyperparameter {key}", before.get(key), after.get(key))
    what = {"data": "training data (content)", "model": "starting model (content)",
            "reference": "reference model (content)", "reward_model": "reward model (content)",
            "loss": "loss"}
    for key, label in what.items():
        if key in saved.get("fingerprint", {}):  # a run written before fingerprints compares its settings only
            compare(label, saved["fingerprint"][key], current["fingerprint"][key])
    return differences


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


__all__ = ["TrainConfig", "EXTENDABLE", "default_config", "load_config", "field_specs", "extendable_fields",
           "resume_differences"]

"""Reading and writing the task's JSONL datasets, with every row checked.

One JSON object per line, with TRL's column names:

    kind         fields
    sft          prompt, completion
    sft_tagged   prompt, completion, source ("expert" or "suboptimal", C-RLFT's data class)
    prompts      prompt
    paired       prompt, chosen, rejected                (DPO and friends)
    unpaired     prompt, completion, label (a JSON bool)  (KTO)
    ranked       prompt, completions, rewards            (RRHF; equal-length lists, at least 2)
    scored       prompt, completion, score (in [0, 1])    (UNA's score form)

A bad file fails loudly, naming the file, the 1-based line and the field, e.g.
``data/pairs.jsonl, row 17, field 'rejected': empty string``, instead of training on garbage.
The same files also load with ``datasets.load_dataset("json", data_files=path)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

# The defaults of TrainConfig.model and .data_dir: the book's data and reference model. Relative to the
# working directory when it has them (a checkout's root), else the repository's, next to the package.
DEFAULT_DATA_DIR = "data"
DEFAULT_MODEL = "data/reference"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def resolve_default(path):
    """A path as given, except a default (`data`, `data/reference`) that the working directory does not
    hold: that one is the repository's, next to the package, when it exists there."""
    if path in (DEFAULT_DATA_DIR, DEFAULT_MODEL) and not Path(path).exists() and (PACKAGE_ROOT / path).exists():
        return str(PACKAGE_ROOT / path)
    return path


SOURCES = ("expert", "suboptimal")
SCHEMAS = {
    "sft": {"prompt": "text", "completion": "text"},
    "sft_tagged": {"prompt": "text", "completion": "text", "source": "source"},
    "prompts": {"prompt": "text"},
    "paired": {"prompt": "text", "chosen": "text", "rejected": "text"},
    "unpaired": {"prompt": "text", "completion": "text", "label": "bool"},
    "ranked": {"prompt": "text", "completions": "texts", "rewards": "numbers"},
    "scored": {"prompt": "text", "completion": "text", "score": "unit"},
}


class DataError(ValueError):
    """A dataset file or row that does not match its schema."""


def _number(value) -> float | None:
    """The value as a finite float, or None. JSON true/false are not numbers here (bool is an int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_field(value, kind: str) -> tuple[object, str | None]:
    """(cleaned value, problem or None) for one field of type ``kind``."""
    if kind == "text" or kind == "source":
        if not isinstance(value, str):
            return value, f"expected a string, got {type(value).__name__}"
        if not value.strip():
            return value, "empty string"
        if kind == "source" and value not in SOURCES:
            return value, f"expected one of {SOURCES}, got {value!r}"
        return value, None
    if kind == "bool":
        if not isinstance(value, bool):
            return value, f"expected true or false, got {value!r}"
        return value, None
    if kind == "unit":
        number = _number(value)
        if number is None:
            return value, f"expected a finite number, got {value!r}"
        if not 0.0 <= number <= 1.0:
            return value, f"expected a number in [0, 1], got {number}"
        return number, None
    if kind == "texts":
        if not isinstance(value, list) or len(value) < 2:
            return value, "expected a list of at least 2 strings"
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                return value, f"item {i} is not a non-empty string"
        return value, None
    if kind == "numbers":
        numbers = [_number(item) for item in value] if isinstance(value, list) else None
        if numbers is None or None in numbers:
            return value, "expected a list of finite numbers"
        return numbers, None
    raise AssertionError(f"unknown field type {kind}")


def check_row(row, kind: str, where: str) -> dict:
    """The row restricted to its schema's fields, values cleaned (numbers as floats).

    ``where`` prefixes error messages, e.g. "data/pairs.jsonl, row 17". Fields outside the schema are
    ignored. Raises DataError on the first problem.
    """
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    clean = {}
    for field, field_type in SCHEMAS[kind].items():
        if field not in row:
            raise DataError(f"{where}, field '{field}': missing")
        clean[field], problem = _check_field(row[field], field_type)
        if problem:
            raise DataError(f"{where}, field '{field}': {problem}")
    if kind == "ranked" and len(clean["rewards"]) != len(clean["completions"]):
        counts = f"{len(clean['rewards'])} rewards for {len(clean['completions'])} completions"
        raise DataError(f"{where}, field 'rewards': {counts}")
    if kind == "paired" and clean["chosen"] == clean["rejected"]:
        raise DataError(f"{where}, field 'rejected': identical to 'chosen'")
    return clean


def iter_jsonl(path: str | Path):
    """(line number, parsed object) for each non-blank line of a JSONL file; a line that is not JSON
    raises DataError naming the file and line. The one JSONL reader of the package."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                # NaN and Infinity are not JSON, though Python's parser accepts them.
                yield number, json.loads(line, parse_constant=lambda name: math.nan)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, row {number}: invalid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """A log the package wrote (metrics.jsonl, eval.jsonl): its rows, or [] when the file does not exist."""
    path = Path(path)
    return [row for _, row in iter_jsonl(path)] if path.exists() else []


def load_rows(path: str | Path, kind: str):
    """Read a JSONL file of ``kind`` (a key of SCHEMAS), check every row, return a ``datasets.Dataset``.

    Blank lines are skipped; row numbers are line numbers. Columns are the schema's fields, in order.
    """
    from datasets import Dataset

    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    rows, first = [], None
    for number, row in iter_jsonl(path):
        rows.append(check_row(row, kind, f"{path}, row {number}"))
        if kind == "ranked":  # every prompt ranks the same number of completions (they are batched as [B, k])
            first = first or (number, len(rows[0]["completions"]))
            if len(rows[-1]["completions"]) != first[1]:
                raise DataError(f"{path}, row {number}, field 'completions': {len(rows[-1]['completions'])} "
                                f"completions, but row {first[0]} has {first[1]} (every row needs the same number)")
    if not rows:
        raise DataError(f"{path}: no rows")
    return Dataset.from_list(rows)


# ============================================================================================ to tokens
DATA_FILES = {"sft": "sft", "sft_tagged": "sft_tagged", "online": "prompts", "paired": "pairs",
              "unpaired": "unpaired", "ranked": "ranked", "scored": "scored"}  # data kind -> file stem


def tag_prompt(source: str, prompt: str) -> str:
    """C-RLFT's class-conditioned prompt: the source tag goes in front of the prompt."""
    return f"{source} : {prompt}"


def encode_rows(rows, kind: str, encoder, source_weights: dict | None = None) -> tuple[list, dict]:
    """Rows of a data kind -> a list of examples (token ids plus scalars), with models.Encoder; counts
    what was cut or dropped."""
    examples = []
    for row in rows:
        if kind == "sft_tagged":
            row = dict(row, prompt=tag_prompt(row["source"], row["prompt"]))
        prompt = encoder.prompt(row["prompt"])
        texts = {"paired": ("chosen", "rejected"), "ranked": ()}.get(kind, ("completion",))
        if kind == "online":
            examples.append({"prompt": prompt, "text": row["prompt"]})
            continue
        if kind == "ranked":
            if examples and len(row["completions"]) != len(examples[0]["completions"]):
                raise ValueError(f"ranked rows must all have the same number of completions: "
                                 f"{len(row['completions'])} after {len(examples[0]['completions'])}")
            completions = [encoder.fit(prompt, encoder.completion(c)) for c in row["completions"]]
        else:
            completions = [encoder.fit(prompt, encoder.completion(row[t])) for t in texts]
        if any(c is None for c in completions):
            encoder.dropped += 1
            continue
        example = {"prompt": prompt, "completions": completions, "text": row["prompt"]}
        if kind == "ranked":
            example["rewards"] = [float(r) for r in row["rewards"]]
        if kind == "unpaired":
            example["label"] = float(row["label"])
        if kind == "scored":
            example["score"] = float(row["score"])
        if kind == "sft_tagged":
            example["source_weight"] = float(source_weights[row["source"]])
        examples.append(example)
    report = {"rows": len(rows), "examples": len(examples), "truncated_completions": encoder.truncated,
              "dropped_rows": encoder.dropped, "max_length": encoder.max_length}
    return examples, report


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The global batch of a step: positions step*B ... in a stream of seeded epoch permutations,
    so a resumed run sees exactly the rows the uninterrupted run would have."""
    return [_epoch_order(n, seed, p // n)[p % n] for p in range(step * batch_size, (step + 1) * batch_size)]


# ============================================================================================ writing
def write_jsonl(
    rows: Iterable[dict], path: str | Path, kind: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``rows`` as JSONL (one object a line, UTF-8) and return the path.

    Refuses to replace an existing file unless ``overwrite``. With ``kind``, every row is checked first
    (so nothing is written if one is bad) and only the schema's fields are written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    rows = list(rows)
    if kind is not None:
        rows = [check_row(row, kind, f"{path}, row {i}") for i, row in enumerate(rows, start=1)]
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path

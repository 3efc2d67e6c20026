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
from pathlib import Path

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


def load_rows(path: str | Path, kind: str):
    """Read a JSONL file of ``kind`` (a key of SCHEMAS), check every row, return a ``datasets.Dataset``.

    Blank lines are skipped; row numbers are line numbers. Columns are the schema's fields, in order.
    """
    from datasets import Dataset

    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, row {number}"
            try:
                # NaN and Infinity are not JSON, though Python's parser accepts them.
                row = json.loads(line, parse_constant=lambda name: math.nan)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            rows.append(check_row(row, kind, where))
    if not rows:
        raise DataError(f"{path}: no rows")
    return Dataset.from_list(rows)


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

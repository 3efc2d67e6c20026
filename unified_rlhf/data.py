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

Conversational rows (TRL's format): any text field may instead be a list of messages
``[{"role": "user", "content": "..."}]``, and a row is all text or all conversation. A paired row of
conversations may leave the prompt implicit: ``chosen`` and ``rejected`` hold the whole conversation, and
the messages they share at the start are the prompt (as TRL's ``extract_prompt``). models.Encoder turns
conversations into tokens with the tokenizer's chat template.

Any ``datasets`` source reads the same way (`read_rows`, the one reader every loader goes through): a
JSONL, JSON or Parquet file, a directory written by ``save_to_disk`` or holding data files, or a hub id,
with a split and a column mapping (``{"chosen": "response_good"}``: the field chosen is read from the
column response_good). A missing split or column is one line naming the source, the split and the column.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
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
ROLES = ("system", "user", "assistant", "tool")  # the roles of a message in a conversational row
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


def is_conversation(value) -> bool:
    """A list of messages (objects with a role), TRL's conversational format, rather than a string."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _check_messages(value: list) -> tuple[object, str | None]:
    """(the messages as {"role", "content"} only, problem or None)."""
    clean = []
    for i, message in enumerate(value):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return value, f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}"
        if not isinstance(content, str):
            return value, f"message {i}: content must be a string, got {type(content).__name__}"
        clean.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in clean):
        return value, "every message is empty"
    return clean, None


def _check_field(value, kind: str) -> tuple[object, str | None]:
    """(cleaned value, problem or None) for one field of type ``kind``."""
    if kind == "text" and is_conversation(value):
        return _check_messages(value)
    if kind == "text" or kind == "source":
        if kind == "text" and isinstance(value, list):
            what = "an empty list" if not value else f"a list of {type(value[0]).__name__}"
            return value, f"expected a string or a list of messages ({{role, content}} objects), got {what}"
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
            return value, "expected a list of at least 2 strings (or conversations)"
        clean = []
        for i, item in enumerate(value):
            item, problem = _check_field(item, "text")
            if problem:
                return value, f"item {i} is not a non-empty string or conversation: {problem}"
            clean.append(item)
        return clean, None
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
    # a paired row of conversations without a prompt: the messages both sides start with are the prompt
    implicit = kind == "paired" and "prompt" not in row and all(is_conversation(row.get(f)) for f in ("chosen",
                                                                                                      "rejected"))
    clean = {}
    for field, field_type in SCHEMAS[kind].items():
        if implicit and field == "prompt":
            continue
        if field not in row:
            hint = " (an implicit prompt is read only from conversations)" if kind == "paired" and field == "prompt" \
                else ""
            raise DataError(f"{where}, field '{field}': missing{hint}")
        clean[field], problem = _check_field(row[field], field_type)
        if problem:
            raise DataError(f"{where}, field '{field}': {problem}")
    if implicit:
        clean = _split_shared_prompt(clean["chosen"], clean["rejected"], where)
    _check_one_format(clean, where)
    if kind == "ranked" and len(clean["rewards"]) != len(clean["completions"]):
        counts = f"{len(clean['rewards'])} rewards for {len(clean['completions'])} completions"
        raise DataError(f"{where}, field 'rewards': {counts}")
    if kind == "paired" and clean["chosen"] == clean["rejected"]:
        raise DataError(f"{where}, field 'rejected': identical to 'chosen'")
    return clean


def _split_shared_prompt(chosen: list, rejected: list, where: str) -> dict:
    """TRL's extract_prompt for conversations: the longest run of messages both sides start with is the
    prompt, and each side keeps the rest."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(f"{where}, field 'prompt': missing, and 'chosen' and 'rejected' share no first message to "
                        "take as the prompt")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(messages):
            other = "rejected" if field == "chosen" else "chosen"
            raise DataError(f"{where}, field '{field}': nothing after the prompt it shares with '{other}' "
                            f"({'identical' if chosen == rejected else 'a prefix of it'})")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def row_format(row: dict) -> str:
    """'conversation' if the row's prompt is a list of messages, else 'text'."""
    return "conversation" if is_conversation(row.get("prompt")) else "text"


def _check_one_format(clean: dict, where: str) -> None:
    """A row is all text or all conversation: a prompt and its completions are encoded the same way."""
    fields = [(f, v) for f, v in clean.items() if f in ("prompt", "chosen", "rejected", "completion")]
    fields += [(f"completions[{i}]", v) for i, v in enumerate(clean.get("completions", []))]
    kinds = {f: "a conversation" if is_conversation(v) else "a string" for f, v in fields}
    first = fields[0][0]
    for field, what in kinds.items():
        if what != kinds[first]:
            raise DataError(f"{where}, field '{field.split('[')[0]}': {what}, but '{first}' is {kinds[first]} "
                            "(a row is all text or all conversation)")


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


# ============================================================================================ sources
def _looks_local(source: str) -> bool:
    """A path that cannot be a hub id (./, /, ~, nested, or with a suffix such as .jsonl)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or bool(Path(source).suffix)


def source_exists(source) -> bool:
    """A local file or directory that exists, or a name that may be a hub dataset id."""
    return Path(source).exists() or not _looks_local(str(source))


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_digest(source, split: str | None = None, columns: dict | None = None) -> str:
    """What the rows read from a source depend on: a file's sha256 (exactly, when no split or columns are
    given), every file of a directory, or a hub id as itself; with the split and the column mapping."""
    path = Path(source)
    if path.is_file():
        digest = _file_digest(path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256("".join(f"{p.relative_to(path).as_posix()}:{_file_digest(p)}\n"
                                        for p in files).encode()).hexdigest()
    else:
        digest = f"hub:{source}"
    if split is None and not columns:
        return digest
    return hashlib.sha256(json.dumps([digest, split, columns], sort_keys=True).encode()).hexdigest()


def _check_columns(columns: dict, kind: str) -> dict:
    fields = SCHEMAS[kind]
    for field, column in columns.items():
        if field not in fields:
            raise DataError(f"data_columns: '{field}' is not a field of {kind} rows ({', '.join(fields)})")
        if not isinstance(column, str) or not column.strip():
            raise DataError(f"data_columns: the column of field '{field}' must be a non-empty string, got {column!r}")
    return columns


def _table_rows(source: str, names: list, rows, split: str, kind: str, columns: dict):
    """(label, row number, row) of a table (a datasets.Dataset, a Parquet file's rows) with columns `names`,
    after checking that every column it needs is there."""
    where = f"{source}, split '{split}'"
    for field in SCHEMAS[kind]:
        column = columns.get(field, field)
        if column not in names and not (kind == "paired" and field == "prompt" and field not in columns):
            mapped = f" (the column of field '{field}')" if field in columns else ""
            hint = "" if field in columns else f"; map another with data_columns, e.g. --data-column {field}=NAME"
            raise DataError(f"{where}, column '{column}'{mapped}: missing; the columns are {', '.join(names)}{hint}")
    for number, row in enumerate(rows, start=1):
        yield where, number, row


def _select_split(source: str, loaded, split: str | None):
    from datasets import DatasetDict

    if isinstance(loaded, DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DataError(f"{source}: no split '{split}'; the splits are {', '.join(loaded)}")
        return loaded[split], split
    if split not in (None, "train"):
        raise DataError(f"{source}: no split '{split}'; it holds one split, 'train'")
    return loaded, "train"


def _source_rows(source, kind: str, columns: dict, split: str | None) -> Iterator[tuple[str, int, object]]:
    """(label, row number, raw row) of every row of a source; `label, row N` names a row in errors."""
    path = Path(source)
    if path.is_file():
        if split not in (None, "train"):
            raise DataError(f"{source}: no split '{split}'; a file holds one split, 'train'")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            yield from _table_rows(str(source), table.column_names, table.to_pylist(), "train", kind, columns)
            return
        if path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
            try:
                rows = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda name: math.nan)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
            for number, row in enumerate(rows, start=1):
                yield str(source), number, row
            return
        for number, row in iter_jsonl(path):
            yield str(source), number, row
        return
    import datasets

    if path.is_dir():
        saved = any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))
        loaded = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    elif _looks_local(str(source)):
        raise FileNotFoundError(f"data source {source} does not exist")
    else:
        try:
            loaded = datasets.load_dataset(str(source))
        except Exception as error:  # no such dataset, no network: one line naming the source
            raise FileNotFoundError(f"data source '{source}' is neither a local file or directory nor a dataset "
                                    f"on the hub: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                                    ) from None
    table, split = _select_split(str(source), loaded, split)
    yield from _table_rows(str(source), table.column_names, table, split, kind, columns)


def _renamed(row, columns: dict, where: str):
    """The row with each mapped field read from its column."""
    if not columns or not isinstance(row, dict):
        return row
    renamed = dict(row)
    for field, column in columns.items():
        if column not in row:
            raise DataError(f"{where}, field '{field}' (column '{column}'): missing")
        renamed[field] = row[column]
    return renamed


def read_rows(source, kind: str, columns: dict | None = None, split: str | None = None) -> Iterator[tuple[str, dict]]:
    """The one reader: (where, checked row) for every row of a source of ``kind`` rows, where names the row
    in errors ("data/pairs_train.jsonl, row 17"; "my_data, split 'train', row 3").

    source: a JSONL, JSON (lines or an array) or Parquet file, a directory written by ``save_to_disk`` or
    holding data files, or a hub dataset id. split: of a source with splits (default 'train'); a file has
    only 'train'. columns: field -> column to read it from, e.g. ``{"chosen": "response_good"}``.
    """
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    columns = _check_columns(dict(columns or {}), kind)
    for label, number, row in _source_rows(source, kind, columns, split):
        where = f"{label}, row {number}"
        yield where, check_row(_renamed(row, columns, where), kind, where)


def load_rows(path: str | Path, kind: str, columns: dict | None = None, split: str | None = None):
    """Read a source of ``kind`` rows (a key of SCHEMAS; a JSONL file, or any source `read_rows` takes),
    check every row, return a ``datasets.Dataset``.

    Blank lines are skipped; row numbers are line numbers. Columns are the schema's fields, in order.
    """
    from datasets import Dataset

    rows, first = [], None
    for where, row in read_rows(path, kind, columns, split):
        rows.append(row)
        label = where.rsplit(", ", 1)[1]
        first = first or (label, len(row.get("completions", ())), row_format(row))
        if kind == "ranked" and len(row["completions"]) != first[1]:
            # every prompt ranks the same number of completions (they are batched as [B, k])
            raise DataError(f"{where}, field 'completions': {len(row['completions'])} completions, but {first[0]} "
                            f"has {first[1]} (every row needs the same number)")
        if row_format(row) != first[2]:  # a column holds one type
            raise DataError(f"{where}: a {row_format(row)} row, but {first[0]} is a {first[2]} row (a data set is "
                            "all text or all conversation)")
    if not rows:
        raise DataError(f"{path}: no rows")
    return Dataset.from_list(rows)


# ============================================================================================ to tokens
DATA_FILES = {"sft": "sft", "sft_tagged": "sft_tagged", "online": "prompts", "paired": "pairs",
              "unpaired": "unpaired", "ranked": "ranked", "scored": "scored"}  # data kind -> file stem


def tag_prompt(source: str, prompt):
    """C-RLFT's class-conditioned prompt: the source tag goes in front of the prompt (of a conversation's
    first message)."""
    if is_conversation(prompt):
        return [{**prompt[0], "content": tag_prompt(source, prompt[0]["content"])}, *prompt[1:]]
    return f"{source} : {prompt}"


def prompt_text(prompt) -> str:
    """The prompt as text, for a reward that reads text (the gold reward): a conversation's message
    contents, one a line."""
    return "\n".join(m["content"] for m in prompt) if is_conversation(prompt) else prompt


def encode_rows(rows, kind: str, encoder, source_weights: dict | None = None) -> tuple[list, dict]:
    """Rows of a data kind -> a list of examples (token ids plus scalars), with models.Encoder (text rows in
    the package's convention, conversations with the chat template); counts what was cut or dropped."""
    examples = []
    for row in rows:
        if kind == "sft_tagged":
            row = dict(row, prompt=tag_prompt(row["source"], row["prompt"]))
        texts = {"paired": ("chosen", "rejected"), "ranked": ()}.get(kind, ("completion",))
        if kind == "online":
            examples.append({"prompt": encoder.prompt(row["prompt"]), "text": prompt_text(row["prompt"])})
            continue
        if kind == "ranked":
            if examples and len(row["completions"]) != len(examples[0]["completions"]):
                raise ValueError(f"ranked rows must all have the same number of completions: "
                                 f"{len(row['completions'])} after {len(examples[0]['completions'])}")
            prompt, completions = encoder.encode(row["prompt"], row["completions"])
        else:
            prompt, completions = encoder.encode(row["prompt"], [row[t] for t in texts])
        completions = [encoder.fit(prompt, c) for c in completions]
        if any(c is None for c in completions):
            encoder.dropped += 1
            continue
        example = {"prompt": prompt, "completions": completions, "text": prompt_text(row["prompt"])}
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

"""JSONL loading and writing: every bad row is reported by file, row and field."""

import json
import re

import pytest

from unified_rlhf.data import SCHEMAS, DataError, load_rows, write_jsonl

GOOD = {
    "sft": {"prompt": "the film was", "completion": "good ."},
    "sft_tagged": {"prompt": "the film was", "completion": "good .", "source": "expert"},
    "prompts": {"prompt": "the film was"},
    "paired": {"prompt": "the film was", "chosen": "superb .", "rejected": "dull ."},
    "unpaired": {"prompt": "the film was", "completion": "dull .", "label": False},
    "ranked": {
        "prompt": "the film was",
        "completions": ["superb .", "dull .", "long ."],
        "rewards": [0.8, 0.3, 0.5],
    },
    "scored": {"prompt": "the film was", "completion": "good .", "score": 0.62},
}


def test_every_kind_has_an_example():
    assert set(GOOD) == set(SCHEMAS)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_round_trip(tmp_path, kind):
    path = write_jsonl([GOOD[kind]] * 3, tmp_path / f"{kind}.jsonl", kind=kind)
    dataset = load_rows(path, kind)
    assert dataset.column_names == list(SCHEMAS[kind])
    assert len(dataset) == 3 and dataset[2] == GOOD[kind]


def test_load_dataset_reads_written_files(tmp_path):
    import datasets

    rows = [GOOD["ranked"], {**GOOD["ranked"], "prompt": "the plot was"}]
    path = write_jsonl(rows, tmp_path / "ranked.jsonl", kind="ranked")
    loaded = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert loaded.to_list() == rows == load_rows(path, "ranked").to_list()


def test_integers_become_floats_and_extra_fields_are_dropped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({**GOOD["ranked"], "rewards": [1, 0, 0.5], "id": 7}) + "\n")
    dataset = load_rows(path, "ranked")
    assert dataset.column_names == ["prompt", "completions", "rewards"]
    assert dataset[0]["rewards"] == [1.0, 0.0, 0.5]
    path.write_text(json.dumps({**GOOD["scored"], "score": 1}) + "\n")
    assert load_rows(path, "scored")[0]["score"] == 1.0


def test_blank_lines_are_skipped_and_rows_counted_by_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps(GOOD["paired"])
    path.write_text(f"{good}\n\n{good}\n{json.dumps({**GOOD['paired'], 'rejected': ''})}\n")
    with pytest.raises(DataError, match=r"row 4, field 'rejected': empty string"):
        load_rows(path, "paired")
    path.write_text(f"{good}\n\n{good}\n\n")
    assert len(load_rows(path, "paired")) == 2


# (kind, bad line as JSON text, field named in the error, part of the message)
BAD = [
    ("sft", {"prompt": "the film was"}, "completion", "missing"),
    ("sft", {"prompt": "", "completion": "good ."}, "prompt", "empty string"),
    ("sft", {"prompt": "  ", "completion": "good ."}, "prompt", "empty string"),
    ("sft", {"prompt": 3, "completion": "good ."}, "prompt", "expected a string"),
    ("sft", {"prompt": "the film was", "completion": None}, "completion", "expected a string"),
    ("sft_tagged", {**GOOD["sft_tagged"], "source": "teacher"}, "source", "expected one of"),
    ("sft_tagged", {"prompt": "the film was", "completion": "good ."}, "source", "missing"),
    ("prompts", {"text": "the film was"}, "prompt", "missing"),
    ("prompts", {"prompt": ["the film was"]}, "prompt", "expected a string"),
    ("paired", {**GOOD["paired"], "chosen": ""}, "chosen", "empty string"),
    ("paired", {**GOOD["paired"], "rejected": "superb ."}, "rejected", "identical to 'chosen'"),
    ("unpaired", {**GOOD["unpaired"], "label": "yes"}, "label", "expected true or false"),
    ("unpaired", {**GOOD["unpaired"], "label": 1}, "label", "expected true or false"),
    ("unpaired", {**GOOD["unpaired"], "label": None}, "label", "expected true or false"),
    ("scored", {**GOOD["scored"], "score": 1.5}, "score", "in [0, 1]"),
    ("scored", {**GOOD["scored"], "score": -0.1}, "score", "in [0, 1]"),
    ("scored", {**GOOD["scored"], "score": "0.5"}, "score", "finite number"),
    ("scored", {**GOOD["scored"], "score": True}, "score", "finite number"),
    ("scored", '{"prompt": "a b", "completion": "good .", "score": NaN}', "score", "finite number"),
    ("ranked", {**GOOD["ranked"], "rewards": [0.8, 0.3]}, "rewards", "2 rewards for 3 completions"),
    (
        "ranked",
        {**GOOD["ranked"], "completions": ["superb ."], "rewards": [0.8]},
        "completions",
        "at least 2",
    ),
    ("ranked", {**GOOD["ranked"], "completions": "superb ."}, "completions", "at least 2"),
    ("ranked", {**GOOD["ranked"], "completions": ["superb .", "", "x"]}, "completions", "item 1"),
    ("ranked", {**GOOD["ranked"], "rewards": [0.8, "high", 0.1]}, "rewards", "finite numbers"),
    ("ranked", {**GOOD["ranked"], "rewards": [0.8, False, 0.1]}, "rewards", "finite numbers"),
    ("ranked", {**GOOD["ranked"], "rewards": 0.8}, "rewards", "finite numbers"),
    (
        "ranked",
        '{"prompt": "a", "completions": ["b", "c"], "rewards": [1, Infinity]}',
        "rewards",
        "finite numbers",
    ),
]


@pytest.mark.parametrize("kind, bad, field, problem", BAD)
def test_bad_rows_name_file_row_and_field(tmp_path, kind, bad, field, problem):
    path = tmp_path / "data.jsonl"
    bad_line = bad if isinstance(bad, str) else json.dumps(bad)
    path.write_text(
        f"{json.dumps(GOOD[kind])}\n{json.dumps(GOOD[kind])}\n{bad_line}\n{json.dumps(GOOD[kind])}\n"
    )
    with pytest.raises(DataError) as error:
        load_rows(path, kind)
    assert f"{path}, row 3, field '{field}': " in str(error.value)
    assert problem in str(error.value)


@pytest.mark.parametrize("line", ['{"prompt": "the film was"', "not json", '["the film was", "good ."]', "3"])
def test_bad_json_names_file_and_row(tmp_path, line):
    path = tmp_path / "sft.jsonl"
    path.write_text(f"{json.dumps(GOOD['sft'])}\n{line}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, row 2: ")):
        load_rows(path, "sft")


def test_empty_file_and_unknown_kind(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_rows(path, "sft")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_rows(path, "pairs")
    assert issubclass(DataError, ValueError)


def test_write_jsonl_refuses_to_overwrite(tmp_path):
    path = write_jsonl([GOOD["sft"]], tmp_path / "sub" / "sft.jsonl")
    with pytest.raises(FileExistsError):
        write_jsonl([GOOD["sft"]] * 2, path)
    assert len(load_rows(path, "sft")) == 1
    write_jsonl([GOOD["sft"]] * 2, path, overwrite=True)
    assert len(load_rows(path, "sft")) == 2


def test_write_jsonl_checks_rows_before_writing(tmp_path):
    path = tmp_path / "scored.jsonl"
    with pytest.raises(DataError, match=r"row 2, field 'score'"):
        write_jsonl([GOOD["scored"], {**GOOD["scored"], "score": 2.0}], path, kind="scored")
    assert not path.exists()
    with pytest.raises(ValueError):  # NaN is not JSON, even without a kind to check against
        write_jsonl([{**GOOD["scored"], "score": float("nan")}], path)
    assert not path.exists()


def test_ranked_rows_with_another_number_of_completions_name_file_row_and_the_first_row(tmp_path):
    path = tmp_path / "ranked.jsonl"
    ranked = GOOD["ranked"]
    short = {**ranked, "completions": ranked["completions"][:2], "rewards": ranked["rewards"][:2]}
    path.write_text(f"{json.dumps(GOOD['ranked'])}\n\n{json.dumps(GOOD['ranked'])}\n{json.dumps(short)}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, row 4, field 'completions': 2 completions, but row 1 "
                                                  "has 3 (every row needs the same number)")):
        load_rows(path, "ranked")

"""Any `datasets` source reads through the one reader: JSONL, JSON, Parquet, save_to_disk directories, a
directory of data files, a hub id; splits and column mappings; a missing split or column is one line."""

import json
import re

import datasets
import pytest
from training_runs import DATA, small

from unified_rlhf import cli
from unified_rlhf.data import DataError, load_rows, read_rows, source_digest, source_exists
from unified_rlhf.trainer import Trainer

ROWS = load_rows(DATA / "pairs_train.jsonl", "paired").select(range(12)).to_list()
RENAMED = [{"question": r["prompt"], "response_good": r["chosen"], "response_bad": r["rejected"], "id": i}
           for i, r in enumerate(ROWS)]
COLUMNS = {"prompt": "question", "chosen": "response_good", "rejected": "response_bad"}


def sources(tmp_path) -> dict:
    """The same renamed rows written as every kind of source the reader takes (name -> (source, split))."""
    table = datasets.Dataset.from_list(RENAMED)
    out = {}
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RENAMED))
    out["jsonl"] = (tmp_path / "rows.jsonl", None)
    (tmp_path / "rows.json").write_text(json.dumps(RENAMED))
    out["json array"] = (tmp_path / "rows.json", None)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    out["parquet"] = (tmp_path / "rows.parquet", None)
    table.save_to_disk(str(tmp_path / "saved_dataset"))
    out["save_to_disk Dataset"] = (tmp_path / "saved_dataset", None)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RENAMED[:2]), "validation": table}).save_to_disk(
        str(tmp_path / "saved_dict"))
    out["save_to_disk DatasetDict"] = (tmp_path / "saved_dict", "validation")
    (tmp_path / "files" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "files" / "data" / "train-00000.parquet"))
    out["directory of data files"] = (tmp_path / "files", "train")
    return out


def test_every_source_gives_the_same_checked_rows(tmp_path):
    for name, (source, split) in sources(tmp_path).items():
        rows = load_rows(source, "paired", columns=COLUMNS, split=split)
        assert rows.column_names == ["prompt", "chosen", "rejected"], name
        assert rows.to_list() == ROWS, name


def test_a_hub_id_goes_to_load_dataset(monkeypatch):
    """No hub here: load_dataset is replaced by one that returns a DatasetDict, as the hub's would be."""
    asked = []

    def load_dataset(name, *args, **kwargs):
        asked.append(name)
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(RENAMED)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert source_exists("someone/preferences") and not source_exists("./someone/preferences")
    assert load_rows("someone/preferences", "paired", columns=COLUMNS).to_list() == ROWS and asked == [
        "someone/preferences"]
    with pytest.raises(DataError, match=r"^someone/preferences: no split 'test'; the splits are train$"):
        load_rows("someone/preferences", "paired", columns=COLUMNS, split="test")
    assert source_digest("someone/preferences") == "hub:someone/preferences"


def test_a_hub_id_that_cannot_be_loaded_is_one_line(monkeypatch):
    def offline(name, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_rows("someone/preferences", "paired")
    assert "\n" not in str(error.value) and "'someone/preferences' is neither a local file" in str(error.value)


def test_a_missing_split_or_column_is_one_line_naming_source_split_and_column(tmp_path):
    made = sources(tmp_path)
    saved, _ = made["save_to_disk DatasetDict"]
    with pytest.raises(DataError, match=re.escape(f"{saved}: no split 'test'; the splits are train, validation")):
        load_rows(saved, "paired", columns=COLUMNS, split="test")
    parquet, _ = made["parquet"]
    with pytest.raises(DataError, match=re.escape(f"{parquet}: no split 'test'; a file holds one split, 'train'")):
        load_rows(parquet, "paired", columns=COLUMNS, split="test")
    with pytest.raises(DataError) as error:  # the mapped column is not there
        load_rows(saved, "paired", columns=COLUMNS | {"chosen": "response_best"}, split="validation")
    assert str(error.value) == (f"{saved}, split 'validation', column 'response_best' (the column of field "
                                "'chosen'): missing; the columns are question, response_good, response_bad, id")
    with pytest.raises(DataError) as error:  # an unmapped field whose column is not there
        load_rows(parquet, "paired", columns={"prompt": "question", "chosen": "response_good"})
    assert str(error.value).startswith(f"{parquet}, split 'train', column 'rejected': missing; the columns are ")
    assert str(error.value).endswith("--data-column rejected=NAME") and "\n" not in str(error.value)
    jsonl, _ = made["jsonl"]  # JSON lines carry no column list: the first row without the column is named
    with pytest.raises(DataError, match=re.escape(f"{jsonl}, row 1, field 'chosen' (column 'best'): missing")):
        load_rows(jsonl, "paired", columns=COLUMNS | {"chosen": "best"})


def test_a_column_mapping_must_name_fields_of_the_rows():
    with pytest.raises(DataError, match=re.escape("data_columns: 'answer' is not a field of paired rows (prompt, "
                                                  "chosen, rejected)")):
        list(read_rows(DATA / "pairs_test.jsonl", "paired", columns={"answer": "x"}))
    with pytest.raises(DataError, match="data_columns: the column of field 'chosen' must be a non-empty string"):
        list(read_rows(DATA / "pairs_test.jsonl", "paired", columns={"chosen": 3}))


def test_the_digest_follows_content_split_and_columns(tmp_path):
    import hashlib

    path = DATA / "pairs_test.jsonl"
    assert source_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()  # a file: exactly its sha256
    assert len({source_digest(path), source_digest(path, "train"), source_digest(path, None, {"chosen": "a"})}) == 3
    made = sources(tmp_path)
    directory, _ = made["directory of data files"]
    before = source_digest(directory)
    (directory / "data" / "train-00000.parquet").write_bytes(b"changed")
    assert source_digest(directory) != before


def test_the_trainer_reads_a_renamed_parquet_file_as_the_jsonl_file(tmp_path):
    made = sources(tmp_path)
    parquet, _ = made["parquet"]
    (tmp_path / "same.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    renamed = Trainer(small("dpo", tmp_path / "renamed", data_file=str(parquet), data_columns=COLUMNS))
    plain = Trainer(small("dpo", tmp_path / "plain", data_file=str(tmp_path / "same.jsonl")))
    assert renamed.examples == plain.examples and len(renamed.examples) == len(ROWS)
    assert renamed.fingerprint["data"] == source_digest(parquet, None, COLUMNS) != plain.fingerprint["data"]
    with pytest.raises(FileNotFoundError, match="training data .*missing.parquet does not exist"):
        Trainer(small("dpo", tmp_path / "missing", data_file=str(tmp_path / "missing.parquet")))


def test_the_command_line_maps_columns(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("unified_rlhf.trainer.train", lambda config, **kw: seen.setdefault("config", config) and {})
    cli.main(["train", "--method", "dpo", "--data-file", "org/data", "--data-split", "validation",
              "--data-column", "chosen=response_good", "--data-column", "rejected=2", "--out", str(tmp_path / "r")])
    config = seen["config"]
    assert (config.data_file, config.data_split) == ("org/data", "validation")
    assert config.data_columns == {"chosen": "response_good", "rejected": "2"}  # a column name stays a string
    assert cli.main(["train", "--method", "dpo", "--data-column", "chosen"]) == 2

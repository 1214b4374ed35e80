"""Reading batches: formats, stable ids, and files that cannot be read."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import make_frame

from poisonguard import ROW_ID
from poisonguard.errors import InputError
from poisonguard.ingest.read import read_batch


def test_csv_parquet_and_jsonl_give_the_same_rows_and_ids(tmp_path):
    frame = make_frame(50)
    frame.to_csv(tmp_path / "b.csv", index=False)
    frame.to_parquet(tmp_path / "b.parquet", index=False)
    frame.to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    read = [read_batch(tmp_path / name) for name in ("b.csv", "b.parquet", "b.jsonl")]
    for batch in read:
        assert batch.frame[ROW_ID].tolist() == list(range(50))
        pd.testing.assert_frame_equal(
            batch.frame.drop(columns=ROW_ID), frame, check_dtype=False, check_exact=False, rtol=1e-9
        )
    assert len({batch.batch_id for batch in read}) == 3  # different bytes, different batches
    assert {batch.dataset for batch in read} == {"b"}


def test_rereading_a_file_gives_the_same_batch_id_and_row_ids(tmp_path):
    make_frame(30).to_csv(tmp_path / "b.csv", index=False)
    first, second = read_batch(tmp_path / "b.csv"), read_batch(tmp_path / "b.csv")
    assert first.batch_id == second.batch_id
    assert first.frame[ROW_ID].tolist() == second.frame[ROW_ID].tolist()


def test_format_option_overrides_the_suffix(tmp_path):
    make_frame(10).to_csv(tmp_path / "export.txt", index=False)
    assert read_batch(tmp_path / "export.txt", file_format="csv").n_rows == 10


@pytest.mark.parametrize(
    ("name", "format_", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("data.xlsx", None, "pass --format"),
        ("data.csv", "xml", "unknown format 'xml'"),
    ],
)
def test_unusable_paths_raise_input_errors_naming_the_problem(tmp_path, name, format_, message):
    if name != "missing.csv":
        (tmp_path / name).write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=message):
        read_batch(tmp_path / name, file_format=format_)


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "structural:empty_file"),
        (b"a,a,b\n1,2,3\n", "structural:duplicate_column"),
        (b"_row_id,b\n1,2\n", "structural:reserved_column"),
        (b'a,b\n1,"unterminated\n', "structural:unreadable"),
    ],
)
def test_unparsable_csv_is_returned_as_unreadable_not_raised(tmp_path, content, code):
    (tmp_path / "bad.csv").write_bytes(content)
    batch = read_batch(tmp_path / "bad.csv")
    assert batch.frame is None
    assert batch.unreadable.code == code
    assert "bad.csv" in str(batch.unreadable)


def test_corrupt_parquet_is_unreadable(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    assert read_batch(tmp_path / "bad.parquet").unreadable.code == "structural:unreadable"


def test_header_only_csv_has_zero_rows(tmp_path):
    (tmp_path / "empty.csv").write_text("a,b,label\n")
    batch = read_batch(tmp_path / "empty.csv")
    assert batch.n_rows == 0
    assert list(batch.frame.columns) == [ROW_ID, "a", "b", "label"]

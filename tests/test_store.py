"""Atomic writes: a failure in the middle leaves the previous files intact and no partial ones."""

from __future__ import annotations

import pandas as pd
import pytest

from poisonguard.write.atomic import atomic_write_json, atomic_write_parquet, write_all_or_none, write_parquet


def test_failure_while_writing_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "clean.parquet"
    atomic_write_parquet(target, pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(Exception):
        atomic_write_parquet(target, pd.DataFrame({"a": [object(), object()]}))  # not serialisable
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["clean.parquet"]


def test_failure_in_a_later_file_leaves_no_file_of_the_group(tmp_path):
    def explode(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_all_or_none(
            [
                (tmp_path / "clean.parquet", lambda path: write_parquet(path, pd.DataFrame({"a": [1]}))),
                (tmp_path / "quarantine.parquet", explode),
            ]
        )
    assert list(tmp_path.iterdir()) == []


def test_json_is_written_whole(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"rows": 3})
    assert (tmp_path / "r.json").read_text().strip().startswith("{")


def test_floats_are_written_plain_and_labels_and_reason_lists_with_a_dictionary(tmp_path):
    import pyarrow.parquet as pq

    frame = pd.DataFrame(
        {
            "amount": [0.5, 1.25, float("nan"), 3.0] * 50,
            "label": ["approve", "deny", "approve", None] * 50,
            "_reasons": [["outlier:ecod"], [], None, ["label:label_model", "outlier:iforest"]] * 50,
        }
    )
    path = tmp_path / "rows.parquet"
    write_parquet(path, frame)
    back = pd.read_parquet(path)
    assert back["amount"].equals(frame["amount"]) and back["label"].tolist() == frame["label"].tolist()
    assert [list(v) if v is not None else None for v in back["_reasons"]] == frame["_reasons"].tolist()
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {row_group.column(i).path_in_schema: row_group.column(i).encodings for i in range(3)}
    assert not any("DICTIONARY" in e for e in encodings["amount"])
    assert any("DICTIONARY" in e for e in encodings["label"])
    assert any("DICTIONARY" in e for e in encodings["_reasons.list.element"])

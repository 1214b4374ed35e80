"""Atomic writes: a failure in the middle leaves the previous files intact and no partial ones."""

from __future__ import annotations

import pandas as pd
import pytest

from poisonguard.store import atomic_write_json, atomic_write_parquet, write_all_or_none, write_parquet


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

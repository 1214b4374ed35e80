"""Property: whatever the frame and the flags, every row lands exactly once in clean or quarantine."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonguard import ROW_ID
from poisonguard.decide.result_table import build_result_table
from poisonguard.score.types import DetectorScores
from poisonguard.write.outputs import split_rows


@st.composite
def frames_and_flags(draw):
    n_rows = draw(st.integers(min_value=0, max_value=60))
    values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n_rows, max_size=n_rows))
    text = draw(st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=n_rows, max_size=n_rows))
    frame = pd.DataFrame({ROW_ID: np.arange(n_rows, dtype="int64"), "value": values, "text": text})
    flags = draw(st.lists(st.booleans(), min_size=n_rows, max_size=n_rows))
    failing = draw(st.sets(st.integers(min_value=0, max_value=max(n_rows - 1, 0)), max_size=n_rows))
    return frame, np.array(flags, dtype=bool), np.array(sorted(i for i in failing if i < n_rows), dtype="int64")


@settings(max_examples=60, deadline=None)
@given(frames_and_flags())
def test_rows_are_conserved(case):
    frame, flags, failing = case
    scores = DetectorScores(
        scores={"iforest": np.zeros(len(frame))}, flags={"iforest": flags}, reasons={"iforest": "outlier:iforest"}
    )
    table = build_result_table(frame[ROW_ID].to_numpy(), {"schema:not_null:value": failing}, scores)
    split = split_rows(frame, table, "b1", datetime.now(timezone.utc))
    quarantined = split.quarantined
    held_ids = quarantined.column(ROW_ID).to_pylist()
    clean_ids = [i for part in split.clean_slices(slice_rows=7) for i in part.column(ROW_ID).to_pylist()]
    assert clean_ids == split.clean().column(ROW_ID).to_pylist() and split.n_clean == len(clean_ids)
    assert sorted(clean_ids + held_ids) == list(range(len(frame)))
    expected_held = set(failing.tolist()) | set(np.flatnonzero(flags).tolist())
    assert set(held_ids) == expected_held
    for row_id, reasons in zip(held_ids, quarantined.column("_reasons").to_pylist()):
        assert ("schema:not_null:value" in reasons) == (row_id in failing)
        assert ("outlier:iforest" in reasons) == bool(flags[row_id])

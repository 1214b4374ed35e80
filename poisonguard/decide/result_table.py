"""Combine schema failures and detector flags into one per-row result table.

The table is keyed by ``_row_id`` and holds ``<detector>_score`` / ``<detector>_flag`` (and
``<detector>_pvalue`` when calibrated against a reference, and for flagged rows what the detector says of them,
``<detector>_predicted``, ``_probability``, ``_features``) for each detector, the list of reason codes
(``_reasons``) and whether the row is quarantined: any reason quarantines it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from poisonguard import REASONS, ROW_ID
from poisonguard.score.types import DetectorScores

QUARANTINED = "_quarantined"
# Per-row columns of a detector beside its score: ``<detector>_<detail>`` (see DetectorScores.details).
DETAILS = ("predicted", "probability", "features")


def build_result_table(
    row_ids: np.ndarray, schema_reasons: dict[str, np.ndarray], detector_scores: DetectorScores
) -> pd.DataFrame:
    """One row per batch row, in the batch's order; see the module docstring for the columns."""
    row_ids = np.asarray(row_ids, dtype="int64")
    columns: dict[str, object] = {ROW_ID: row_ids}
    codes: list[str] = []
    masks: list[np.ndarray] = []
    for code in sorted(schema_reasons):
        codes.append(code)
        masks.append(np.isin(row_ids, schema_reasons[code]))
    for name, scores in detector_scores.scores.items():
        columns[f"{name}_score"] = scores
        columns[f"{name}_flag"] = detector_scores.flags[name]
        if name in detector_scores.p_values:
            columns[f"{name}_pvalue"] = detector_scores.p_values[name]
        for detail in DETAILS:
            if f"{name}_{detail}" in detector_scores.details:
                columns[f"{name}_{detail}"] = detector_scores.details[f"{name}_{detail}"]
        codes.append(detector_scores.reasons[name])
        masks.append(np.asarray(detector_scores.flags[name], dtype=bool))
    flagged = np.column_stack(masks) if masks else np.zeros((len(row_ids), 0), dtype=bool)
    columns[REASONS] = reason_lists(flagged, codes)
    columns[QUARANTINED] = flagged.any(axis=1)
    # Shares the detectors' arrays rather than copying them (tens of MB per detector at a million rows);
    # pandas' copy-on-write keeps a later change to the table from reaching them.
    return pd.DataFrame(columns, copy=False)


def reason_lists(flagged: np.ndarray, codes: list[str]) -> pd.Series:
    """Per row, the codes whose column is set in the boolean matrix ``flagged``, as an Arrow list column.

    Built from offsets and one flat array (no Python loop over rows).
    """
    _, columns = np.nonzero(flagged)
    offsets = np.concatenate([[0], np.cumsum(flagged.sum(axis=1))]).astype("int32")
    values = pa.array(np.asarray(codes, dtype=object)[columns] if len(columns) else [], type=pa.string())
    lists = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)
    return pd.Series(pd.arrays.ArrowExtensionArray(lists))


def reason_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows carry each reason code."""
    flat = pa.array(table[REASONS].array).flatten()
    if len(flat) == 0:
        return {}
    counts = pa.compute.value_counts(flat).to_pylist()
    return dict(sorted(((c["values"], int(c["counts"])) for c in counts), key=lambda item: (-item[1], item[0])))

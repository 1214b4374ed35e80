"""Quarantined rows exported for a spreadsheet, safe from formula injection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import REASONS
from poisonguard.cells import is_list_column
from poisonguard.safe_text import spreadsheet_text
from poisonguard.write.atomic import atomic_path


def export_csv(rows: pd.DataFrame, path: Path) -> Path:
    """Write ``rows`` as CSV for a spreadsheet: formulas escaped in cells and column names, lists joined,
    atomically."""
    exported = rows.copy()
    for column in exported.columns:
        series = exported[column]
        if column == REASONS:
            series = series.map(lambda codes: ";".join(codes) if codes is not None else "")
        elif is_list_column(series):  # an embedding: JSON arrays keep every value at full precision
            series = series.map(_json_list)
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            exported[column] = series.map(spreadsheet_text)
    exported.columns = [spreadsheet_text(str(column)) for column in exported.columns]
    with atomic_path(path) as staged:
        exported.to_csv(staged, index=False)
    return Path(path)


def _json_list(cell: Any) -> Any:
    if isinstance(cell, (list, tuple, np.ndarray)):
        return json.dumps(np.asarray(cell).tolist())
    return cell

"""Small vectorised value conversions shared by validation, features and detectors."""

from __future__ import annotations

import numpy as np
import pandas as pd


def format_count(value: int | None) -> str:
    """A row count with thousands separators, ``?`` when unknown (an unreadable batch)."""
    return "?" if value is None else f"{value:,}"


def as_text(values: pd.Series | np.ndarray) -> pd.Series:
    """Values as Python strings in an object column, nulls as ``None``.

    Integral floats lose their ``.0`` so that ``1``, ``1.0`` and ``"1"`` read the same (a CSV column of
    integers turns float as soon as one cell is empty).
    """
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    converted = series
    if pd.api.types.is_float_dtype(converted):
        finite = converted.dropna()
        if len(finite) and np.isfinite(finite).all() and (finite == np.floor(finite)).all():
            converted = converted.astype("Int64")
    text = converted.astype("string").astype(object)
    return text.where(series.notna(), None)

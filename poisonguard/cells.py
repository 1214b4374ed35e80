"""Cell values as the checks read them: vectorised text and list-cell conversions shared by validation,
features, detectors and the replay ledger."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


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


def iso_datetimes(values: pd.Series) -> pd.Series:
    """Cells read as ISO 8601 dates or times, as UTC datetimes (naive text taken as UTC); a cell that is not
    one is missing (``NaT``)."""
    return pd.to_datetime(as_text(values), errors="coerce", utc=True, format="ISO8601")


# --- list cells (a precomputed embedding held in one column) ------------------------------------------


@dataclass(frozen=True)
class ListCells:
    """A column of lists of numbers, flattened: cell ``i`` holds ``flat[starts[i] : starts[i] + lengths[i]]``.

    ``valid`` is false for null cells and cells that are not a list of numbers (their length is 0).
    """

    flat: np.ndarray
    lengths: np.ndarray
    valid: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    @property
    def cell_of_value(self) -> np.ndarray:
        """For each value in ``flat``, the cell holding it."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    @property
    def position_of_value(self) -> np.ndarray:
        """For each value in ``flat``, its position within its cell."""
        return np.arange(len(self.flat)) - np.repeat(self.starts, self.lengths)

    def non_finite(self) -> np.ndarray:
        """Per cell, whether any of its values is NaN or infinite."""
        return np.bincount(self.cell_of_value, weights=~np.isfinite(self.flat), minlength=len(self.lengths)) > 0

    def matrix(self, width: int) -> np.ndarray:
        """Cells as rows of a ``width``-column float matrix: long cells cut, and NaN wherever a value is
        missing (short and invalid cells) or not finite."""
        out = np.full((len(self.lengths), width), np.nan)
        whole = self.lengths == width
        if whole.sum() * width == len(self.flat):  # the usual case: every other cell is empty or invalid
            out[whole] = self.flat.reshape(-1, width) if width else out[whole]
            out[~np.isfinite(out)] = np.nan
            return out
        rows, positions = self.cell_of_value, self.position_of_value
        keep = (positions < width) & np.isfinite(self.flat)
        out[rows[keep], positions[keep]] = self.flat[keep]
        return out

    def modal_length(self) -> int:
        """The most common length of the valid cells (0 when none is valid)."""
        lengths = self.lengths[self.valid]
        return int(np.bincount(lengths).argmax()) if len(lengths) else 0


def is_list_column(series: pd.Series) -> bool:
    """True when the column's first non-null cell is a list, tuple or array (Parquet lists, JSON arrays)."""
    if series.dtype != object:
        return False
    present = series.notna().to_numpy()
    return bool(present.any()) and isinstance(series.iloc[int(present.argmax())], (list, tuple, np.ndarray))


def list_cells(series: pd.Series) -> ListCells:
    """Flatten a column of lists of numbers; see :class:`ListCells`.

    Converted by pyarrow in one pass when every cell is a list of numbers or null; a column with other
    cells (text, nested lists, strings inside lists) is converted cell by cell, which only bad input pays.
    """
    values = series.to_numpy(dtype=object)
    try:
        array = pa.array(values, from_pandas=True)
        if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
            raise pa.ArrowInvalid("not a list column")
        flat = pc.list_flatten(array).cast(pa.float64()).to_numpy(zero_copy_only=False)
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(array).fill_null(0).to_numpy().astype("int64")
        return ListCells(np.asarray(flat, dtype="float64"), lengths, valid)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return _list_cells_one_by_one(values)


def _list_cells_one_by_one(values: np.ndarray) -> ListCells:
    parts, valid = [], np.zeros(len(values), dtype=bool)
    for i, cell in enumerate(values):
        numbers = np.empty(0)
        if isinstance(cell, (list, tuple, np.ndarray)):
            try:
                numbers = np.asarray(cell, dtype="float64")
                valid[i] = numbers.ndim == 1
            except (TypeError, ValueError):
                pass
        parts.append(numbers if valid[i] else np.empty(0))
    lengths = np.array([len(p) for p in parts], dtype="int64")
    return ListCells(np.concatenate([np.empty(0), *parts]), lengths, valid)


def list_row_hashes(cells: ListCells) -> np.ndarray:
    """One 64-bit hash per cell of its numbers in order, the same however the column is cut into chunks;
    invalid cells all hash to one value (callers hash their text separately)."""
    element = pd.util.hash_array(pd.util.hash_array(cells.flat) ^ pd.util.hash_array(cells.position_of_value))
    combined = np.zeros(len(cells.lengths), dtype="uint64")
    nonempty = cells.lengths > 0
    if nonempty.any():
        combined[nonempty] = np.bitwise_xor.reduceat(element, cells.starts[nonempty])
    hashes = pd.util.hash_array(combined ^ pd.util.hash_array(cells.lengths))
    hashes[~cells.valid] = 0
    return hashes

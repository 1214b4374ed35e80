"""Row-level expectations evaluated in one vectorised pass per column, with Great Expectations' semantics.

Great Expectations builds and resolves a graph of metrics for every expectation it runs: about 90 ms each,
whatever the batch size. A batch of 500 rows x 2,000 columns carries some 6,000 row-level expectations,
and its scan spent 542 of 605 s in validation. The four kinds of row-level expectation that poisonguard
infers (not null, between, in set, in type list) are simple column predicates, so they are evaluated here
with numpy and pandas, keeping GX's meaning exactly: nulls are never "unexpected" except for not-null,
bounds are inclusive unless ``strict_min``/``strict_max``, and every failing row is returned.
``tests/test_expectations.py`` checks that the failing rows equal GX's own on frames with nulls, infinities,
mixed text and out-of-range values. An expectation with any other argument (``mostly``, a row condition)
or on a column of another dtype is left to GX, as is everything table-level. The suite itself stays a GX
suite, stored as GX's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
IN_TYPE_LIST = "expect_column_values_to_be_in_type_list"
_ARGUMENTS = {
    NOT_NULL: {"column"},
    BETWEEN: {"column", "min_value", "max_value", "strict_min", "strict_max"},
    IN_SET: {"column", "value_set"},
    IN_TYPE_LIST: {"column", "type_list"},
}


@dataclass(frozen=True)
class RowCheck:
    """The outcome of one row-level expectation: which rows fail it (by ``_row_id``)."""

    expectation: str
    column: str
    kwargs: dict[str, Any]
    failing: np.ndarray
    gx_success: bool | None = None  # GX's verdict, for an expectation GX ran (``mostly`` may forgive rows)
    gx_unexpected_count: int | None = None

    @property
    def success(self) -> bool:
        return self.gx_success if self.gx_success is not None else len(self.failing) == 0

    @property
    def unexpected_count(self) -> int:
        return self.gx_unexpected_count if self.gx_unexpected_count is not None else len(self.failing)


def evaluates_here(expectation, frame: pd.DataFrame) -> bool:
    """True when :func:`evaluate` gives GX's answer for ``expectation`` on ``frame``."""
    kind, kwargs = expectation.expectation_type, expectation.configuration.kwargs
    if kind not in _ARGUMENTS or not set(kwargs) - {"batch_id"} <= _ARGUMENTS[kind]:
        return False
    column = kwargs.get("column")
    if column not in frame.columns:
        return False
    series = frame[column]
    if kind == BETWEEN:
        return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if kind == IN_TYPE_LIST:  # GX judges other dtypes as a whole column, with no failing rows to list
        return (series.dtype.name in kwargs["type_list"] or series.dtype == object
                or pd.api.types.is_string_dtype(series))
    return True


def evaluate(expectation, frame: pd.DataFrame) -> RowCheck:
    """Evaluate one expectation accepted by :func:`evaluates_here` on ``frame`` (which has ``_row_id``)."""
    kind, kwargs = expectation.expectation_type, dict(expectation.configuration.kwargs)
    column = kwargs["column"]
    series = frame[column]
    present = series.notna().to_numpy()
    if kind == NOT_NULL:
        failing = ~present
    elif kind == BETWEEN:
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        failing = np.zeros(len(series), dtype=bool)
        with np.errstate(invalid="ignore"):
            if kwargs.get("min_value") is not None:
                low = float(kwargs["min_value"])
                failing |= values <= low if kwargs.get("strict_min") else values < low
            if kwargs.get("max_value") is not None:
                high = float(kwargs["max_value"])
                failing |= values >= high if kwargs.get("strict_max") else values > high
        failing &= present
    elif kind == IN_SET:
        failing = present & ~series.isin(list(kwargs["value_set"])).to_numpy()
    else:
        failing = present & ~_of_types(series, set(kwargs["type_list"]))
    return RowCheck(kind, column, kwargs, frame[ROW_ID].to_numpy()[failing])


def _of_types(series: pd.Series, type_names: set[str]) -> np.ndarray:
    """Which cells GX counts as of one of ``type_names``: every cell when the column's dtype is one of them,
    else by each value's Python type name (pandas' string dtype holds ``str`` values)."""
    if series.dtype.name in type_names:
        return np.ones(len(series), dtype=bool)
    return series.map(lambda value: type(value).__name__ in type_names).to_numpy(dtype=bool)


def expectation_key(expectation_type: str, kwargs: dict[str, Any]) -> str:
    """What identifies an expectation within a run: GX returns results in an order of its own."""
    return repr((expectation_type, sorted((k, repr(v)) for k, v in kwargs.items() if k != "batch_id")))


def run_row_checks(expectations: list, frame: pd.DataFrame, run_in_gx) -> list[RowCheck]:
    """One :class:`RowCheck` per expectation, in their order: vectorised where :func:`evaluates_here`,
    else through ``run_in_gx(frame, expectations)`` (GX's validation, all of them in one run)."""
    local = [evaluates_here(e, frame) for e in expectations]
    delegated = [e for e, here in zip(expectations, local) if not here]
    by_key = {}
    for result in run_in_gx(frame, delegated) if delegated else []:
        by_key[expectation_key(result.expectation_config.type, result.expectation_config.kwargs)] = result
    return [
        evaluate(e, frame) if here
        else from_gx_result(by_key[expectation_key(e.expectation_type, e.configuration.kwargs)])
        for e, here in zip(expectations, local)
    ]


def from_gx_result(result) -> RowCheck:
    """A GX validation result as a :class:`RowCheck` (only failing rows when the expectation failed)."""
    config = result.expectation_config
    ids = [d[ROW_ID] for d in result.result.get("unexpected_index_list") or []] if not result.success else []
    return RowCheck(config.type, config.kwargs.get("column"), dict(config.kwargs), np.array(ids, dtype="int64"),
                    bool(result.success), int(result.result.get("unexpected_count") or 0))

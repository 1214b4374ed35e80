"""Run a dataset's suite on a batch: structural failures reject the batch, row failures become reasons.

Validation happens in three steps, each on the frame the previous one accepted:

1. the column set (a table-level expectation): any missing or extra column rejects the whole batch;
2. coercion of every column to the kind the suite records: a numeric column whose values mostly fail to
   parse rejects the batch; a few unparsable cells become ``schema:type:<column>`` on their rows. An
   embedding column's cells must each be a list of the suite's number of finite values, judged the same
   way (mostly wrong: an embedding from another model, the batch is rejected);
3. the row-level expectations (not-null, ranges, allowed values), each failing ``_row_id`` becoming
   ``schema:<check>:<column>`` on that row: the kinds poisonguard infers are evaluated vectorised with GX's
   semantics (see :mod:`poisonguard.expectations.row_checks`), any other runs through GX with its
   COMPLETE result format.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID
from poisonguard.cells import as_text, iso_datetimes, list_cells
from poisonguard.expectations.row_checks import RowCheck, from_gx_result, run_row_checks
from poisonguard.expectations.suite import (
    BOOLEAN,
    DATETIME,
    EMBEDDING,
    NUMERIC,
    datetime_dtype,
    suite_columns,
    suite_embeddings,
    suite_kinds,
    suite_types,
)

TABLE_COLUMNS = "expect_table_columns_to_match_set"
SHORT_NAMES = {
    "expect_column_values_to_not_be_null": "not_null",
    "expect_column_values_to_be_between": "range",
    "expect_column_values_to_be_in_set": "in_set",
    "expect_column_values_to_be_in_type_list": "type",
}
# A numeric column in which more than this share of the non-null cells cannot be parsed as numbers is a
# wrong type for the whole column (a shifted or mislabelled column), not a handful of bad cells.
MAX_UNPARSABLE_SHARE = 0.5


@dataclass(frozen=True)
class StructuralFailure:
    code: str
    message: str


@dataclass
class SchemaOutcome:
    """What schema validation decided about one batch.

    ``frame`` is the coerced frame (``None`` when the batch is rejected), ``row_reasons`` maps a reason
    code to the ``_row_id`` values that fail it, ``raw_values`` keeps, per row id, the original text of
    cells that could not be coerced, and ``expectations`` summarises each expectation for the report.
    """

    frame: pd.DataFrame | None
    structural: list[StructuralFailure] = field(default_factory=list)
    row_reasons: dict[str, np.ndarray] = field(default_factory=dict)
    raw_values: dict[int, dict[str, str]] = field(default_factory=dict)
    expectations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return bool(self.structural)


class SchemaValidator:
    """Holds one ephemeral GX context; reuse it for every validation in a process step."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)

    def run(self, frame: pd.DataFrame, expectations: list) -> list:
        """Validate ``frame`` against ``expectations``; return GX's per-expectation results."""
        import great_expectations as gx

        if not expectations:
            return []
        suite = gx.ExpectationSuite(name="poisonguard-run", expectations=expectations)
        result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]}
        # GX's execution engine caches every metric it computed (a boolean Series per row-level
        # expectation: 40 MB for 1M rows x 21 columns) for as long as its data source lives, and GX's
        # objects refer to each other in cycles that only a full garbage collection frees, late in the
        # scan. So each run gets its own data source, whose cache is emptied and which is deleted after.
        source = self._context.data_sources.add_pandas(f"poisonguard-{uuid.uuid4().hex}")
        try:
            batch = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole").get_batch(
                batch_parameters={"dataframe": frame}
            )
            return list(batch.validate(suite, result_format=result_format).results)
        finally:
            cache = getattr(source.get_execution_engine(), "_metric_cache", None)
            if cache is not None:
                cache.clear()
            self._context.data_sources.delete(source.name)


def validate_batch(
    frame: pd.DataFrame, suite, label_col: str | None, validator: SchemaValidator
) -> SchemaOutcome:
    """Validate ``frame`` (file columns plus ``_row_id``) against ``suite``; see the module docstring."""
    import great_expectations.expectations as gxe

    expected = suite_columns(suite)
    columns_check = gxe.ExpectTableColumnsToMatchSet(column_set=[*expected, ROW_ID], exact_match=True)
    (columns_result,) = validator.run(frame, [columns_check])
    summary = [_summarise(from_gx_result(columns_result))]
    if not columns_result.success:
        return SchemaOutcome(None, _column_failures(list(frame.columns), expected, label_col), expectations=summary)

    coerced, type_failures, row_reasons, raw_values = coerce_to_kinds(
        frame, suite_kinds(suite), suite_embeddings(suite), suite_types(suite)
    )
    if type_failures:
        return SchemaOutcome(None, type_failures, expectations=summary)

    row_level = [e for e in suite.expectations if e.expectation_type in SHORT_NAMES]
    for check in run_row_checks(row_level, coerced, validator.run):
        summary.append(_summarise(check))
        if len(check.failing):
            code = f"schema:{SHORT_NAMES[check.expectation]}:{check.column}"
            row_reasons[code] = np.union1d(row_reasons.get(code, np.empty(0, "int64")), check.failing)
    return SchemaOutcome(coerced, [], row_reasons, raw_values, summary)


def coerce_to_kinds(
    frame: pd.DataFrame, kinds: dict[str, str], embeddings: dict[str, int] | None = None,
    types: dict[str, dict[str, Any]] | None = None,
) -> tuple[pd.DataFrame, list[StructuralFailure], dict[str, np.ndarray], dict[int, dict[str, str]]]:
    """Cast each column to its recorded kind: numeric to float64 (an ``integer`` one, in ``types``, must hold
    whole numbers), booleans to pandas' nullable ``boolean``, datetimes to ``datetime64[ns]`` in the time zone
    ``types`` records, embeddings kept as they are (their cells checked against the length in
    ``embeddings``), the others to text (object). Every chunk of a batch gets the same dtypes, whatever its
    reader inferred for it.

    Returns the coerced frame, whole-column type failures, per-row ``schema:type:<column>`` failures and
    the original text of every cell that failed to parse, keyed by row id.
    """
    coerced = frame.copy(deep=False)  # copy-on-write: replacing a column never touches ``frame``
    structural: list[StructuralFailure] = []
    row_reasons: dict[str, np.ndarray] = {}
    raw_values: dict[int, dict[str, str]] = {}
    row_ids = frame[ROW_ID].to_numpy()
    for column, kind in kinds.items():
        series = frame[column]
        present = int(series.notna().sum())
        meta = (types or {}).get(column, {})
        if kind == EMBEDDING:
            width = (embeddings or {}).get(column)
            unparsable = _bad_embedding_cells(series, width)
            expected = f"lists of {width} finite numbers" if width else "lists of finite numbers"
        elif kind == NUMERIC:
            values, unparsable, expected = _numbers(series, bool(meta.get("integer")))
        elif kind == BOOLEAN:
            values, unparsable, expected = _booleans(series)
        elif kind == DATETIME:
            values, unparsable, expected = _datetimes(series, meta.get("timezone"), bool(meta.get("date_only")))
        else:
            coerced[column] = as_text(series)
            continue
        if present and unparsable.sum() > MAX_UNPARSABLE_SHARE * present:
            sample = series[unparsable].iloc[0]
            structural.append(
                StructuralFailure(
                    f"structural:type:{column}",
                    f"column {column!r} should hold {expected} but {int(unparsable.sum())} of {present} values "
                    f"do not (first: {_describe(sample)})",
                )
            )
            continue
        if kind != EMBEDDING:
            coerced[column] = values
        if unparsable.any():
            failing = row_ids[unparsable]
            row_reasons[f"schema:type:{column}"] = failing
            for row_id, value in zip(failing.tolist(), series[unparsable].tolist()):
                raw_values.setdefault(int(row_id), {})[column] = _shorten(value)
    return coerced, structural, row_reasons, raw_values


def _numbers(series: pd.Series, integer: bool) -> tuple[pd.Series, np.ndarray, str]:
    """A numeric column as float64 (missing where a cell is not a number, or not whole when ``integer``)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        numbers = series.astype("float64") if series.dtype != np.dtype("float64") else series
    else:
        numbers = pd.to_numeric(series, errors="coerce").astype("float64")
    unparsable = (series.notna() & numbers.isna()).to_numpy().copy()
    if integer:
        values = numbers.to_numpy()
        with np.errstate(invalid="ignore"):
            fractional = np.isfinite(values) & (values != np.round(values))
        if fractional.any():
            unparsable |= fractional
            numbers = numbers.mask(fractional)
    return numbers, unparsable, "whole numbers" if integer else "numbers"


_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def _booleans(series: pd.Series) -> tuple[pd.Series, np.ndarray, str]:
    """A true/false column as pandas' nullable ``boolean`` (``true``/``false`` or 1/0 in any case)."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("boolean"), np.zeros(len(series), dtype=bool), "true or false"
    mapped = as_text(series).str.strip().str.lower().map(_BOOLEAN_TEXT)
    unparsable = (series.notna() & mapped.isna()).to_numpy()
    return mapped.astype("boolean"), unparsable, "true or false"


def _datetimes(series: pd.Series, timezone: str | None, date_only: bool = False) -> tuple[pd.Series, np.ndarray, str]:
    """A datetime column as ``datetime64[ns]`` in ``timezone`` (naive when ``None``; zoned text is converted);
    a ``date_only`` column's cells must be dates (midnight), as it is written back as dates."""
    if pd.api.types.is_datetime64_any_dtype(series):
        zoned = getattr(series.dtype, "tz", None) is not None
        parsed = series if zoned or timezone is None else series.dt.tz_localize("UTC")
    else:
        parsed = iso_datetimes(series)
    if getattr(parsed.dtype, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(timezone) if timezone else parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    # Beyond nanoseconds' years 1677-2262 a cell cannot be held: it fails its row, not the batch.
    low, high = pd.Timestamp("1677-09-22"), pd.Timestamp("2262-04-10")
    if timezone:
        low, high = low.tz_localize(timezone), high.tz_localize(timezone)
    parsed = parsed.where((parsed > low) & (parsed < high)).astype(datetime_dtype(timezone))
    if date_only:
        parsed = parsed.where(parsed == parsed.dt.normalize())
    unparsable = (series.notna() & parsed.isna()).to_numpy()
    return parsed, unparsable, "dates (ISO 8601)" if date_only else "dates or times (ISO 8601)"


def _bad_embedding_cells(series: pd.Series, width: int | None) -> np.ndarray:
    """Present cells that are not a list of ``width`` finite numbers (any one length when ``width`` is None)."""
    cells = list_cells(series)
    width = width or cells.modal_length()
    return series.notna().to_numpy() & (~cells.valid | (cells.lengths != width) | cells.non_finite())


def _column_failures(actual: list[str], expected: list[str], label_col: str | None) -> list[StructuralFailure]:
    actual_set = set(actual) - {ROW_ID}
    failures = []
    for column in [c for c in expected if c not in actual_set]:
        kind = "missing_label" if column == label_col else "missing_column"
        failures.append(StructuralFailure(f"structural:{kind}:{column}", f"column {column!r} is missing"))
    for column in sorted(actual_set - set(expected)):
        failures.append(
            StructuralFailure(f"structural:extra_column:{column}", f"column {column!r} is not in the suite")
        )
    return failures


def _summarise(check: RowCheck) -> dict[str, Any]:
    """One expectation's outcome for the report."""
    kwargs = {k: v for k, v in check.kwargs.items() if k not in ("column", "batch_id")}
    return {
        "expectation": check.expectation,
        "column": check.column,
        "success": check.success,
        "unexpected_count": int(check.unexpected_count),
        "kwargs": json.loads(json.dumps(kwargs, default=str)),
    }


def _describe(value: Any) -> str:
    """A failing cell for a message: a list by its length, anything else by its (shortened) text."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"a list of {len(value)} values"
    return repr(_shorten(value))


def _shorten(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"

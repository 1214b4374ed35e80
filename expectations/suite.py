"""Infer a Great Expectations suite from trusted reference data and keep it as JSON.

A suite records, for one dataset: the exact column set, each column's kind (numeric, categorical, text,
embedding) and the GX type list that kind allows, not-null where the reference has no nulls, numeric ranges
widened by a margin, and the allowed values of the label and of categorical columns. poisonguard's own
settings (label column, kinds) ride in the suite's and expectations' ``meta`` so the JSON file is the one
source of truth for a dataset's schema.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID
from poisonguard.cells import as_text, is_list_column, list_cells
from poisonguard.errors import ConfigError, InputError
from poisonguard.expectations.ranges import range_bounds, why_no_range, why_no_value_set
from poisonguard.names import column_not_found
from poisonguard.write.atomic import atomic_write_text

NUMERIC = "numeric"
CATEGORICAL = "categorical"
TEXT = "text"
# A column whose cells are lists of numbers (a Parquet list column, JSON arrays): a precomputed embedding.
# GX has no expectation for list cells, so its kind and length ride in the suite's meta and validation
# checks the cells itself.
EMBEDDING = "embedding"
# True/false (pandas' nullable "boolean" once checked) and points in time (datetime64, in the time zone the
# reference had): featurised as numbers, written back to Parquet as bool, timestamp or date.
BOOLEAN = "boolean"
DATETIME = "datetime"
# Text kinds live in object columns, which GX checks value by value against Python type names; the others
# are cast to one dtype when checked, whose name GX compares (a datetime's names its time zone: see
# :func:`datetime_dtype`).
KIND_TYPES = {NUMERIC: ["int64", "float64"], CATEGORICAL: ["str"], TEXT: ["str"], BOOLEAN: ["boolean"]}
_TRUE_FALSE = frozenset({"true", "false"})
# An ISO 8601 date, optionally with a time and a zone: what a CSV or JSON writer puts for a timestamp.
_ISO_DATETIME = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
MAX_CATEGORIES = 50  # more distinct values than this and a string column is free text, not a category
MAX_LABEL_VALUES = 1000


def _gx():
    # Great Expectations takes ~3 s to import; load it only when a suite is built or run.
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def column_kind(series: pd.Series) -> str:
    """The kind poisonguard treats a reference column as."""
    if pd.api.types.is_bool_dtype(series):
        return BOOLEAN
    if pd.api.types.is_datetime64_any_dtype(series):
        return DATETIME
    if pd.api.types.is_numeric_dtype(series):
        return NUMERIC
    if is_list_column(series) and _holds_number_lists(series):
        return EMBEDDING
    try:
        distinct = series.nunique(dropna=True)
    except TypeError:  # unhashable cells (a Parquet struct column's dicts, lists of text): count their text
        distinct = as_text(series).nunique(dropna=True)
    else:
        if distinct and _all_true_false(series):
            return BOOLEAN
        if distinct and _all_datetimes(series):
            return DATETIME
    return CATEGORICAL if distinct <= MAX_CATEGORIES else TEXT


def _holds_number_lists(series: pd.Series) -> bool:
    """Whether a list column's cells are lists of numbers (an embedding), judged by its first non-empty cells;
    lists of text (tags) are checked as text."""
    cells = [cell for cell in series.dropna().iloc[:1000] if len(cell)]
    return not cells or all(
        isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
        for cell in cells[:100] for value in cell
    )


def _all_true_false(series: pd.Series) -> bool:
    values = series.dropna().unique()
    return len(values) <= 2 and all(isinstance(v, (bool, np.bool_)) or str(v).lower() in _TRUE_FALSE for v in values)


def _all_datetimes(series: pd.Series) -> bool:
    """Every present cell is a date or a time (Python objects, as a Parquet date column reads) or ISO 8601 text."""
    present = series.dropna()
    for cells in (present.iloc[:1000], present):  # most columns are told apart by their first cells
        if not (cells.map(lambda v: isinstance(v, (date, datetime))).all()
                or as_text(cells).str.fullmatch(_ISO_DATETIME).all()):
            return False
    return True


def datetime_type(series: pd.Series) -> dict[str, Any]:
    """What a datetime column's suite records of it: its time zone (``None``: naive) and whether it holds
    dates only (written back as dates)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        zone = getattr(series.dtype, "tz", None)
        present = series.dropna()
        midnight = bool((present == present.dt.normalize()).all())
        return {"timezone": None if zone is None else str(zone), "date_only": midnight and zone is None}
    text = as_text(series.dropna())
    zoned = bool(text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True).any())
    return {"timezone": "UTC" if zoned else None, "date_only": bool(text.str.len().eq(10).all())}


def datetime_dtype(timezone: str | None) -> str:
    """The pandas dtype a datetime column is checked as, by its time zone (``None``: naive)."""
    return f"datetime64[ns, {timezone}]" if timezone else "datetime64[ns]"


def is_integer_column(series: pd.Series) -> bool:
    """Whether a numeric reference column holds whole numbers to be written back as integers: an integer
    dtype, or floats with whole values and gaps (how a CSV reader types an integer column with nulls)."""
    if pd.api.types.is_integer_dtype(series):
        return True
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    finite = values[np.isfinite(values)]
    return bool(np.isnan(values).any() and len(finite) and (finite == np.round(finite)).all()
                and np.abs(finite).max() < 2**53)


def infer_suite(
    reference: pd.DataFrame,
    dataset: str,
    label_col: str | None,
    range_margin: float = 0.1,
    source: str | None = None,
    range_false_quarantine: float | None = None,
    roles: dict[str, str] | None = None,
    kinds: dict[str, str] | None = None,
):
    """Build a suite for ``dataset`` from the trusted ``reference`` frame.

    ``reference`` holds the file's columns (a ``_row_id`` column, if present, is ignored). ``kinds``: columns
    given a kind (``categorical`` or ``text``) whatever their values look like. ``roles``: columns
    that are a row key (``id``) or carried through (``ignored``); they keep their type check (so that every
    chunk writes them with one type) and an id its not-null check, but get no range or value set, and the
    suite records their roles. Raises :class:`InputError` when ``label_col`` is not a column of the
    reference or looks continuous, or a column with a role is not one of the reference.
    """
    roles = dict(roles or {})
    gx, gxe = _gx()
    columns = [c for c in reference.columns if c != ROW_ID]
    if label_col is not None and label_col not in columns:
        raise InputError(
            f"{source or 'reference'}: label column {label_col!r} not found; columns are: {', '.join(columns)}"
        )
    missing = [c for c in roles if c not in columns]
    if missing:
        raise InputError(column_not_found(source or "reference", roles[missing[0]], missing[0], columns))
    expectations = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)]
    embeddings = {}
    given_kinds = dict(kinds or {})
    missing = [c for c in given_kinds if c not in columns]
    if missing:
        raise InputError(column_not_found(source or "reference", given_kinds[missing[0]], missing[0], columns))
    kinds = {column: given_kinds.get(column) or column_kind(reference[column]) for column in columns}
    # Every numeric column but the label may get a range, every categorical one an allowed-value set: rules
    # a clean row can fail by chance, which together share range_false_quarantine. A column whose rule
    # would spend more than its share gets none, with the reason kept in the suite (see ranges.py).
    n_judged = sum(kind in (NUMERIC, CATEGORICAL) for column, kind in kinds.items()
                   if column != label_col and column not in roles)
    unchecked: dict[str, str] = {}
    for column in columns:
        series = reference[column]
        kind = kinds[column]
        if column == label_col and kind == EMBEDDING:
            raise InputError(
                f"{source or 'reference'}: label column {label_col!r} holds lists; poisonguard expects "
                "one class label per row"
            )
        if column == label_col and kind in (TEXT, BOOLEAN, DATETIME):
            kind = CATEGORICAL  # a class label, whatever its values look like
        if kind == EMBEDDING:
            embeddings[column] = list_cells(series).modal_length()
            if not series.isna().any():
                expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            continue
        type_meta: dict[str, Any] = {"kind": kind}
        type_list = KIND_TYPES.get(kind)
        if kind == NUMERIC:
            type_meta["integer"] = is_integer_column(series)
        elif kind == DATETIME:
            type_meta |= datetime_type(series)
            type_list = [datetime_dtype(type_meta["timezone"])]
        expectations.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=type_list, meta=type_meta))
        if not series.isna().any() and roles.get(column) != "ignored":
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        if column in roles:
            continue
        if kind == NUMERIC and column != label_col:
            values = series.to_numpy(dtype="float64", na_value=np.nan)
            finite = values[np.isfinite(values)]
            why_not = why_no_range(finite, n_judged, range_false_quarantine, range_margin)
            if why_not is not None:
                unchecked[column] = why_not
            elif len(finite):
                low, high = range_bounds(finite, n_judged, range_false_quarantine, range_margin)
                expectations.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
        if kind == CATEGORICAL and column != label_col:
            why_not = why_no_value_set(series, n_judged, range_false_quarantine)
            if why_not is not None:
                unchecked[column] = why_not
                continue
        if column == label_col or kind == CATEGORICAL:
            values = series.dropna().unique()
            if column == label_col and len(values) > MAX_LABEL_VALUES:
                raise InputError(
                    f"{source or 'reference'}: label column {label_col!r} has {len(values)} distinct values; "
                    "poisonguard expects a classification label"
                )
            expectations.append(
                gxe.ExpectColumnValuesToBeInSet(column=column, value_set=_plain_values(values, kind))
            )
    meta = {
        "poisonguard": {
            "dataset": dataset,
            "label_col": label_col,
            "inferred_from": source,
            "reference_rows": int(len(reference)),
            "range_margin": range_margin,
            "range_false_quarantine": range_false_quarantine,
            "embeddings": embeddings,
            # columns given no range or value set, with the reason (see poisonguard.expectations.ranges)
            "unchecked": unchecked,
            "roles": roles,  # column -> id or ignored: never a feature, no range or value set
            "kinds_given": given_kinds,  # column -> the kind a user gave it (categorical or text)
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    }
    return gx.ExpectationSuite(name=dataset, expectations=expectations, meta=meta)


def _plain_values(values: np.ndarray, kind: str) -> list[Any]:
    if kind == NUMERIC:
        return sorted(v.item() if hasattr(v, "item") else v for v in values)
    return sorted(as_text(pd.Series(values, dtype=object)).dropna().unique().tolist())  # as validation reads them


def suite_given_kinds(suite) -> dict[str, str]:
    """Column -> the kind a user gave it when the suite was inferred (``categorical_cols``, ``text_cols``)."""
    return dict((suite.meta or {}).get("poisonguard", {}).get("kinds_given") or {})


def suite_roles(suite) -> dict[str, str]:
    """Column -> ``id`` or ``ignored``, as the suite records them."""
    return dict((suite.meta or {}).get("poisonguard", {}).get("roles") or {})


def suite_label_col(suite) -> str | None:
    """The label column recorded in the suite's meta, if any."""
    return (suite.meta or {}).get("poisonguard", {}).get("label_col")


def suite_columns(suite) -> list[str]:
    """The exact column set the suite expects."""
    for expectation in suite.expectations:
        if expectation.expectation_type == "expect_table_columns_to_match_set":
            return list(expectation.column_set)
    return []


def suite_kinds(suite) -> dict[str, str]:
    """Column -> kind, as recorded in the suite's type-list expectations and, for embeddings, its meta."""
    kinds = {
        e.column: (e.meta or {}).get("kind", NUMERIC)
        for e in suite.expectations
        if e.expectation_type == "expect_column_values_to_be_in_type_list"
    }
    return kinds | {column: EMBEDDING for column in suite_embeddings(suite)}


def suite_types(suite) -> dict[str, dict[str, Any]]:
    """Column -> what its type expectation records beyond the kind (``integer``; ``timezone``, ``date_only``)."""
    return {
        e.column: {k: v for k, v in (e.meta or {}).items() if k != "kind"}
        for e in suite.expectations
        if e.expectation_type == "expect_column_values_to_be_in_type_list"
    }


def suite_arrow_types(suite) -> dict[str, Any]:
    """Column -> the Arrow type its values are written with, for the kinds that have one: integers, booleans,
    dates and timestamps (in their time zone). Other columns are written as checked."""
    import pyarrow as pa

    kinds, types = suite_kinds(suite), suite_types(suite)
    arrow = {}
    for column, kind in kinds.items():
        meta = types.get(column, {})
        if kind == NUMERIC:
            arrow[column] = pa.int64() if meta.get("integer") else pa.float64()
        elif kind == BOOLEAN:
            arrow[column] = pa.bool_()
        elif kind == DATETIME:
            arrow[column] = pa.date32() if meta.get("date_only") else pa.timestamp("ns", tz=meta.get("timezone"))
    return arrow


def suite_unchecked(suite) -> dict[str, str]:
    """Columns the suite gives no range or allowed-value set, with the reason (suites inferred before this
    was recorded: none)."""
    if suite is None:
        return {}
    return dict((suite.meta or {}).get("poisonguard", {}).get("unchecked") or {})


def suite_embeddings(suite) -> dict[str, int]:
    """Embedding column -> the number of values each of its cells must hold."""
    return dict((suite.meta or {}).get("poisonguard", {}).get("embeddings", {}))


def save_suite(suite, path: Path) -> Path:
    """Write ``suite`` as indented JSON at ``path`` atomically; return the path."""
    atomic_write_text(path, json.dumps(suite.to_json_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load_suite(path: Path):
    """Read a suite written by :func:`save_suite`; raises :class:`ConfigError` naming the file."""
    gx, _ = _gx()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.pop("id", None)
        return gx.ExpectationSuite(**data)
    except FileNotFoundError:
        raise ConfigError(f"{path}: suite file not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid expectation suite: {exc}") from None

"""Infer a Great Expectations suite from trusted reference data and keep it as JSON.

A suite records, for one dataset: the exact column set, each column's kind (numeric, categorical, text,
embedding) and the GX type list that kind allows, not-null where the reference has no nulls, numeric ranges
widened by a margin, and the allowed values of the label and of categorical columns. poisonguard's own
settings (label column, kinds) ride in the suite's and expectations' ``meta`` so the JSON file is the one
source of truth for a dataset's schema.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
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
# Text kinds live in object columns, which GX checks value by value against Python type names.
KIND_TYPES = {NUMERIC: ["int64", "float64"], CATEGORICAL: ["str"], TEXT: ["str"]}
MAX_CATEGORIES = 50  # more distinct values than this and a string column is free text, not a category
MAX_LABEL_VALUES = 1000


def _gx():
    # Great Expectations takes ~3 s to import; load it only when a suite is built or run.
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def column_kind(series: pd.Series) -> str:
    """The kind poisonguard treats a reference column as."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return NUMERIC
    if is_list_column(series):
        return EMBEDDING
    try:
        distinct = series.nunique(dropna=True)
    except TypeError:  # unhashable cells (a Parquet struct column's dicts, lists of text): count their text
        distinct = as_text(series).nunique(dropna=True)
    return CATEGORICAL if distinct <= MAX_CATEGORIES else TEXT


def infer_suite(
    reference: pd.DataFrame,
    dataset: str,
    label_col: str | None,
    range_margin: float = 0.1,
    source: str | None = None,
    range_false_quarantine: float | None = None,
    roles: dict[str, str] | None = None,
):
    """Build a suite for ``dataset`` from the trusted ``reference`` frame.

    ``reference`` holds the file's columns (a ``_row_id`` column, if present, is ignored). ``roles``: columns
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
    kinds = {column: column_kind(reference[column]) for column in columns}
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
        if column == label_col and kind == TEXT:
            kind = CATEGORICAL
        if kind == EMBEDDING:
            embeddings[column] = list_cells(series).modal_length()
            if not series.isna().any():
                expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            continue
        expectations.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=column, type_list=KIND_TYPES[kind], meta={"kind": kind}
            )
        )
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
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    }
    return gx.ExpectationSuite(name=dataset, expectations=expectations, meta=meta)


def _plain_values(values: np.ndarray, kind: str) -> list[Any]:
    if kind == NUMERIC:
        return sorted(v.item() if hasattr(v, "item") else v for v in values)
    return sorted(str(v) for v in values)


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

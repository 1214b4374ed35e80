"""Which quarantined rows a reviewer means: one filter for the CLI's ``--where`` and the review app's form.

A filter is a few clauses, all of which a row must meet::

    reason=schema:range:f5          the row has this reason (among others)
    only_reason=schema:range:f5     this is the row's only reason
    detector=ecod                   a detector flagged it (any reason code ending in ``:ecod``)
    status=pending                  its review status: pending, released or confirmed
    label=B                         its label (the scan's label column)
    column.amount=12.5              a batch column's value, compared as text (``column.`` may be left
                                    out when the name is not one of the words above)

Clauses are joined by ``and`` or ``;``. Every test runs on whole columns (the reasons exploded once), so
a filter over 100,000 quarantined rows costs a few tens of milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from poisonguard import PVALUE_PREFIX, REASONS, SCORE_PREFIX, STATUS
from poisonguard.errors import InputError

STATUSES = ("pending", "released", "confirmed")
KEYS = ("reason", "only_reason", "detector", "status", "label")
COLUMN_KEY = "column."
_SPLIT = re.compile(r"\s+and\s+|\s*;\s*", re.IGNORECASE)


@dataclass(frozen=True)
class RowFilter:
    """The clauses of a filter; empty fields do not filter. ``columns``: batch column -> value as text."""

    reason: str | None = None
    only_reason: str | None = None
    detector: str | None = None
    status: str | None = None
    label: str | None = None
    columns: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InputError(f"status={self.status!r}: give one of {', '.join(STATUSES)}")

    @property
    def empty(self) -> bool:
        return not any((self.reason, self.only_reason, self.detector, self.status, self.label, self.columns))

    def describe(self) -> str:
        """The filter as ``--where`` text (what the audit entry records)."""
        clauses = [f"{key}={getattr(self, key)}" for key in KEYS if getattr(self, key)]
        clauses += [f"{COLUMN_KEY}{name}={value}" for name, value in self.columns]
        return " and ".join(clauses)

    def mask(self, rows: pd.DataFrame, label_col: str | None) -> np.ndarray:
        """Which of ``rows`` (quarantined rows with ``_reasons`` and ``_status``) the filter keeps.

        Raises :class:`InputError` for a column the rows do not have.
        """
        keep = np.ones(len(rows), dtype=bool)
        if self.reason or self.only_reason or self.detector:
            codes = rows[REASONS].explode()
            position = pd.Series(np.arange(len(rows)), index=rows.index).reindex(codes.index).to_numpy()
            counts = np.bincount(position[codes.notna().to_numpy()], minlength=len(rows))

            def any_code(matches: np.ndarray) -> np.ndarray:
                return np.bincount(position[matches], minlength=len(rows)) > 0

            text = codes.astype("string")
            if self.reason:
                keep &= any_code((text == self.reason).fillna(False).to_numpy())
            if self.only_reason:
                keep &= any_code((text == self.only_reason).fillna(False).to_numpy()) & (counts == 1)
            if self.detector:
                keep &= any_code(text.str.endswith(f":{self.detector}").fillna(False).to_numpy())
        if self.status:
            keep &= (rows[STATUS] == self.status).to_numpy()
        if self.label:
            if label_col is None or label_col not in rows:
                raise InputError("label=...: this batch was scanned without a label column")
            keep &= _as_text(rows[label_col]) == self.label
        for name, value in self.columns:
            if name not in rows:
                raise InputError(f"{COLUMN_KEY}{name}: the quarantined rows have no column {name!r}")
            keep &= _as_text(rows[name]) == value
        return keep


def parse_where(text: str, columns: list[str] | None = None) -> RowFilter:
    """The :class:`RowFilter` written as ``text`` (see the module); :class:`InputError` naming the clause
    that cannot be read. ``columns``: the batch's columns, which may be named without ``column.``."""
    fields: dict[str, str] = {}
    named: list[tuple[str, str]] = []
    for clause in (c for c in _SPLIT.split(text.strip()) if c):
        key, equals, value = clause.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or not value:
            raise InputError(f"--where: {clause!r} is not KEY=VALUE (keys: {', '.join(KEYS)}, column.<name>)")
        if key in KEYS:
            if key in fields:
                raise InputError(f"--where: {key} is given twice")
            fields[key] = value
        elif key.startswith(COLUMN_KEY) and key != COLUMN_KEY:
            named.append((key[len(COLUMN_KEY):], value))
        elif columns is not None and key in columns:
            named.append((key, value))
        else:
            raise InputError(f"--where: unknown key {key!r}; use one of {', '.join(KEYS)}, or column.<name>=VALUE")
    return RowFilter(**fields, columns=tuple(named))


def evidence_order(rows: pd.DataFrame) -> np.ndarray:
    """Positions of ``rows`` strongest evidence first: the smallest p-value of any detector, then the
    largest score, then the most reasons. A row held by schema rules only (no p-value) follows the
    detector flags, since one genuine but unusual row may break several range rules at once."""
    p_columns = [c for c in rows.columns if c.startswith(PVALUE_PREFIX)]
    smallest = rows[p_columns].min(axis=1).to_numpy(dtype="float64") if p_columns else np.full(len(rows), np.nan)
    score_columns = [c for c in rows.columns if c.startswith(SCORE_PREFIX)]
    largest = rows[score_columns].max(axis=1).to_numpy(dtype="float64") if score_columns else np.zeros(len(rows))
    reasons = rows[REASONS].map(len).to_numpy() if REASONS in rows else np.zeros(len(rows))
    no_p = np.isnan(smallest)
    # lexsort sorts by the last key first.
    return np.lexsort((-reasons, -np.nan_to_num(largest, nan=-np.inf), np.nan_to_num(smallest, nan=2.0), no_p))


def _as_text(values: pd.Series) -> np.ndarray:
    text = values.astype("string")
    numeric = pd.api.types.is_float_dtype(values)
    if numeric:  # 12.0 is written 12 in a filter and in the CSV it came from
        finite = values.notna() & np.isfinite(values.fillna(0.0)) & (values.abs() < 2.0**53)
        whole = finite & (values == values.round())
        text = text.where(~whole, values.where(whole).astype("Int64").astype("string"))
    return text.fillna("").to_numpy(dtype=object)

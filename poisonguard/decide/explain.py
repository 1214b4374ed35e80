"""A reason a person reads for each quarantined row, from its reason codes, its values, the suite's rules
and the detectors' p-values: ``applicant_age = 150 outside [18, 95]``, ``annual_income is empty``,
``label_model: p = 0.0003 (flagged at p <= 0.0008)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from poisonguard.cells import as_text
from poisonguard.expectations.validate import SHORT_NAMES

SCHEMA = "schema"
# a schema reason's check (``range`` in ``schema:range:age``) -> the expectation whose kwargs hold its rule
_EXPECTATION_OF = {short: expectation for expectation, short in SHORT_NAMES.items()}


def detector_row_weights(calibration: dict[str, Any], detector: str,
                         groups: np.ndarray | None = None) -> np.ndarray | float:
    """``detector``'s weight of the budget for each row (``groups``, as :attr:`DetectorScores.groups` holds
    them): its weight fold's and class's where the report holds weights by fold (``row_weights``), its
    class's where it holds them by class alone, else the detector's one weight (1 when the report holds none)."""
    if groups is not None:
        for key in ("row_weights", "class_weights"):
            weights = (calibration.get(key) or {}).get("weights", {}).get(detector)
            if weights is not None:
                return np.asarray(weights, dtype="float64")[groups]
    return (calibration.get("detector_weights") or {}).get(detector, 1.0)


def detector_p_threshold(calibration: dict[str, Any], detector: str,
                         groups: np.ndarray | None = None) -> np.ndarray | float | None:
    """The p-value at or below which ``detector`` flags a row: a report's ``calibration`` threshold times the
    detector's weight (:func:`detector_row_weights`; one per row given ``groups``); ``None`` without a p-value
    threshold (no reference)."""
    alpha = calibration.get("p_value_threshold")
    return None if alpha is None else alpha * detector_row_weights(calibration, detector, groups)


def detector_p_thresholds(calibration: dict[str, Any], detectors) -> dict[str, str]:
    """Per detector of ``detectors`` that has a p-value threshold, the threshold as a reader sees it: one value,
    or the range over the rows' weight folds and classes where they differ (``0.0004-0.003 by row``; ``by
    class`` in a report with weights by class alone)."""
    if calibration.get("p_value_threshold") is None:
        return {}
    by_fold = calibration.get("row_weights") or {}
    codes = (by_fold.get("folds", 0) * by_fold.get("classes", 0)
             or len((calibration.get("class_weights") or {}).get("classes") or []))
    every_code = np.arange(codes) if codes else None
    shown = {}
    for name in detectors:
        levels = np.atleast_1d(detector_p_threshold(calibration, name, every_code))
        low, high = f"{float(levels.min()):.2g}", f"{float(levels.max()):.2g}"
        shown[name] = low if low == high else f"{low}-{high} by {'row' if by_fold else 'class'}"
    return shown


def explain_rows(rows: pd.DataFrame, reasons: pd.Series, scores: pd.DataFrame, expectations: list[dict[str, Any]],
                 calibration: dict[str, Any], groups: np.ndarray | None = None) -> pd.Series:
    """One text per row, phrases joined by ``"; "``, ``""`` for a row with no reason.

    ``rows``: the batch's rows as given; ``reasons``: their lists of reason codes; ``scores``: the per-row
    result columns (``<detector>_score``, ``<detector>_pvalue``); ``groups``: the rows' calibration groups
    (:attr:`DetectorScores.groups`), which set each row's p-value threshold; all aligned by position.
    ``expectations`` and ``calibration``: the report's ``schema.expectations`` and ``calibration``.
    """
    codes = pd.Series(reasons.to_numpy(), index=pd.RangeIndex(len(reasons))).explode().dropna()
    if codes.empty:
        return pd.Series("", index=reasons.index, dtype=object)
    rules = {(e["expectation"], e["column"]): e.get("kwargs") or {} for e in expectations if e.get("column")}
    own = calibration.get("own_thresholds") or {}
    exploded = pd.DataFrame({"position": codes.index.to_numpy(), "code": codes.astype(str).to_numpy()})
    phrases = pd.Series("", index=exploded.index, dtype=object)
    for code, where in exploded.groupby("code").groups.items():
        phrases.loc[where] = _phrases(code, exploded.loc[where, "position"].to_numpy(), rows, scores, rules,
                                      calibration, own, groups)
    joined = phrases.groupby(exploded["position"].to_numpy()).agg("; ".join)  # each row's reasons in their order
    return pd.Series(joined.reindex(range(len(reasons)), fill_value="").to_numpy(), index=reasons.index, dtype=object)


def _phrases(code: str, at: np.ndarray, rows: pd.DataFrame, scores: pd.DataFrame,
             rules: dict[tuple[str, str], dict], calibration: dict[str, Any],
             own_thresholds: dict[str, float], groups: np.ndarray | None) -> list[str] | str:
    family, _, rest = code.partition(":")
    if family == SCHEMA:
        check, _, column = rest.partition(":")
        if column not in rows:
            return code
        values = rows[column].iloc[at]
        shown = as_text(values).fillna("empty").str.slice(0, 60)
        if check == "not_null":
            return f"{column} is empty"
        rule = rules.get((_EXPECTATION_OF.get(check), column))
        if check == "range" and rule is not None:
            return (f"{column} = " + shown + f" outside [{_number(rule.get('min_value'))}, "
                    f"{_number(rule.get('max_value'))}]").tolist()
        if check == "in_set" and rule is not None:
            known = len(rule.get("value_set") or [])
            return (f"{column} = '" + shown + f"' is not one of its {known:,} known values").tolist()
        if check == "type":
            return f"{column} holds a value of the wrong type"
        return code
    detector = rest
    if f"{detector}_score" not in scores:
        return code
    values = scores[f"{detector}_score"].to_numpy()[at]
    levels = detector_p_threshold(calibration, detector, None if groups is None else np.asarray(groups)[at])
    if f"{detector}_pvalue" in scores and levels is not None:
        own = own_thresholds.get(detector)
        phrases = [f"{detector}: score {s:.3g} above its own threshold {own:.3g}" if own is not None and p > alpha
                   else f"{detector}: p = {p:.2g} (flagged at p <= {alpha:.2g})"
                   for s, p, alpha in zip(values, scores[f"{detector}_pvalue"].to_numpy()[at],
                                          np.broadcast_to(levels, len(at)))]
    else:
        phrases = [f"{detector}: score {s:.3g} above its limit" for s in values]
    return _with_details(phrases, detector, at, rows, scores)


def _with_details(phrases: list[str], detector: str, at: np.ndarray, rows: pd.DataFrame,
                  scores: pd.DataFrame) -> list[str]:
    """``phrases`` with what the detector said of each row: the label it expected, the columns that stood out."""
    if f"{detector}_predicted" in scores:
        predicted = scores[f"{detector}_predicted"].to_numpy()[at]
        probability = scores[f"{detector}_probability"].to_numpy()[at]
        phrases = [f"{phrase}; expected '{label}' (probability {p:.2f})" if label is not None else phrase
                   for phrase, label, p in zip(phrases, predicted, probability)]
    if f"{detector}_features" in scores:
        named = scores[f"{detector}_features"].to_numpy()[at]
        phrases = [f"{phrase}; most unusual: {_values(rows, position, columns)}" if columns is not None and len(columns)
                   else phrase for phrase, position, columns in zip(phrases, at, named)]
    return phrases


def _values(rows: pd.DataFrame, position: int, columns) -> str:
    """``"income = 2e+06, region = 'x'"``: the named columns of one row with their values."""
    shown = []
    for column in columns:
        if column not in rows:
            shown.append(column)
            continue
        value = rows[column].iloc[position]
        if pd.api.types.is_number(value) and not isinstance(value, bool):
            shown.append(f"{column} = {float(value):.4g}")
        else:
            text = "empty" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            shown.append(f"{column} = '{text[:40]}'")
    return ", ".join(shown)


def _number(value: Any) -> str:
    return "-inf" if value is None else f"{float(value):.4g}"

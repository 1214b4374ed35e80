"""Batch-level figures for the report: score distributions per detector, class balance and its drift.

Everything here is computed once, at scan time, from arrays the scan already holds, and stored in the
JSON report; the HTML report is rendered from that JSON and never needs the scores again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chisquare

from poisonguard.cells import as_text

HISTOGRAM_BINS = 40
# A class balance shift is reported when it is both significant (chi-square goodness of fit against the
# reference shares) and material (total variation distance between the share vectors): a large batch
# makes tiny shifts significant, a small one makes large shifts noise.
DRIFT_P_VALUE = 1e-3
DRIFT_TVD = 0.05


def score_distributions(
    evidence: dict[str, np.ndarray], flags: dict[str, np.ndarray], threshold: float | None, axis: str
) -> dict[str, dict[str, Any]]:
    """Per detector, a histogram of its evidence split into rows it flagged and rows it did not."""
    distributions = {}
    for name, values in evidence.items():
        values = np.asarray(values, dtype="float64")
        finite = np.isfinite(values)
        if not finite.any():
            continue
        low, high = float(values[finite].min()), float(values[finite].max())
        if threshold is not None and np.isfinite(threshold):
            low, high = min(low, threshold), max(high, threshold)
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
        flagged = np.asarray(flags[name], dtype=bool)
        distributions[name] = {
            "axis": axis,
            "threshold": threshold,
            "edges": edges.round(6).tolist(),
            "counts_kept": np.histogram(values[finite & ~flagged], edges)[0].tolist(),
            "counts_flagged": np.histogram(values[finite & flagged], edges)[0].tolist(),
        }
    return distributions


def class_balance(batch_labels: pd.Series, reference_counts: dict[str, int] | None) -> dict[str, Any]:
    """Rows per class in the batch and the reference (its :func:`class_counts`), and a drift warning when
    the shares moved."""
    return class_balance_of_counts(class_counts(batch_labels), reference_counts)


def class_balance_of_counts(batch_counts: dict[str, int], reference_counts: dict[str, int] | None) -> dict[str, Any]:
    """:func:`class_balance` from the batch's rows per class (as a batch read in chunks counts them)."""
    batch_counts = {str(k): int(v) for k, v in sorted(batch_counts.items())}
    balance: dict[str, Any] = {"batch": batch_counts, "reference": None, "drift": None}
    if not reference_counts or not batch_counts:
        return balance
    reference_counts = {str(k): int(v) for k, v in sorted(reference_counts.items())}
    balance["reference"] = reference_counts
    classes = sorted(set(batch_counts) | set(reference_counts))
    observed = np.array([batch_counts.get(c, 0) for c in classes], dtype="float64")
    expected_share = np.array([reference_counts.get(c, 0) for c in classes], dtype="float64")
    expected_share /= expected_share.sum()
    observed_share = observed / observed.sum()
    tvd = float(0.5 * np.abs(observed_share - expected_share).sum())
    new_classes = [c for c in classes if c not in reference_counts]
    if new_classes:
        p_value = 0.0
    else:
        # Classes the reference has but the batch lacks still count: their observed count is 0.
        p_value = float(chisquare(observed, expected_share * observed.sum()).pvalue)
    balance["total_variation_distance"] = round(tvd, 4)
    balance["p_value"] = p_value
    if new_classes or (p_value < DRIFT_P_VALUE and tvd > DRIFT_TVD):
        moved = max(classes, key=lambda c: abs(observed_share[classes.index(c)] - expected_share[classes.index(c)]))
        i = classes.index(moved)
        balance["drift"] = (
            f"class balance differs from the reference (total variation {tvd:.1%}, p={p_value:.1e}): "
            f"{moved!r} is {observed_share[i]:.1%} of the batch and {expected_share[i]:.1%} of the reference"
            + (f"; classes not in the reference: {', '.join(map(repr, new_classes))}" if new_classes else "")
        )
    return balance


def class_counts(labels: pd.Series) -> dict[str, int]:
    """Rows per class, missing labels counted as ``<missing>``, in class order."""
    text = as_text(labels).fillna("<missing>")
    return {str(k): int(v) for k, v in text.value_counts().sort_index().items()}


# A numeric column drifts when the two-sample Kolmogorov-Smirnov test is both significant and material.
FEATURE_DRIFT_P_VALUE = 1e-3
FEATURE_DRIFT_KS = 0.1
# The KS statistic of 100k rows is within about 0.005 of the full column's, far below the 0.1 that counts
# as material, so larger columns are compared on a fixed random sample of this many rows.
DRIFT_SAMPLE_ROWS = 100_000


def feature_drift(batch: pd.DataFrame, reference: pd.DataFrame | None, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Numeric columns whose distribution in the batch differs from the reference's (two-sample KS), each
    with its histogram against the reference's for the report."""
    return [t for t in _feature_tests(batch, reference, kinds) if t.pop("drifted")]


def _feature_tests(batch: pd.DataFrame, reference: pd.DataFrame | None, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Every numeric column the batch and the reference share, tested; a drifted one holds its message and
    the two histograms."""
    from scipy.stats import ks_2samp

    if reference is None:
        return []
    tests = []
    for column, kind in kinds.items():
        if kind != "numeric" or column not in batch or column not in reference:
            continue
        ours = pd.to_numeric(batch[column], errors="coerce").to_numpy(dtype="float64")
        theirs = pd.to_numeric(reference[column], errors="coerce").to_numpy(dtype="float64")
        ours, theirs = _sample(ours[np.isfinite(ours)]), _sample(theirs[np.isfinite(theirs)])
        if len(ours) < 20 or len(theirs) < 20:
            continue
        test = ks_2samp(ours, theirs)
        drifted = bool(test.pvalue < FEATURE_DRIFT_P_VALUE and test.statistic > FEATURE_DRIFT_KS)
        tests.append({"column": column, "drifted": drifted})
        if drifted:
            tests[-1].update({
                "ks_statistic": round(float(test.statistic), 4),
                "p_value": float(test.pvalue),
                "message": f"column {column!r} is distributed differently from the reference "
                           f"(KS {test.statistic:.2f}, p={test.pvalue:.1e}; median {np.median(ours):.4g} "
                           f"vs {np.median(theirs):.4g})",
                "histogram": shared_histogram(ours, theirs),
            })
    return tests


DRIFT_BINS = 30


def shared_histogram(batch: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The batch's and the reference's values as shares of their rows over one set of bins, for a plot of
    the one against the other. The bins span the pooled 0.5th to 99.5th percentile, so that a few extreme
    values do not squeeze the bulk into one bin; values beyond count in the end bins, so each side's shares
    still sum to 1."""
    pooled = np.concatenate([batch, reference])
    low, high = (float(v) for v in np.quantile(pooled, [0.005, 0.995]))
    if high <= low:
        low, high = float(pooled.min()), float(pooled.max())
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, DRIFT_BINS + 1)

    def shares(values: np.ndarray) -> list[float]:
        counts = np.histogram(np.clip(values, low, high), edges)[0]
        return (counts / max(len(values), 1)).round(5).tolist()

    return {"edges": edges.round(6).tolist(), "batch": shares(batch), "reference": shares(reference)}


# The batch as a whole differs from the reference (one verdict, instead of a list of warnings and of every
# row a drifted column pushed past a range rule) when a quarter of its numeric columns drifted, or when half
# of the detectors score it differently from the held-out reference rows. A few percent of poisoned rows
# move a KS statistic by about their share, below the 0.1 that makes one column or detector count as
# drifted (see ``FEATURE_DRIFT_KS``), so poisoning at the rates it is sized for does not read as drift.
WHOLE_BATCH_COLUMN_SHARE = 0.25
WHOLE_BATCH_DETECTOR_SHARE = 0.5


def drift_checks(
    batch: pd.DataFrame | None, reference: pd.DataFrame | None, kinds: dict[str, str],
    evidence: dict[str, np.ndarray], axis: str, rows_in: int, rows_quarantined: int,
) -> dict[str, Any]:
    """The report's drift figures: drifted columns (``feature_drift``), detectors whose scores drifted
    (``score_drift``) and the verdict on the batch as a whole (``batch_drift``, ``None`` without a
    reference)."""
    features = _feature_tests(batch, reference, kinds) if batch is not None else []
    scores = _score_tests(evidence, axis)
    drifted_columns = [t for t in features if t["drifted"]]
    drifted_detectors = [t for t in scores if t["drifted"]]
    verdict = None
    if features or scores:
        as_a_whole = (
            (features and len(drifted_columns) >= max(1, WHOLE_BATCH_COLUMN_SHARE * len(features)))
            or (scores and len(drifted_detectors) >= max(1, WHOLE_BATCH_DETECTOR_SHARE * len(scores)))
        )
        verdict = {
            "drifted": bool(as_a_whole),
            "columns_compared": len(features),
            "columns_drifted": [t["column"] for t in drifted_columns],
            "detectors_compared": len(scores),
            "detectors_drifted": [t["detector"] for t in drifted_detectors],
            "message": _verdict_message(drifted_columns, len(features), drifted_detectors, len(scores), rows_in,
                                        rows_quarantined) if as_a_whole else None,
        }
    for t in features + scores:
        t.pop("drifted")
    return {"feature_drift": drifted_columns, "score_drift": drifted_detectors, "batch_drift": verdict}


def _verdict_message(columns: list[dict], compared: int, detectors: list[dict], scored: int, rows_in: int,
                     quarantined: int) -> str:
    found = []
    if columns:
        names = ", ".join(repr(t["column"]) for t in columns[:5]) + (", …" if len(columns) > 5 else "")
        verb = "is" if len(columns) == 1 else "are"
        found.append(f"{len(columns)} of {compared} numeric columns {verb} distributed differently ({names})")
    if detectors:
        found.append(f"{len(detectors)} of {scored} detectors score it differently from the held-out reference "
                     "rows")
    held = f"{quarantined:,} of {rows_in:,} rows ({quarantined / max(rows_in, 1):.1%})"
    return (f"The batch as a whole differs from the reference: {' and '.join(found)}. {held} were quarantined. "
            "If the change is genuine (a new source, season or instrument), update the reference and its suite "
            "(`poisonguard expectations init`) and rescan, rather than review these rows one by one; if it is "
            "not, hold back the whole batch: its clean rows drifted too.")


def _sample(values: np.ndarray) -> np.ndarray:
    if len(values) <= DRIFT_SAMPLE_ROWS:
        return values
    return values[np.random.default_rng(0).choice(len(values), DRIFT_SAMPLE_ROWS, replace=False)]


CONFORMAL_AXIS = "-log10 conformal p-value"


def score_drift(evidence: dict[str, np.ndarray], axis: str) -> list[dict[str, Any]]:
    """Detectors whose batch scores are distributed differently from the held-out reference rows' scores."""
    return [t for t in _score_tests(evidence, axis) if t.pop("drifted")]


def _score_tests(evidence: dict[str, np.ndarray], axis: str) -> list[dict[str, Any]]:
    """Every detector whose scores can be compared with the held-out reference rows', tested.

    With a reference, each row's evidence is ``-log10`` of its conformal p-value against held-out trusted
    rows; for a batch drawn like the reference those p-values are uniform on (0, 1]. A one-sample KS test
    against the uniform, significant and material as for features (a few percent of poisoned rows move
    the statistic by about their share, below the 0.1 that counts), says the batch as a whole differs.
    Without a reference there is nothing to compare with, and the list is empty; nor for a detector that
    scores most rows 0.
    """
    from scipy.stats import kstest

    if axis != CONFORMAL_AXIS:
        return []
    tests = []
    for name, values in evidence.items():
        p_values = np.power(10.0, -np.asarray(values, dtype="float64"))
        p_values = p_values[np.isfinite(p_values)]
        if len(p_values) < 20 or np.mean(p_values >= 1.0) > 0.5:
            # Most rows at p = 1: a detector that scores most rows 0 (a trigger test) ties them, and tied
            # p-values are not uniform even for a batch drawn like the reference.
            continue
        # Sampled as feature columns are: on a million rows scipy's exact KS distribution alone takes a
        # second per detector, and the statistic of 100k rows already resolves the 0.1 that counts.
        test = kstest(_sample(p_values), "uniform")
        drifted = bool(test.pvalue < FEATURE_DRIFT_P_VALUE and test.statistic > FEATURE_DRIFT_KS)
        tests.append({"detector": name, "drifted": drifted})
        if drifted:
            low = float(np.mean(p_values < 0.05))
            tests[-1].update({
                "ks_statistic": round(float(test.statistic), 4),
                "p_value": float(test.pvalue),
                "message": f"{name} scores the batch differently from the held-out reference rows (KS "
                           f"{test.statistic:.2f}, p={test.pvalue:.1e}): {low:.1%} of rows are beyond the "
                           "95th percentile of the reference's scores, where 5% are expected",
            })
    return tests

"""Calibration as pure functions on score arrays: conformal p-values, their tail model, the union threshold
of several detectors, and the no-reference robust limits.

Nothing here knows a detector: each function takes scores (and the rows' calibration groups) and returns
arrays or thresholds, so each is tested on synthetic distributions with known answers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import binom

from poisonguard.score.crossfit import RANK_ROWS

MAD_TO_SIGMA = 1.4826
TAIL_ROWS = 20  # held-out rows above the tail threshold, per calibration group
CONFIDENCE_MISS = 0.1  # chance that the false-quarantine share of clean rows exceeds the budget
GROUP_SLICE_ROWS = 100_000


def calibration_groups(y_hold: np.ndarray | None, min_rows: int) -> np.ndarray:
    """Per held-out row, the calibration group: its class when that class has enough rows, else ``*``."""
    if y_hold is None:
        return np.full(0, "*", dtype=object)
    classes, counts = np.unique(y_hold, return_counts=True)
    big = set(classes[counts >= min_rows].tolist())
    return np.where(np.isin(y_hold, list(big)), y_hold, "*").astype(object)


def batch_groups(y_batch: np.ndarray | None, groups_hold: np.ndarray) -> pd.Categorical | None:
    """Per batch row, its calibration group (see :func:`calibration_groups`) as a categorical.

    The labels are hashed a slice at a time (a hash table over a million labels at once is 48 MB); the
    rows' groups are then small integer codes, which the per-group loops compare instead of label objects.
    """
    if y_batch is None or len(groups_hold) == 0:
        return None
    known = sorted(set(groups_hold.tolist()) - {"*"})
    position = {group: i for i, group in enumerate(known)}
    group_codes = np.empty(len(y_batch), dtype="int32")
    for start in range(0, len(y_batch), GROUP_SLICE_ROWS):
        codes, labels = pd.factorize(y_batch[start : start + GROUP_SLICE_ROWS])
        group_of_label = np.array([position.get(label, len(known)) for label in labels], dtype="int32")
        group_codes[start : start + GROUP_SLICE_ROWS] = group_of_label[codes]
    return pd.Categorical.from_codes(group_codes, categories=[*known, "*"])


def holdout_p_values(hold_scores: np.ndarray, hold_groups: np.ndarray) -> np.ndarray:
    """Each held-out row's p-value within its calibration group, judged against the others (see
    :func:`tail_p_values`); ``*`` (small or unknown classes) compares against all held-out rows."""
    if len(hold_groups) == 0:
        return tail_p_values(hold_scores, hold_scores, np.arange(len(hold_scores)))
    p_values = np.empty(len(hold_scores))
    codes, groups = pd.factorize(hold_groups)
    for code, group in enumerate(groups):
        in_hold = codes == code
        own = np.flatnonzero(in_hold) if group == "*" else np.arange(int(in_hold.sum()))
        reference_scores = hold_scores if group == "*" else hold_scores[in_hold]
        p_values[in_hold] = tail_p_values(reference_scores, hold_scores[in_hold], own)
    return p_values


def batch_p_values(
    hold_scores: np.ndarray, hold_groups: np.ndarray, batch_scores: np.ndarray, batch_groups: pd.Categorical | None,
    hold_folds: np.ndarray | None = None,
) -> np.ndarray:
    """Batch rows' p-values against the held-out rows of their calibration group.

    ``batch_scores`` is one score per row (one split: :func:`tail_p_values`), or, from cross-fitting, one row
    of scores per fold model, ``hold_folds`` giving the fold of each held-out row
    (:func:`cross_conformal_p_values`).
    """
    fold_scores = np.atleast_2d(batch_scores)
    if len(fold_scores) > 1 and hold_folds is None:
        raise ValueError("scores from several fold models need the fold of each held-out row (hold_folds)")

    def p_values_of(in_hold: np.ndarray | slice, in_batch: np.ndarray | slice) -> np.ndarray:
        if len(fold_scores) == 1:
            return tail_p_values(hold_scores[in_hold], fold_scores[0, in_batch])
        return cross_conformal_p_values(hold_scores[in_hold], hold_folds[in_hold], fold_scores[:, in_batch])

    if batch_groups is None or len(hold_groups) == 0:
        return p_values_of(slice(None), slice(None))
    p_values = np.empty(fold_scores.shape[1])
    codes = batch_groups.codes
    for code, group in enumerate(batch_groups.categories):
        in_batch = codes == code
        p_values[in_batch] = p_values_of(slice(None) if group == "*" else hold_groups == group, in_batch)
    return p_values


def cross_conformal_p_values(hold_scores: np.ndarray, hold_folds: np.ndarray, fold_scores: np.ndarray) -> np.ndarray:
    """Cross-conformal p-values (Vovk 2015) of new rows scored by ``k`` fold models (``fold_scores``: k x rows).

    Held-out row ``i`` was scored by the model of its fold ``hold_folds[i]``, which never saw it; a new row
    is compared, fold by fold, with that fold's held-out rows under that fold's model:
    ``(1 + sum_k #{i in fold k: score_i >= s_k}) / (n + 1)``. For a new row drawn like the reference, this
    exceeds the level at most twice as often as a split-conformal p-value, and about as often in practice.

    Among the top ``t`` of the counts (rows more extreme than all but a few held-out rows) ranks stop
    telling rows apart, and there the p-value is the tail estimate of :func:`tail_p_values`, each fold
    model's score against all held-out scores, averaged over the folds: a fold of 20 rows has no tail of
    its own to fit, and pooling the folds' tails gives it one.
    """
    n_rows = len(hold_scores)
    counts = np.zeros(fold_scores.shape[1])
    for fold, scores in enumerate(fold_scores):
        ordered = np.sort(hold_scores[hold_folds == fold])
        counts += len(ordered) - np.searchsorted(ordered, scores, side="left")
    p_values = (1.0 + counts) / (n_rows + 1.0)
    tail_rows = min(TAIL_ROWS, n_rows // 5)
    extreme = counts < tail_rows
    if tail_rows >= 5 and extreme.any():
        ordered = np.sort(hold_scores)
        p_values[extreme] = np.mean([_p_values_against(ordered, scores[extreme]) for scores in fold_scores], axis=0)
    return p_values


def tail_p_values(
    reference_scores: np.ndarray, scores: np.ndarray, own_index: np.ndarray | None = None
) -> np.ndarray:
    """Conformal p-values ``(1 + #reference >= s) / (n + 1)``, with a modelled tail past the top rows.

    Up to the ``(k+1)``-th largest reference score ``u`` they are exact: for a new row from the reference's
    distribution, ``P(p <= level) <= level``. Ranks alone cannot tell a row just above every reference score
    from one far beyond them (both get ``1/(n+1)``), and with several detectors such ties decide the
    threshold, so above ``u`` the p-value is an estimate: ``(k+1)/(n+1) * (1 + (s - u) / (k * beta))^-k``,
    ``beta`` the mean excess of the top ``k`` over ``u``, which is exact when the excesses are exponential
    and too small for heavier tails (Student t(3), 200 rows: 0.24% of new rows at p <= 0.1%, over 300 draws
    of 2,000 new rows). Discrete scores (no spread in the top rows) keep the plain rank p-values.

    ``own_index`` marks ``scores`` as reference rows themselves (their positions in ``reference_scores``).
    Each is then judged as a new row would be, against the other rows only: a top row left in its own tail
    fit would inflate its own p-value and make the threshold set from held-out rows too lenient.
    """
    ordered = np.sort(reference_scores)
    if own_index is None:
        return _p_values_against(ordered, scores)
    n_rows = len(ordered)
    if n_rows < 2:
        return np.ones(len(scores))
    # Below the tail only the rank matters, and leaving a row out shifts it by exactly one.
    p_values = (n_rows - np.searchsorted(ordered, scores, side="left")) / n_rows
    top = set(np.argsort(reference_scores, kind="stable")[-min(n_rows, TAIL_ROWS + 1):].tolist())
    for position in np.flatnonzero(np.isin(own_index, list(top))):  # at most TAIL_ROWS + 1 refits
        others = np.delete(reference_scores, own_index[position])
        p_values[position] = _p_values_against(np.sort(others), scores[position : position + 1])[0]
    return p_values


def _p_values_against(ordered: np.ndarray, scores: np.ndarray) -> np.ndarray:
    n_rows = len(ordered)
    p_values = (1.0 + n_rows - np.searchsorted(ordered, scores, side="left")) / (n_rows + 1.0)
    k = min(TAIL_ROWS, n_rows // 5)
    if k < 5:
        return p_values
    threshold = ordered[n_rows - k - 1]
    beta = float(np.mean(ordered[n_rows - k:] - threshold))
    if not beta > 0:
        return p_values
    above = scores > threshold
    # (k + 1) / (n + 1): the rank p-value just above the threshold, so that the tail continues it. Beyond,
    # the predictive tail of an exponential whose scale is estimated from k excesses: a new excess x exceeds
    # (1 + x / (k * beta))^-k of the time (a Lomax law, exact for exponential excesses). Plugging beta into
    # exp(-x / beta) instead flagged 1.2-1.3% of new rows at p <= 1% (300 draws of 200 reference rows against
    # 2,000 new ones; tests/test_calibration.py keeps the rule within 15%): the noise in beta makes the plain
    # exponential too light.
    tail = (k + 1.0) / (n_rows + 1.0) * (1.0 + (scores[above] - threshold) / (k * beta)) ** -k
    p_values[above] = tail  # not the smaller of tail and rank: that minimum flagged 25% too many rows
    return p_values


def confident_rows(budget: float) -> int:
    """How many calibration rows hold ``budget`` "with 90% confidence" by :func:`union_threshold`'s ranks."""
    return math.ceil(RANK_ROWS / budget)


def union_threshold(min_p_hold: np.ndarray, budget: float, n_detectors: int) -> tuple[float, str]:
    """The p-value threshold for the union of all detectors' flags, and the guarantee it carries.

    A new clean row's minimum p-value is exchangeable with the held-out rows' (each judged against the
    others), so a threshold just below the ``(a+1)``-th smallest of ``n`` held-out values flags a new clean
    row with probability at most ``(a+1)/(n+1)`` (split conformal):

    * with at least ``RANK_ROWS / budget`` held-out rows (1,000 at 1%), ``a`` is the largest count for which
      the flagged share of new clean rows, ``Beta(a+1, n-a)``-distributed, exceeds the budget with
      probability ``P(Binomial(n, budget) <= a)`` of at most ``CONFIDENCE_MISS``: "with 90% confidence";
    * with fewer, but at least ``1 / budget - 1`` (99 at 1%), ``a + 1 = floor((n+1) * budget)``: the share is
      at most the budget on average over references, "in expectation";
    * with fewer still, no held-out rank is rare enough, and the threshold is an estimate: the evidence
      ``-log10(min p)`` of the top held-out rows has an exponential tail (exactly so for uniform p-values),
      extrapolated by the same predictive Lomax law as :func:`tail_p_values`; below 25 rows, the budget is
      split evenly across detectors (Bonferroni).
    """
    n_rows = len(min_p_hold)
    values = np.sort(min_p_hold)
    if n_rows * budget >= RANK_ROWS:
        misses = binom.cdf(np.arange(n_rows + 1), n_rows, budget)
        allowed = int(np.flatnonzero(misses <= CONFIDENCE_MISS)[-1])  # exists: misses[0] <= exp(-10)
        return float(np.nextafter(values[allowed], 0.0)), "with 90% confidence"
    ranks = math.floor((n_rows + 1) * budget + 1e-9)
    if ranks >= 1:
        return float(np.nextafter(values[ranks - 1], 0.0)), "in expectation"
    evidence = np.sort(-np.log10(np.maximum(min_p_hold, np.finfo("float64").tiny)))
    tail_rows = min(TAIL_ROWS, n_rows // 5)
    if tail_rows >= 5 and tail_rows + 1 > budget * (n_rows + 1):
        start = evidence[n_rows - tail_rows - 1]
        beta = float(np.mean(evidence[n_rows - tail_rows:] - start))
        if beta > 0:
            # A new row's evidence passes start + x with chance (t+1)/(n+1) * (1 + x / (t beta))^-t; solved for
            # the budget. The plug-in exponential, start + beta * log(t / (budget (n+1))), sat closer to the
            # top held-out rows and let 100-row references quarantine 1.04-1.24% of clean rows on average
            # (null benchmark, 30 seeds, 1% budget).
            excess = tail_rows * beta * (((tail_rows + 1) / (budget * (n_rows + 1))) ** (1 / tail_rows) - 1)
            return float(10.0 ** -(start + excess)), "estimate"
    return budget / max(n_detectors, 1), "estimate"


def robust_limits(scores: np.ndarray, groups: np.ndarray, z: float) -> dict[str, float]:
    def limit(values: np.ndarray) -> float:
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        return median + z * MAD_TO_SIGMA * mad

    limits = {"*": limit(scores)}
    if len(groups):
        for group in np.unique(groups):
            if group != "*":
                limits[str(group)] = limit(scores[groups == group])
    return limits


def row_limits(limits: dict[str, float], groups: pd.Categorical | None, n_rows: int) -> np.ndarray:
    """Each row's threshold: its calibration group's, or the all-rows one (``*``)."""
    if groups is None:
        return np.full(n_rows, limits["*"])
    per_group = np.array([limits.get(str(group), limits["*"]) for group in groups.categories], dtype="float64")
    return per_group[groups.codes]

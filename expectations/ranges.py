"""The allowed range of a numeric column, inferred from trusted values so that clean rows rarely fail it,
however many columns a batch has.

The observed minimum and maximum of n reference values are exceeded by a new clean value with
probability 2/(n+1) (exchangeability); a margin of a tenth of the span lowers that, but by a factor no
wide batch can absorb. One column barely notices; 2,000 columns add up: 500 x 2,000 clean i.i.d. rows
against a 500-row reference had 66% of their rows quarantined by ranges alone (39% in the red-team run).

A row fails a suite's ranges when it fails any of them, so the false-quarantine share the ranges may
spend together (``false_quarantine``) is split over the m range columns and both sides (Bonferroni:
``false_quarantine / 2m`` per side), and each bound is extrapolated to that tail probability from the most
extreme tenth of the reference values: a Generalised Pareto tail (peaks over threshold) whose shape and
scale come from probability-weighted moments (Hosking & Wallis 1987). That is closed form, so 4,000 column
sides fit in milliseconds where ``scipy.stats.genpareto``'s maximum likelihood would take seconds. The
shape is kept at or above 0, never lighter than exponential: a short tail estimated from few values would
put the bound just past the largest one. Bounds are never narrower than the observed range plus ``margin``
of its span, the rule before this one.

Measured (``python -m benchmarks.wide --tails``): 5,000 fresh rows x 3 seeds, ranges sharing 0.1% over
2,000 columns from 500 reference rows: Gaussian and Laplace columns 0.00% of rows fail, lognormal 0.03%,
Student t(3) 0.60% (worst 0.64%), where the observed-range rule failed 70-99%. Before the shape was taken one
standard error heavier, lognormal failed 5.1% and Student t(3) 18%; t(3) still exceeds its share at 2,000
columns, and a reference value beyond the others' range (see below) takes the range away.

Some columns cannot be given a range that clean rows rarely fail, and get none (:func:`why_no_range`): a
column constant or near-constant in the reference (a border pixel that is 0 but for one or two strokes)
would quarantine every row with ink there, and a column whose most extreme reference value lies beyond the
range the other values give (a tail heavier than the model) shows, by leaving that one value out, that new
clean values fail the range about once in ``n``: a share no budget can give each column. The detectors
still read those columns. Because a tail estimated from few values may be heavier than it looks, the bound
is extrapolated with the shape one standard error heavier than estimated.
The same holds for a categorical column's allowed values (:func:`why_no_value_set`): the share of new rows
carrying a value the reference never showed is estimated by Good-Turing, the share of reference values
seen exactly once, plus one: ``(singletons + 1) / (rows + 1)`` is the conformal p-value of a value never seen
(among the reference rows and the new one, each judged against the others, that many are the only one of
their value), so a set enforced only where it is within the column's share of the budget fails clean rows
within that share. Good-Turing alone is unbiased over references but lowest exactly where a set gets inferred:
on the null benchmark's mixed table, 100-row references with no singleton (the rarest of 12 categories, 2.7%
of rows, unseen) left sets that failed 0.68% of clean rows on average, against a schema budget of 0.1%.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Fewer reference values than this leave too few in the tail to fit it: the margin rule alone applies.
MIN_TAIL_VALUES = 10
TAIL_SHARE = 0.1  # the tail model reads the most extreme tenth of the values (at least MIN_TAIL_VALUES)
MAX_SHAPE = 0.9  # a shape of 1 or more has no mean: a tail that heavy is read as this heavy


def tail_bound(values: np.ndarray, exceed_probability: float) -> float:
    """The value a new draw from ``values``' distribution exceeds with about ``exceed_probability``
    (upper tail), from a Generalised Pareto tail fitted to the excesses of the top tenth by
    probability-weighted moments; ``inf`` with too few values to fit."""
    ordered = np.sort(np.asarray(values, dtype="float64"))
    n = len(ordered)
    k = max(MIN_TAIL_VALUES, math.ceil(TAIL_SHARE * n))
    if n < 2 * k:
        return math.inf
    threshold = ordered[n - k - 1]
    excesses = ordered[n - k:] - threshold  # ascending
    first = float(excesses.mean())
    second = float(np.mean(excesses * (1 - (np.arange(1, k + 1) - 0.35) / k)))
    if first <= 0 or first - 2 * second <= 0:  # a flat tail: every extreme value equal
        return float(ordered[-1])
    # The shape estimated from k values is uncertain by about sqrt(4 / 3k) (PWM, near exponential tails:
    # Hosking & Wallis 1987); a tail that looks exponential may be heavier, and a bound extrapolated far
    # past the data is only as safe as that guess, so the shape used is one standard error heavier.
    shape = min(max(2 - first / (first - 2 * second), 0.0) + math.sqrt(4 / (3 * k)), MAX_SHAPE)
    scale = 2 * first * second / (first - 2 * second)
    ratio = (k / n) / min(exceed_probability, k / n)
    if shape == 0.0:
        return float(threshold + scale * math.log(ratio))
    return float(threshold + scale / shape * (ratio**shape - 1))


def range_bounds(values: np.ndarray, n_columns: int, false_quarantine: float | None,
                 margin: float) -> tuple[float, float]:
    """``(low, high)`` for one column of finite reference ``values``.

    ``n_columns`` is how many columns of the suite get a range (their union shares ``false_quarantine``);
    ``false_quarantine=None`` keeps the margin rule alone. Raises ``ValueError`` for no values.
    """
    values = np.asarray(values, dtype="float64")
    if len(values) == 0:
        raise ValueError("a range needs at least one value")
    low, high = float(values.min()), float(values.max())
    width = margin * ((high - low) or max(abs(high), 1.0))
    low, high = low - width, high + width
    if false_quarantine is None:
        return low, high
    per_side = false_quarantine / (2 * max(n_columns, 1))
    upper = tail_bound(values, per_side)
    lower = -tail_bound(-values, per_side)
    return (min(low, lower) if math.isfinite(lower) else low, max(high, upper) if math.isfinite(upper) else high)


def why_no_range(values: np.ndarray, n_columns: int, false_quarantine: float | None, margin: float) -> str | None:
    """Why finite reference ``values`` get no range, or ``None`` when :func:`range_bounds` may set one.

    Leaving the largest (smallest) value out and setting the range from the others estimates how often a
    new clean value falls outside: each value is the left-out one with the same chance, so a range that
    excludes the left-out extreme fails about 1 / n of new clean values, more than a column's share of the
    budget allows below ``n_columns / false_quarantine`` values.
    """
    values = np.asarray(values, dtype="float64")
    if len(values) == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if low == high:
        return f"constant in the reference ({_number(low)}): any other value would fail a range"
    modes, counts = np.unique(values, return_counts=True)
    others = len(values) - int(counts.max())
    if others < MIN_TAIL_VALUES:  # a border pixel that is 0 but for one or two strokes of ink
        return (f"near-constant in the reference: {others} of its {len(values):,} values differ from "
                f"{_number(float(modes[counts.argmax()]))}, too few to tell how far new ones may lie")
    if false_quarantine is None or len(values) < 3 or len(values) * false_quarantine / max(n_columns, 1) >= 1:
        return None
    order = np.argsort(values, kind="stable")
    without_high = range_bounds(values[order[:-1]], n_columns, false_quarantine, margin)
    without_low = range_bounds(values[order[1:]], n_columns, false_quarantine, margin)
    if high > without_high[1] or low < without_low[0]:
        side, extreme = ("largest", high) if high > without_high[1] else ("smallest", low)
        return (f"its {side} reference value ({_number(extreme)}) lies outside the range the other values give: "
                f"clean values would fail a range about once in {len(values):,}")
    return None


def why_no_value_set(values: pd.Series, n_columns: int, false_quarantine: float | None) -> str | None:
    """Why a categorical column's reference ``values`` get no allowed-value set, or ``None``.

    Good-Turing: the share of new values never seen in the reference is about the share of reference values
    seen exactly once, here taken as ``(singletons + 1) / (seen + 1)``; above the column's share of the
    budget the set is not enforced. So a set needs at least ``n_columns / false_quarantine`` reference values.
    """
    if false_quarantine is None:
        return None
    counts = values.dropna().value_counts()
    singletons = int((counts == 1).sum())
    seen = int(counts.sum())
    unseen_share = (singletons + 1) / (seen + 1)
    if seen == 0 or unseen_share <= false_quarantine / max(n_columns, 1):
        return None
    return (f"{singletons} of its {seen:,} reference values occur once: up to about {unseen_share:.2%} of new "
            "clean rows could carry a value the reference never showed")


def _number(value: float) -> str:
    return f"{value:g}"

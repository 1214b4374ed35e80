"""Fit the configured detectors, score every batch row, and set each detector's flag threshold.

Two modes:

* **reference** (trusted data given): the reference is split into a fit part and a held-out calibration
  part, or, when the held-out part would be too small to set the budget's threshold, cross-fitted so that
  every reference row calibrates (:mod:`poisonguard.crossfit`). Each batch row gets a conformal p-value
  per detector against the calibration scores of its own class (all calibration rows when its class is
  too small). One p-value threshold is chosen so that, on the calibration rows, the union of all
  detectors' flags stays within ``max_false_quarantine``: the budget holds for the combined decision,
  not for each detector alone.
* **batch** (no reference): detectors are fitted on the batch rows that passed the schema, and a detector
  flags a row whose score exceeds ``median + robust_z * 1.4826 * MAD`` of its class's scores (all rows when
  the class is small). No clean data means no calibrated false-quarantine rate; the report says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from poisonguard.batch_stats import CONFORMAL_AXIS
from poisonguard.config import ScanConfig
from poisonguard.crossfit import RANK_ROWS, calibration_folds, cross_fit, fold_positions
from poisonguard.errors import ConfigError
from poisonguard.detectors import ClassConditional, Detector, detector_class, make_detector
from poisonguard.features import FeatureEncoder
from poisonguard.representations import EmbeddingView, Probe, probe_activations
from poisonguard.scores import DetectorScores
from poisonguard.values import as_text

MAD_TO_SIGMA = 1.4826
TAIL_ROWS = 20  # held-out rows above the tail threshold, per calibration group
CONFIDENCE_MISS = 0.1  # chance that the false-quarantine share of clean rows exceeds the budget
GROUP_SLICE_ROWS = 100_000


def score_rows(
    batch: pd.DataFrame,
    reference: pd.DataFrame | None,
    kinds: dict[str, str],
    label_col: str | None,
    config: ScanConfig,
    fit_mask: np.ndarray | None = None,
) -> DetectorScores:
    """Score every row of ``batch`` with each detector in ``config.detectors``.

    ``fit_mask`` marks the batch rows that may be used for fitting when there is no reference (rows that
    passed the schema). Returns empty scores for an empty batch.
    """
    if len(batch) == 0:
        return DetectorScores(calibration={"mode": "empty batch"})
    if has_enough_reference(reference, config):
        fitted, skipped = fit_reference(reference, kinds, label_col, config)
        if fitted is None:
            return DetectorScores(calibration={"mode": "reference", "skipped_detectors": skipped})
        return finish_scores(fitted, batch, score_in_chunks(fitted, batch), skipped)
    names, skipped = _runnable(config, label_col, has_reference=False)
    if not names:
        return DetectorScores(calibration={"mode": "batch", "skipped_detectors": skipped})
    fit_mask = np.ones(len(batch), dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    result = _score_against_batch(batch, fit_mask, kinds, label_col, config, names)
    result.calibration["skipped_detectors"] = skipped
    return result


def has_enough_reference(reference: pd.DataFrame | None, config: ScanConfig) -> bool:
    """Whether ``reference`` can be split into fitting and calibration parts (reference mode)."""
    return reference is not None and len(reference) >= 2 * config.min_class_rows


def _detector(name: str, label_col: str | None, config: ScanConfig):
    detector = make_detector(name, seed=config.seed)
    if label_col and detector.per_class:
        return ClassConditional(detector, config.min_class_rows)
    return detector


def _runnable(config: ScanConfig, label_col: str | None, has_reference: bool) -> tuple[list[str], dict[str, str]]:
    """The configured detectors that can run here, and why each of the others cannot."""
    runnable, skipped = [], {}
    for name in config.detectors:
        registered = detector_class(name)
        if registered.needs_labels and label_col is None:
            skipped[name] = "needs a label column (--label-col)"
        elif registered.needs_reference and not has_reference:
            skipped[name] = "needs trusted reference data (--reference)"
        else:
            runnable.append(name)
    return runnable, skipped


def _labels(frame: pd.DataFrame, label_col: str | None) -> np.ndarray | None:
    """The label column as text objects (``<missing>`` for nulls), one shared object per class: a string
    object per row would cost about 50 bytes a row for labels such as ``approve``."""
    if label_col is None:
        return None
    codes, classes = pd.factorize(as_text(frame[label_col]).fillna("<missing>"))
    return np.asarray(classes, dtype=object)[codes]


class FittedReference:
    """Detectors fitted on a trusted reference, with what calibrating their batch scores needs.

    Made by :func:`fit_reference`; :func:`score_chunk` scores any slice of the batch with it (in any
    process: it pickles), and :func:`finish_scores` turns the chunks' scores into calibrated flags.
    """

    def __init__(self, reference: pd.DataFrame, kinds: dict[str, str], label_col: str | None,
                 config: ScanConfig, names: list[str], batch_sample: pd.DataFrame | None = None) -> None:
        self.label_col, self.config, self.names = label_col, config, names
        self.reference_rows = len(reference)
        labels = _labels(reference, label_col)
        rows, self.folds = fold_positions(calibration_folds(len(reference), labels, config))
        # X_fit: rows only fitted on (none when cross-fitting); X_hold: the calibration rows, in the order of
        # the folds' calibration parts. Only the encoded rows are kept: frames would copy the reference.
        fit_only = len(rows) - sum(len(hold) for _, hold in self.folds)
        used = reference.iloc[rows]
        # Fitted on the rows only fitted on; when every row also calibrates (cross-fitting) on all of them.
        self.encoder = FeatureEncoder(kinds, label_col).fit(used.iloc[:fit_only] if fit_only else used)
        X_used = self.encoder.transform(used)
        y_used = None if labels is None else labels[rows]
        self.X_fit, self.X_hold = X_used[:fit_only], X_used[fit_only:]
        self.y_fit, self.y_hold = (None, None) if y_used is None else (y_used[:fit_only], y_used[fit_only:])
        self.fit_rows = max(len(fit) for fit, _ in self.folds)
        self.holdout_rows = len(self.X_hold)
        self.detectors = {name: _detector(name, label_col, config) for name in names}
        # What the backdoor checks read, when one runs: the batch's own embedding, standardised like the
        # encoded columns (fitted on the rows only fitted on), or, set when needed, a probe's activations.
        self.representation: Probe | EmbeddingView | None = None
        self.embedding_parts: tuple[np.ndarray, np.ndarray] | None = None
        if config.has_embedding and _read_representation(self.detectors):
            self.representation = EmbeddingView(config).fit(used.iloc[:fit_only] if fit_only else used)
            self.embedding_parts = (self.representation.rows(used.iloc[:fit_only]),
                                    self.representation.rows(used.iloc[fit_only:]))
        self.holdout_scores: dict[str, np.ndarray] = {}
        if batch_sample is not None:
            self._fit_on_sample(batch_sample, used, X_used, y_used)
            return
        # Detectors fitted on the reference alone and reading the encoded columns score batch rows chunk
        # by chunk, so the encoded batch never exists whole; the others need every batch row at once.
        self.streamed = {}
        for name, detector in self.detectors.items():
            if not detector.transductive and detector.representation == "features":
                self.streamed[name], self.holdout_scores[name] = cross_fit(detector, X_used, y_used, self.folds)
        if len(self.streamed) == len(self.detectors):
            # Every detector is fitted and has scored the held-out rows: the encoded reference (32 MB at
            # 200k rows x 20 columns) would only sit in memory while the batch is scored.
            self.X_fit = self.X_hold = self.embedding_parts = None

    def _fit_on_sample(self, batch_sample: pd.DataFrame, used: pd.DataFrame, X_used: np.ndarray,
                       y_used: np.ndarray | None) -> None:
        """A chunked scan: every detector scores rows chunk by chunk. Those that judge the batch's rows
        against each other (transductive) are fitted on a uniform sample of the batch, and score the
        held-out rows and every chunk alike, as rows they were not fitted on: conformal calibration needs
        held-out and batch rows scored the same way."""
        X_sample, y_sample = self.encoder.transform(batch_sample), _labels(batch_sample, self.label_col)
        if self.representation is None and self.label_col is not None and _read_representation(self.detectors):
            self.representation = Probe(self.config.seed).fit(
                np.vstack([X_used, X_sample]), np.concatenate([y_used, y_sample])
            )
        used_views = views_of(self.detectors, used, X_used, self.representation)
        sample_views = views_of(self.detectors, batch_sample, X_sample, self.representation)
        self.streamed = {}
        for name, detector in self.detectors.items():
            V_used = used_views[name]
            if detector.transductive:
                detector.fit(sample_views[name], y_sample)
                self.streamed[name] = detector
                self.holdout_scores[name] = detector.decision_function(V_used[len(self.X_fit):], self.y_hold)
            else:
                self.streamed[name], self.holdout_scores[name] = cross_fit(detector, V_used, y_used, self.folds)
        self.X_fit = self.X_hold = self.embedding_parts = None  # every detector now scores rows chunk by chunk


def _read_representation(detectors: dict[str, Detector]) -> bool:
    """Whether any of ``detectors`` reads a representation beyond the encoded columns (the backdoor checks)."""
    return any(d.representation == "probe" for d in detectors.values())


def views_of(detectors: dict[str, Detector], frame: pd.DataFrame, X: np.ndarray,
             representation: Probe | EmbeddingView | None) -> dict[str, np.ndarray]:
    """What each of ``detectors`` reads of the rows of ``frame``, encoded as ``X``: ``representation``'s
    view of them (the batch's own embedding, a probe's activations) for the backdoor checks, computed once
    and only when one of them reads it, else ``X``."""
    seen = X
    if representation is not None and _read_representation(detectors):
        seen = representation.rows(frame, X)
    return {name: seen if d.representation == "probe" else X for name, d in detectors.items()}


def fit_reference(
    reference: pd.DataFrame, kinds: dict[str, str], label_col: str | None, config: ScanConfig,
    batch_sample: pd.DataFrame | None = None,
) -> tuple[FittedReference | None, dict[str, str]]:
    """Fit the configured detectors on ``reference``; ``None`` when it is too small to calibrate with.

    With ``batch_sample`` (a chunked scan), every detector is made to score rows chunk by chunk: see
    :meth:`FittedReference._fit_on_sample`. Also returns the detectors that cannot run, with the reason.
    """
    has_reference = has_enough_reference(reference, config)
    names, skipped = _runnable(config, label_col, has_reference)
    if not has_reference or not names:
        return None, skipped
    return FittedReference(reference, kinds, label_col, config, names, batch_sample), skipped


def score_chunk(fitted: FittedReference, chunk: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of the rows of ``chunk`` by every detector that scores rows one by one (see ``streamed``).

    A row's score depends on that row alone, so scoring a batch in chunks equals scoring it whole.
    """
    X, y = fitted.encoder.transform(chunk), _labels(chunk, fitted.label_col)
    views = views_of(fitted.streamed, chunk, X, fitted.representation)
    return {name: detector.decision_function(views[name], y) for name, detector in fitted.streamed.items()}


def flag_reference_chunk(
    fitted: FittedReference, calibration: ReferenceCalibration, chunk: pd.DataFrame
) -> DetectorScores:
    """Scores, conformal p-values and flags of the rows of ``chunk`` (a chunked scan with a reference)."""
    return apply_calibration(calibration, score_chunk(fitted, chunk), _labels(chunk, fitted.label_col))


def score_in_chunks(fitted: FittedReference, batch: pd.DataFrame) -> list[dict[str, np.ndarray]]:
    """:func:`score_chunk` over consecutive slices of ``config.score_chunk_rows`` rows, in this process."""
    step = fitted.config.score_chunk_rows
    return [score_chunk(fitted, batch.iloc[start : start + step]) for start in range(0, len(batch), step)]


def finish_scores(fitted: FittedReference, batch: pd.DataFrame, chunk_scores: list[dict[str, np.ndarray]],
                  skipped: dict[str, str] | None = None) -> DetectorScores:
    """Calibrated flags for every batch row, from the scores of its consecutive chunks, in batch order.

    Detectors that must see the whole batch (transductive ones, and those reading the probe's
    activations) run here.
    """
    result = DetectorScores()
    for name in fitted.streamed:
        result.scores[name] = np.concatenate([np.empty(0)] + [part[name] for part in chunk_scores])
        if len(result.scores[name]) != len(batch):
            raise ValueError(f"chunk scores cover {len(result.scores[name])} rows, the batch has {len(batch)}")
    holdout_scores = dict(fitted.holdout_scores)
    whole = {n: d for n, d in fitted.detectors.items() if n not in fitted.streamed}
    label_col, config = fitted.label_col, fitted.config
    X_fit, X_hold, y_fit, y_hold = fitted.X_fit, fitted.X_hold, fitted.y_fit, fitted.y_hold
    y_batch = _labels(batch, label_col)
    if whole:
        X_batch = fitted.encoder.transform(batch)
        views = {"features": (X_fit, X_hold, X_batch)}
        if config.has_embedding and _read_representation(whole):
            views["probe"] = (*fitted.embedding_parts, fitted.representation.rows(batch))
        elif label_col is not None and _read_representation(whole):
            views["probe"] = tuple(
                probe_activations(
                    np.vstack([X_fit, X_hold, X_batch]),
                    np.concatenate([y_fit, y_hold, y_batch]),
                    [X_fit, X_hold, X_batch],
                    config.seed,
                )
            )
        for name, detector in whole.items():
            V_fit, V_hold, V_batch = views.get(detector.representation, views["features"])
            if detector.transductive:
                # Fitted on the batch and the held-out trusted rows together, so clean batch rows and
                # held-out rows are treated alike and the held-out scores calibrate the batch's.
                pooled = detector.fit_decision_function(
                    np.vstack([V_hold, V_batch]), np.concatenate([y_hold, y_batch]) if label_col is not None else None
                )
                holdout_scores[name], result.scores[name] = pooled[: len(V_hold)], pooled[len(V_hold):]
            else:
                V_used = np.vstack([V_fit, V_hold])
                y_used = None if label_col is None else np.concatenate([y_fit, y_hold])
                scorer, holdout_scores[name] = cross_fit(detector, V_used, y_used, fitted.folds)
                result.scores[name] = scorer.decision_function(V_batch, y_batch)
    calibration = calibrate_holdout(fitted, holdout_scores)
    calibration.summary["skipped_detectors"] = skipped or {}
    return apply_calibration(calibration, result.scores, y_batch)


class ReferenceCalibration:
    """The held-out rows' scores per detector and the one p-value threshold set from them.

    Made once per scan by :func:`calibrate_holdout`; :func:`apply_calibration` then flags any set of batch
    rows (the whole batch, or one chunk at a time) by the same rule.
    """

    def __init__(self, names: list[str], reasons: dict[str, str], holdout_scores: dict[str, np.ndarray],
                 groups_hold: np.ndarray, alpha: float, summary: dict[str, Any]) -> None:
        self.names, self.reasons, self.holdout_scores = names, reasons, holdout_scores
        self.groups_hold, self.alpha, self.summary = groups_hold, alpha, summary


def calibrate_holdout(fitted: FittedReference, holdout_scores: dict[str, np.ndarray]) -> ReferenceCalibration:
    """Set the p-value threshold for the union of all detectors from the held-out rows' scores."""
    config, names, y_hold = fitted.config, fitted.names, fitted.y_hold
    # A class is calibrated on its own held-out rows only when it has enough of them to reach the budget:
    # with d detectors, a row more extreme than all n held-out rows of its class in one detector has
    # p = 1/(n+1), and up to d/(n+1) of clean rows are that extreme in some detector. Smaller classes
    # are calibrated against all held-out rows together.
    smallest_group = max(config.min_class_rows, math.ceil(len(names) / config.max_false_quarantine))
    groups_hold = _calibration_groups(y_hold, smallest_group)
    holdout_p = {name: _holdout_p_values(holdout_scores[name], groups_hold) for name in names}
    min_p_hold = np.vstack(list(holdout_p.values())).min(axis=0)
    alpha, guarantee = _union_threshold(min_p_hold, config.max_false_quarantine, len(names))
    combined_hold = min_p_hold <= alpha
    summary = {
        "mode": "reference",
        "reference_rows": int(fitted.reference_rows),
        "fit_rows": fitted.fit_rows,
        "holdout_rows": fitted.holdout_rows,
        # 1: fitted on one part of the reference, calibrated on the other; k: cross-fitted, every row calibrates
        "folds": len(fitted.folds),
        "max_false_quarantine": config.max_false_quarantine,
        "p_value_threshold": float(alpha),
        "holdout_quarantine_rate": float(combined_hold.mean()),
        "per_detector_holdout_rate": {n: float((p <= alpha).mean()) for n, p in holdout_p.items()},
        "evidence_axis": CONFORMAL_AXIS,
        "evidence_threshold": float(-np.log10(alpha)) if alpha > 0 else None,
    }
    summary["guarantee"] = guarantee
    if guarantee == "approximate":
        summary["warning"] = (
            f"{fitted.holdout_rows} reference rows calibrate the thresholds, too few to hold a "
            f"{config.max_false_quarantine:.2%} budget from ranks alone (that needs "
            f"{math.ceil(RANK_ROWS / config.max_false_quarantine)}); the threshold comes from a tail model of "
            "the most extreme of them and holds the budget only approximately: give a larger reference or a "
            "larger budget"
        )
    reasons = {name: f"{fitted.detectors[name].reason}:{name}" for name in names}
    return ReferenceCalibration(names, reasons, {n: holdout_scores[n] for n in names}, groups_hold, alpha, summary)


def apply_calibration(
    calibration: ReferenceCalibration, scores: dict[str, np.ndarray], y_batch: np.ndarray | None
) -> DetectorScores:
    """Conformal p-values and flags for batch rows with ``scores``, against the held-out rows."""
    result = DetectorScores(calibration=dict(calibration.summary))
    groups_batch = _batch_groups(y_batch, calibration.groups_hold)
    for name in calibration.names:  # in the configured order, which the report keeps
        result.scores[name] = scores[name]
        result.p_values[name] = _batch_p_values(
            calibration.holdout_scores[name], calibration.groups_hold, scores[name], groups_batch
        )
        result.flags[name] = result.p_values[name] <= calibration.alpha
        result.evidence[name] = -np.log10(result.p_values[name])
        result.reasons[name] = calibration.reasons[name]
    return result


def _calibration_groups(y_hold: np.ndarray | None, min_rows: int) -> np.ndarray:
    """Per held-out row, the calibration group: its class when that class has enough rows, else ``*``."""
    if y_hold is None:
        return np.full(0, "*", dtype=object)
    classes, counts = np.unique(y_hold, return_counts=True)
    big = set(classes[counts >= min_rows].tolist())
    return np.where(np.isin(y_hold, list(big)), y_hold, "*").astype(object)


def _batch_groups(y_batch: np.ndarray | None, groups_hold: np.ndarray) -> pd.Categorical | None:
    """Per batch row, its calibration group (see :func:`_calibration_groups`) as a categorical.

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


def _holdout_p_values(hold_scores: np.ndarray, hold_groups: np.ndarray) -> np.ndarray:
    """Each held-out row's p-value within its calibration group, judged against the others (see
    :func:`_tail_p_values`); ``*`` (small or unknown classes) compares against all held-out rows."""
    if len(hold_groups) == 0:
        return _tail_p_values(hold_scores, hold_scores, np.arange(len(hold_scores)))
    p_values = np.empty(len(hold_scores))
    codes, groups = pd.factorize(hold_groups)
    for code, group in enumerate(groups):
        in_hold = codes == code
        own = np.flatnonzero(in_hold) if group == "*" else np.arange(int(in_hold.sum()))
        reference_scores = hold_scores if group == "*" else hold_scores[in_hold]
        p_values[in_hold] = _tail_p_values(reference_scores, hold_scores[in_hold], own)
    return p_values


def _batch_p_values(
    hold_scores: np.ndarray, hold_groups: np.ndarray, batch_scores: np.ndarray, batch_groups: pd.Categorical | None
) -> np.ndarray:
    """Batch rows' p-values against the held-out rows of their calibration group, by the same formula."""
    if batch_groups is None or len(hold_groups) == 0:
        return _tail_p_values(hold_scores, batch_scores)
    p_values = np.empty(len(batch_scores))
    codes = batch_groups.codes
    for code, group in enumerate(batch_groups.categories):
        in_batch = codes == code
        reference_scores = hold_scores if group == "*" else hold_scores[hold_groups == group]
        p_values[in_batch] = _tail_p_values(reference_scores, batch_scores[in_batch])
    return p_values


def _tail_p_values(
    reference_scores: np.ndarray, scores: np.ndarray, own_index: np.ndarray | None = None
) -> np.ndarray:
    """Conformal p-values ``(1 + #reference >= s) / (n + 1)``, with an exponential tail past the top rows.

    Ranks alone cannot tell a row just above every held-out score from one far beyond them: both get
    ``1/(n+1)``, and with several detectors such ties decide the threshold. Above the ``(k+1)``-th largest
    held-out score ``u`` the p-value follows the peaks-over-threshold exponential fit
    ``k/(n+1) * exp(-(s - u) / beta)``, ``beta`` the mean excess of the top ``k`` over ``u``. Discrete
    scores (no spread in the top rows) keep the plain rank p-values.

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
    tail = k / (n_rows + 1.0) * np.exp(-(scores[above] - threshold) / beta)
    p_values[above] = np.minimum(p_values[above], tail)
    return p_values


def _union_threshold(min_p_hold: np.ndarray, budget: float, n_detectors: int) -> tuple[float, str]:
    """The p-value threshold for the union of all detectors' flags, and the guarantee it carries.

    With at least ``RANK_ROWS / budget`` held-out rows (1,000 at 1%), ranks alone set it: just below the
    ``(a+1)``-th smallest held-out minimum p-value, ``a`` held-out rows are flagged and the share of new
    clean rows flagged is ``Beta(a+1, n-a)``-distributed, so it exceeds the budget with probability
    ``P(Binomial(n, budget) <= a)``; the largest ``a`` keeping that at most ``CONFIDENCE_MISS`` (10%) gives
    "at most the budget, with 90% confidence".

    With fewer, the budget's quantile lies among the few most extreme held-out rows, and a threshold set
    by one of them moves by orders of magnitude from one reference to the next. The evidence
    ``-log10(min p)`` of the top held-out rows is then fitted with an exponential tail (for uniform
    p-values it is exactly exponential) and the threshold is where the fitted tail holds ``budget``: the
    budget holds approximately, in expectation. Below 25 held-out rows the budget is split evenly across
    detectors on the tail-model p-values (Bonferroni). Both mark the guarantee ``approximate``.
    """
    n_rows = len(min_p_hold)
    if n_rows * budget >= RANK_ROWS:
        values = np.sort(min_p_hold)
        misses = binom.cdf(np.arange(n_rows + 1), n_rows, budget)
        allowed = int(np.flatnonzero(misses <= CONFIDENCE_MISS)[-1])  # exists: misses[0] <= exp(-10)
        return float(np.nextafter(values[allowed], 0.0)), "with 90% confidence"
    evidence = np.sort(-np.log10(np.maximum(min_p_hold, np.finfo("float64").tiny)))
    tail_rows = min(TAIL_ROWS, n_rows // 5)
    if tail_rows >= 5 and tail_rows > budget * (n_rows + 1):
        start = evidence[n_rows - tail_rows - 1]
        beta = float(np.mean(evidence[n_rows - tail_rows:] - start))
        if beta > 0:
            threshold = start + beta * math.log(tail_rows / (budget * (n_rows + 1)))
            return float(10.0 ** -threshold), "approximate"
    return budget / max(n_detectors, 1), "approximate"


def _score_against_batch(
    batch: pd.DataFrame,
    fit_mask: np.ndarray,
    kinds: dict[str, str],
    label_col: str | None,
    config: ScanConfig,
    names: list[str],
) -> DetectorScores:
    result = DetectorScores()
    usable = batch[fit_mask]
    if len(usable) < config.min_class_rows:
        result.calibration = {
            "mode": "batch",
            "warning": f"only {len(usable)} rows passed the schema; too few to fit detectors, none run",
        }
        return result
    encoder = FeatureEncoder(kinds, label_col).fit(usable)
    X_fit, X_batch = encoder.transform(usable), encoder.transform(batch)
    y_fit, y_batch = _labels(usable, label_col), _labels(batch, label_col)
    groups_fit = _calibration_groups(y_fit, config.min_class_rows)
    groups_batch = _batch_groups(y_batch, groups_fit)
    thresholds: dict[str, dict[str, float]] = {}
    detectors = {name: _detector(name, label_col, config) for name in names}
    views = {"features": (X_fit, X_batch)}
    if config.has_embedding and _read_representation(detectors):
        embedding = EmbeddingView(config).fit(usable)
        views["probe"] = (embedding.rows(usable), embedding.rows(batch))
    elif label_col is not None and _read_representation(detectors):
        views["probe"] = tuple(probe_activations(X_fit, y_fit, [X_fit, X_batch], config.seed))
    for name, detector in detectors.items():
        V_fit, V_batch = views.get(detector.representation, views["features"])
        if detector.transductive:
            batch_scores = detector.fit_decision_function(V_batch, y_batch)
            fit_scores = batch_scores[fit_mask]
        else:
            detector.fit(V_fit, y_fit)
            fit_scores = detector.decision_function(V_fit, y_fit)
            batch_scores = detector.decision_function(V_batch, y_batch)
        if detector.natural_threshold is not None:
            keys = {"*", *(str(g) for g in np.unique(groups_fit))}
            limits = dict.fromkeys(keys, float(detector.natural_threshold))
        else:
            limits = _robust_limits(fit_scores, groups_fit, config.robust_z)
        row_limits = _row_limits(limits, groups_batch, len(batch_scores))
        result.scores[name] = batch_scores
        result.flags[name] = batch_scores > row_limits
        result.evidence[name] = batch_scores - row_limits
        result.reasons[name] = f"{detector.reason}:{name}"
        thresholds[name] = limits
    result.calibration = {
        "mode": "batch",
        "rule": _batch_rule(detectors, config.robust_z),
        "fit_rows": int(len(usable)),
        "score_thresholds": thresholds,
        "evidence_axis": "score minus its class's threshold",
        "evidence_threshold": 0.0,
        "note": "no trusted reference: the false-quarantine rate is not calibrated",
    }
    return result


def _batch_rule(detectors: dict[str, Detector], z: float) -> str:
    """The no-reference rule in words: the robust rule, and which detectors use a threshold of their own."""
    own = [f"{name} > {detector.natural_threshold:g}" for name, detector in detectors.items()
           if detector.natural_threshold is not None]
    robust = [name for name, detector in detectors.items() if detector.natural_threshold is None]
    if not robust:
        return "; ".join(own)
    rule = f"score > median + {z} x 1.4826 x MAD, per class"
    return "; ".join([f"{rule} ({', '.join(robust)})", *own]) if own else rule


def _robust_limits(scores: np.ndarray, groups: np.ndarray, z: float) -> dict[str, float]:
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


class SampleFit:
    """Detectors fitted on a uniform sample of a batch, with the no-reference thresholds set on it.

    The second pass of a chunked scan without a reference: each chunk is scored by the sample's models and
    flagged by the sample's per-class rule ``median + robust_z * 1.4826 * MAD`` (the rule a whole-batch
    scan applies to all rows, estimated here from the sample). Detectors that judge rows against each
    other (spectral statistics, clusters, neighbours) are fitted on the sample and score every chunk
    against it; those that score only the rows they were fitted on are refused (:func:`refuse_unchunkable`).
    """

    def __init__(self, sample: pd.DataFrame, kinds: dict[str, str], label_col: str | None, config: ScanConfig,
                 names: list[str]) -> None:
        self.label_col, self.config = label_col, config
        self.encoder = FeatureEncoder(kinds, label_col).fit(sample)
        X_fit, y_fit = self.encoder.transform(sample), _labels(sample, label_col)
        self.groups_fit = _calibration_groups(y_fit, config.min_class_rows)
        self.detectors = {name: _detector(name, label_col, config) for name in names}
        self.representation: Probe | EmbeddingView | None = None
        if config.has_embedding and _read_representation(self.detectors):
            self.representation = EmbeddingView(config).fit(sample)
        elif label_col is not None and _read_representation(self.detectors):
            self.representation = Probe(config.seed).fit(X_fit, y_fit)
        self.limits: dict[str, dict[str, float]] = {}
        fit_views = views_of(self.detectors, sample, X_fit, self.representation)
        for name, detector in self.detectors.items():
            V_fit = fit_views[name]
            fit_scores = detector.fit(V_fit, y_fit).decision_function(V_fit, y_fit)
            if detector.natural_threshold is not None:
                keys = {"*", *(str(g) for g in np.unique(self.groups_fit))}
                self.limits[name] = dict.fromkeys(keys, float(detector.natural_threshold))
            else:
                self.limits[name] = _robust_limits(fit_scores, self.groups_fit, config.robust_z)
        self.summary = {
            "mode": "batch",
            "rule": _batch_rule(self.detectors, config.robust_z) + ", set on a sample of the batch",
            "fit_rows": int(len(sample)),
            "score_thresholds": self.limits,
            "evidence_axis": "score minus its class's threshold",
            "evidence_threshold": 0.0,
            "note": "no trusted reference: the false-quarantine rate is not calibrated",
        }


def fit_on_sample(sample: pd.DataFrame, kinds: dict[str, str], label_col: str | None,
                  config: ScanConfig) -> tuple[SampleFit | None, dict[str, str]]:
    """Fit the configured detectors on ``sample``; ``None`` when it has too few rows to fit on.

    Raises :class:`ConfigError` for what a chunked scan cannot do (:func:`refuse_unchunkable`).
    """
    names, skipped = _runnable(config, label_col, has_reference=False)
    refuse_unchunkable(names, config)
    if not names or len(sample) < config.min_class_rows:
        return None, skipped
    return SampleFit(sample, kinds, label_col, config, names), skipped


def flag_chunk(fitted: SampleFit, chunk: pd.DataFrame) -> DetectorScores:
    """Scores and flags of the rows of ``chunk`` by the sample's detectors and thresholds."""
    X, y = fitted.encoder.transform(chunk), _labels(chunk, fitted.label_col)
    groups = _batch_groups(y, fitted.groups_fit)
    result = DetectorScores(calibration=dict(fitted.summary))
    views = views_of(fitted.detectors, chunk, X, fitted.representation)
    for name, detector in fitted.detectors.items():
        scores = detector.decision_function(views[name], y)
        limits = fitted.limits[name]
        row_limits = _row_limits(limits, groups, len(scores))
        result.scores[name] = scores
        result.flags[name] = scores > row_limits
        result.evidence[name] = scores - row_limits
        result.reasons[name] = f"{detector.reason}:{name}"
    return result


def refuse_unchunkable(names: list[str], config: ScanConfig) -> None:
    """Raise :class:`ConfigError` for what a chunked scan cannot do with these detectors and settings."""
    unable = [n for n in names if not detector_class(n).scores_new_rows]
    if unable:
        raise ConfigError(
            f"detector(s) {', '.join(unable)} score only the rows they were fitted on and cannot run with "
            "--chunk-rows; leave them out of --detectors or scan without --chunk-rows"
        )


def _row_limits(limits: dict[str, float], groups: pd.Categorical | None, n_rows: int) -> np.ndarray:
    """Each row's threshold: its calibration group's, or the all-rows one (``*``)."""
    if groups is None:
        return np.full(n_rows, limits["*"])
    per_group = np.array([limits.get(str(group), limits["*"]) for group in groups.categories], dtype="float64")
    return per_group[groups.codes]

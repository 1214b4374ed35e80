"""Detectors fitted on a trusted reference and calibrated on its held-out rows.

The reference is split into a fit part and a held-out calibration part, or, when the held-out part would
be too small to set the budget's threshold, cross-fitted so that every reference row calibrates
(:mod:`poisonguard.score.crossfit`). Each batch row gets a conformal p-value per detector against the
calibration scores of its own class (all calibration rows when its class is too small). One p-value
threshold is chosen so that, on the calibration rows, the union of all detectors' flags stays within
``max_false_quarantine``: the budget holds for the combined decision, not for each detector alone (see
:mod:`poisonguard.decide.calibration`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.decide.calibration import (
    WEIGHT_FOLDS,
    batch_groups,
    batch_p_values,
    calibration_groups,
    cell_excess,
    class_weights,
    confident_rows,
    effective_rows,
    group_categories,
    group_codes,
    group_holdout_rows,
    holdout_group_codes,
    holdout_p_values,
    holdout_row_weights,
    rules_seen_in_batch,
    union_threshold_with_rules,
    weight_folds,
    weighted_min_p,
)
from poisonguard.errors import ConfigError
from poisonguard.featurize.features import FeatureEncoder, row_texts, text_columns
from poisonguard.featurize.representations import EmbeddingView, Probe, probe_activations
from poisonguard.report.figures import CONFORMAL_AXIS
from poisonguard.score.crossfit import calibration_folds, cross_fit, fold_positions, fold_scores, holdout_folds
from poisonguard.score.details import add_row_details
from poisonguard.score.detector_set import (
    cannot_fit,
    configured_detector,
    has_enough_reference,
    labels_of,
    reads,
    runnable_detectors,
    stack_rows,
    views_of,
)
from poisonguard.score.types import DetectorScores


class FittedReference:
    """Detectors fitted on a trusted reference, with what calibrating their batch scores needs.

    Made by :func:`fit_reference`; :func:`score_chunk` scores any slice of the batch with it (in any
    process: it pickles), and :func:`finish_scores` turns the chunks' scores into calibrated flags.
    """

    def __init__(self, reference: pd.DataFrame, labels: np.ndarray | None, kinds: dict[str, str],
                 label_col: str | None, config: ScanConfig, names: list[str],
                 batch_sample: pd.DataFrame | None = None) -> None:
        """``labels``: the reference's labels as :func:`labels_of` reads them (``None`` without a label column)."""
        self.label_col, self.config, self.names = label_col, config, names
        self.reference_rows = len(reference)
        rows, self.folds = fold_positions(calibration_folds(len(reference), labels, config.calibration, config.seed,
                                                               config.detector_budget))
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
        self.detectors = {name: configured_detector(name, label_col, config) for name in names}
        # What the backdoor checks read, when one runs: the batch's own embedding, standardised like the
        # encoded columns (fitted on the rows only fitted on), or, set when needed, a probe's activations.
        self.representation: Probe | EmbeddingView | None = None
        self.embedding_parts: tuple[np.ndarray, np.ndarray] | None = None
        if config.io.has_embedding and reads(self.detectors, "probe"):
            self.representation = EmbeddingView(config.io).fit(used.iloc[:fit_only] if fit_only else used)
            self.embedding_parts = (self.representation.rows(used.iloc[:fit_only]),
                                    self.representation.rows(used.iloc[fit_only:]))
        # What the text checks read, when one runs: the free-text columns joined, per row.
        self.texts = text_columns(kinds, label_col)
        self.text_parts: tuple[np.ndarray, np.ndarray] | None = None
        if reads(self.detectors, "text"):
            joined = row_texts(used, self.texts)
            self.text_parts = (joined[:fit_only], joined[fit_only:])
        self.holdout_scores: dict[str, np.ndarray] = {}
        self.skipped: dict[str, str] = {}  # detectors the reference's rows cannot fit, with the reason
        # What the label models read when the batch has free text (its words as TF-IDF), kept only for those
        # that need every batch row at once.
        self.words_parts: tuple | None = None
        if batch_sample is not None:
            self._fit_on_sample(batch_sample, used, X_used, y_used)
            return
        # Detectors fitted on the reference alone and reading what each row holds score batch rows chunk
        # by chunk, so the encoded batch never exists whole; the others need every batch row at once.
        streaming = {name: d for name, d in self.detectors.items()
                     if not d.spec.transductive and d.spec.reads_rows_alone}
        used_views = views_of(streaming, used, X_used, self.encoder, None, self.texts)
        self.streamed = {}
        for name, detector in streaming.items():
            try:
                self.streamed[name], self.holdout_scores[name] = cross_fit(detector, used_views[name], y_used,
                                                                           self.folds)
            except ValueError as error:
                self.skipped[name] = cannot_fit(name, error)
        self._forget_skipped()
        whole = {name: d for name, d in self.detectors.items() if name not in self.streamed}
        if not whole:
            # Every detector is fitted and has scored the held-out rows: the encoded reference (32 MB at
            # 200k rows x 20 columns) would only sit in memory while the batch is scored.
            self.X_fit = self.X_hold = self.embedding_parts = self.text_parts = None
        elif reads(whole, "words"):
            self.words_parts = (self.encoder.words(used.iloc[:fit_only], self.X_fit),
                                self.encoder.words(used.iloc[fit_only:], self.X_hold))

    def _fit_on_sample(self, batch_sample: pd.DataFrame, used: pd.DataFrame, X_used: np.ndarray,
                       y_used: np.ndarray | None) -> None:
        """A chunked scan: every detector scores rows chunk by chunk. Those that judge the batch's rows
        against each other (transductive) are fitted on a uniform sample of the batch, and score the
        held-out rows and every chunk alike, as rows they were not fitted on: conformal calibration needs
        held-out and batch rows scored the same way."""
        X_sample, y_sample = self.encoder.transform(batch_sample), labels_of(batch_sample, self.label_col)
        if self.representation is None and self.label_col is not None and reads(self.detectors, "probe"):
            self.representation = Probe(self.config.seed).fit(
                np.vstack([X_used, X_sample]), np.concatenate([y_used, y_sample])
            )
        used_views = views_of(self.detectors, used, X_used, self.encoder, self.representation, self.texts)
        sample_views = views_of(self.detectors, batch_sample, X_sample, self.encoder, self.representation,
                                self.texts)
        self.streamed = {}
        for name, detector in self.detectors.items():
            V_used = used_views[name]
            try:
                if detector.spec.transductive:
                    detector.fit(sample_views[name], y_sample)
                    self.streamed[name] = detector
                    self.holdout_scores[name] = detector.decision_function(V_used[len(self.X_fit):], self.y_hold)
                else:
                    self.streamed[name], self.holdout_scores[name] = cross_fit(detector, V_used, y_used, self.folds)
            except ValueError as error:
                self.skipped[name] = cannot_fit(name, error)
        self._forget_skipped()
        # Every detector now scores rows chunk by chunk.
        self.X_fit = self.X_hold = self.embedding_parts = self.text_parts = None


    def _forget_skipped(self) -> None:
        self.names = [name for name in self.names if name not in self.skipped]
        self.detectors = {name: d for name, d in self.detectors.items() if name not in self.skipped}


def fit_reference(
    reference: pd.DataFrame, kinds: dict[str, str], label_col: str | None, config: ScanConfig,
    batch_sample: pd.DataFrame | None = None,
) -> tuple[FittedReference | None, dict[str, str]]:
    """Fit the configured detectors on ``reference``; ``None`` when it is too small to calibrate with.

    With ``batch_sample`` (a chunked scan), every detector is made to score rows chunk by chunk: see
    :meth:`FittedReference._fit_on_sample`. Also returns the detectors that cannot run, with the reason.
    """
    has_reference = has_enough_reference(reference, config)
    labels = labels_of(reference, label_col) if has_reference else None
    smallest = None  # the reference's rows in its smallest class; without labels, one class of all rows
    if has_reference:
        # Counted by hashing: sorting the label objects (np.unique) cost 0.5 s on a million rows.
        smallest = len(reference) if labels is None else int(np.bincount(pd.factorize(labels)[0]).min())
    names, skipped = runnable_detectors(config, label_col, has_reference, kinds, smallest)
    if not has_reference or not names:
        return None, skipped
    fitted = FittedReference(reference, labels, kinds, label_col, config, names, batch_sample)
    skipped = skipped | fitted.skipped
    return (fitted if fitted.names else None), skipped


def score_chunk(fitted: FittedReference, chunk: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of the rows of ``chunk`` by every detector that scores rows one by one (see ``streamed``):
    per detector, one row of scores per fold model (:func:`fold_scores`).

    A row's score depends on that row alone, so scoring a batch in chunks equals scoring it whole.
    """
    X, y = fitted.encoder.transform(chunk), labels_of(chunk, fitted.label_col)
    views = views_of(fitted.streamed, chunk, X, fitted.encoder, fitted.representation, fitted.texts)
    return {name: fold_scores(detector, views[name], y) for name, detector in fitted.streamed.items()}


def join_chunk_scores(parts: list[np.ndarray]) -> np.ndarray:
    """One detector's scores of consecutive chunks joined along the rows (each part: rows, or folds x rows)."""
    if not parts:
        return np.empty(0)
    return np.concatenate(parts, axis=-1)


def score_in_chunks(fitted: FittedReference, batch: pd.DataFrame) -> list[dict[str, np.ndarray]]:
    """:func:`score_chunk` over consecutive slices of ``config.execution.score_chunk_rows`` rows, in this process."""
    step = fitted.config.execution.score_chunk_rows
    return [score_chunk(fitted, batch.iloc[start : start + step]) for start in range(0, len(batch), step)]


def finish_scores(fitted: FittedReference, batch: pd.DataFrame, chunk_scores: list[dict[str, np.ndarray]],
                  skipped: dict[str, str] | None = None, passed: np.ndarray | None = None) -> DetectorScores:
    """Calibrated flags for every batch row, from the scores of its consecutive chunks, in batch order.

    Detectors that must see the whole batch (transductive ones, and those reading the probe's
    activations) run here. The detectors' shares of the budget are weighted by what they see in the rows
    that ``passed`` the schema (all rows by default), as a chunked scan weights them by its sample of those.
    """
    result = DetectorScores()
    for name in fitted.streamed:
        result.scores[name] = join_chunk_scores([part[name] for part in chunk_scores])
        if result.scores[name].shape[-1] != len(batch):
            raise ValueError(f"chunk scores cover {result.scores[name].shape[-1]} rows, the batch has {len(batch)}")
    holdout_scores = dict(fitted.holdout_scores)
    whole = {n: d for n, d in fitted.detectors.items() if n not in fitted.streamed}
    label_col, config = fitted.label_col, fitted.config
    X_fit, X_hold, y_fit, y_hold = fitted.X_fit, fitted.X_hold, fitted.y_fit, fitted.y_hold
    y_batch = labels_of(batch, label_col)
    if whole:
        X_batch = fitted.encoder.transform(batch)
        views = {"features": (X_fit, X_hold, X_batch)}
        if config.io.has_embedding and reads(whole, "probe"):
            views["probe"] = (*fitted.embedding_parts, fitted.representation.rows(batch))
        elif label_col is not None and reads(whole, "probe"):
            views["probe"] = tuple(
                probe_activations(
                    np.vstack([X_fit, X_hold, X_batch]),
                    np.concatenate([y_fit, y_hold, y_batch]),
                    [X_fit, X_hold, X_batch],
                    config.seed,
                )
            )
        if reads(whole, "text"):
            views["text"] = (*fitted.text_parts, row_texts(batch, fitted.texts))
        if reads(whole, "words"):
            views["words"] = (*fitted.words_parts, fitted.encoder.words(batch, X_batch))
        if reads(whole, "values"):
            views["values"] = tuple(fitted.encoder.without_text(V) for V in views["features"])
        for name, detector in whole.items():
            V_fit, V_hold, V_batch = views.get(detector.spec.reads, views["features"])
            try:
                if detector.spec.transductive:
                    # Fitted on the batch and the held-out trusted rows together, so clean batch rows and
                    # held-out rows are treated alike and the held-out scores calibrate the batch's.
                    pooled = detector.fit_decision_function(
                        stack_rows([V_hold, V_batch]),
                        np.concatenate([y_hold, y_batch]) if label_col is not None else None,
                    )
                    held = V_hold.shape[0]
                    holdout_scores[name], result.scores[name] = pooled[:held], pooled[held:]
                else:
                    V_used = stack_rows([V_fit, V_hold])
                    y_used = None if label_col is None else np.concatenate([y_fit, y_hold])
                    scorer, holdout_scores[name] = cross_fit(detector, V_used, y_used, fitted.folds)
                    result.scores[name] = fold_scores(scorer, V_batch, y_batch)
            except ValueError as error:
                skipped = {**(skipped or {}), name: cannot_fit(name, error)}
    if not holdout_scores:
        return DetectorScores(calibration={"mode": "reference", "skipped_detectors": skipped or {}})
    passed = np.ones(len(batch), dtype=bool) if passed is None else np.asarray(passed, dtype=bool)
    ids = row_ids_of(batch)
    calibration = calibrate_holdout(fitted, holdout_scores, {name: np.asarray(scores)[..., passed]
                                                             for name, scores in result.scores.items()},
                                    None if y_batch is None else y_batch[passed], ids[passed])
    calibration.summary["skipped_detectors"] = skipped or {}
    return explained(fitted, apply_calibration(calibration, result.scores, y_batch, ids), batch)


def explained(fitted: FittedReference, result: DetectorScores, rows: pd.DataFrame) -> DetectorScores:
    """``result`` (of ``rows``) with what the detectors that score rows one by one say of the rows they flagged."""
    add_row_details(result, fitted.streamed, rows, fitted.encoder, fitted.label_col)
    return result


class ReferenceCalibration:
    """The held-out rows' scores per detector and the one p-value threshold set from them.

    Made once per scan by :func:`calibrate_holdout`; :func:`apply_calibration` then flags any set of batch
    rows (the whole batch, or one chunk at a time) by the same rule.
    """

    def __init__(self, names: list[str], reasons: dict[str, str], holdout_scores: dict[str, np.ndarray],
                 groups_hold: np.ndarray, folds_hold: np.ndarray, alpha: float, weights: dict[str, np.ndarray],
                 summary: dict[str, Any], folds: int = 1, rule_folds: dict[str, np.ndarray] | None = None,
                 seed: int = 0) -> None:
        """``weights``: per detector, one weight per weight fold and calibration group (fold-major, see
        :func:`row_codes`); ``folds``: how many weight folds (1: the batch did not weight the budget);
        ``rule_folds``: per detector with an own threshold, in which folds it flags by it; ``seed``: the
        scan's, which deals rows into weight folds (:func:`weight_folds`)."""
        self.names, self.reasons, self.holdout_scores = names, reasons, holdout_scores
        self.groups_hold, self.folds_hold, self.alpha, self.summary = groups_hold, folds_hold, alpha, summary
        self.weights, self.folds, self.seed = weights, folds, seed
        self.n_groups = len(group_categories(groups_hold))  # weights hold folds x n_groups values each
        self.rule_folds = rule_folds or {name: np.ones(folds, bool) for name in self.rules}

    @property
    def rules(self) -> dict[str, float]:
        """Detectors whose own threshold also flags (score above it), beside the p-value threshold."""
        return self.summary.get("own_thresholds") or {}


def row_ids_of(rows: pd.DataFrame) -> np.ndarray:
    """The rows' ids (the scan's ``ROW_ID`` column; their positions for a frame without one)."""
    return rows[ROW_ID].to_numpy() if ROW_ID in rows else np.arange(len(rows))


def calibrate_holdout(fitted: FittedReference, holdout_scores: dict[str, np.ndarray],
                      batch_scores: dict[str, np.ndarray] | None = None,
                      y_batch: np.ndarray | None = None, batch_ids: np.ndarray | None = None) -> ReferenceCalibration:
    """Set the p-value threshold for the union of all detectors from the held-out rows' scores.

    ``batch_scores`` (of the batch, or of a uniform sample of it; ``y_batch`` their labels, ``batch_ids``
    their row ids) weight each detector's share of the budget by what it sees in the batch
    (:func:`class_weights`), fold by fold: the rows of each weight fold (:func:`weight_folds`) get weights,
    a threshold and own-threshold rules read from the other folds' rows alone, so that no row's threshold
    depends on its own scores. Without them the detectors share the budget evenly."""
    config, y_hold = fitted.config, fitted.y_hold
    names = [name for name in fitted.names if name in holdout_scores]
    # A class is calibrated on its own held-out rows only when it has enough of them to reach the budget:
    # with d detectors, a row more extreme than all n held-out rows of its class in one detector has
    # p = 1/(n+1), and up to d/(n+1) of clean rows are that extreme in some detector. Smaller classes
    # are calibrated against all held-out rows together.
    smallest_group = max(config.detection.min_class_rows, math.ceil(len(names) / config.detector_budget))
    groups_hold = calibration_groups(y_hold, smallest_group)
    holdout_p = {name: holdout_p_values(holdout_scores[name], groups_hold) for name in names}
    categories = group_categories(groups_hold)
    hold_codes = holdout_group_codes(groups_hold, fitted.holdout_rows)
    folds_hold = holdout_folds(fitted.folds)
    thresholds = {name: fitted.detectors[name].spec.natural_threshold for name in names}
    rule_hold = {name: holdout_scores[name] > t for name, t in thresholds.items() if t is not None}
    n_groups, budget = len(categories), config.detector_budget

    def fold_budget(part: np.ndarray | None) -> dict[str, Any]:
        """Weights, threshold and rules from the batch rows ``part`` selects (``None``: none, an even split)."""
        weights = {name: np.ones(n_groups) for name in names}
        share, row_weights, rules = np.full(n_groups, 1.0 / n_groups), None, rule_hold
        if part is not None:
            weights, share, row_weights = _budget_by_class({name: p[part] for name, p in batch_p.items()},
                                                           codes[part], hold_codes, n_groups, budget)
            seen = {name: flags[part] for name, flags in rule_batch.items()}
            rules = {name: rule_hold[name] for name in rules_seen_in_batch(rule_hold, seen)}
        hold_weights = {name: weights[name][hold_codes] for name in names}  # each held-out row's class's
        alpha, guarantee, ruled = union_threshold_with_rules(weighted_min_p(holdout_p, hold_weights), rules,
                                                             budget, len(names), row_weights)
        flagged = {name: (p <= alpha * hold_weights[name]) | (rules[name] if name in ruled else False)
                   for name, p in holdout_p.items()}
        return {"weights": weights, "share": share, "row_weights": row_weights, "alpha": alpha,
                "guarantee": guarantee, "ruled": ruled, "flagged": flagged}

    if batch_scores is None:
        parts = [fold_budget(None)]
    else:
        # Per batch row, computed once: each fold's budget reads the other folds' rows of these.
        groups_batch = batch_groups(y_batch, groups_hold)
        batch_p = {name: batch_p_values(holdout_scores[name], groups_hold, np.asarray(batch_scores[name]),
                                        groups_batch, folds_hold) for name in names}
        n_batch = len(next(iter(batch_p.values()))) if names else 0
        codes = group_codes(groups_batch, n_batch)
        rule_batch = {name: row_scores(batch_scores[name]) > thresholds[name] for name in rule_hold}
        folds = weight_folds(np.arange(n_batch) if batch_ids is None else batch_ids, config.seed)
        parts = [fold_budget(folds != fold) for fold in range(WEIGHT_FOLDS)]
    # One threshold for the report and the evidence axis, each fold's own folded into its weights:
    # alpha * (w_f alpha_f / alpha) = alpha_f w_f.
    alphas = np.array([part["alpha"] for part in parts])
    alpha = float(np.exp(np.mean(np.log(alphas)))) if np.all(alphas > 0) else float(alphas.min())
    scale = alphas / alpha if alpha > 0 else np.ones(len(parts))
    weights = {name: np.concatenate([part["weights"][name] * f for part, f in zip(parts, scale)]) for name in names}
    rule_folds = {name: np.array([name in part["ruled"] for part in parts])
                  for name in names if any(name in part["ruled"] for part in parts)}
    combined_hold = np.mean([np.logical_or.reduce(list(part["flagged"].values())) for part in parts], axis=0)
    # what a batch row's weight is on average: its fold's weight of its class, over the batch's classes
    mean_weight = {name: float(np.mean([np.dot(part["share"], part["weights"][name]) * f
                                        for part, f in zip(parts, scale)])) for name in names}
    summary = {
        "mode": "reference",
        "reference_rows": int(fitted.reference_rows),
        "fit_rows": fitted.fit_rows,
        "holdout_rows": fitted.holdout_rows,
        # 1: fitted on one part of the reference, calibrated on the other; k: cross-fitted, every row calibrates
        "folds": len(fitted.folds),
        "max_false_quarantine": config.calibration.max_false_quarantine,
        # the part of it the detectors spend; inferred schema ranges and value sets have the rest
        "detector_budget": config.detector_budget,
        "schema_budget": config.schema_budget,
        "p_value_threshold": alpha,
        # each detector flags at p <= p_value_threshold * its weight: its share of the budget, from the batch;
        # the weight of its row's class and weight fold (row_weights), whose mean over the batch's rows this is
        "detector_weights": mean_weight,
        "holdout_quarantine_rate": float(combined_hold.mean()),
        "per_detector_holdout_rate": {name: float(np.mean([part["flagged"][name].mean() for part in parts]))
                                      for name in names},
        # detectors that also flag by their own threshold, which the held-out rows showed affordable (in
        # at least one weight fold: rows of the others are flagged by p-values alone)
        "own_thresholds": {name: thresholds[name] for name in rule_folds},
        "evidence_axis": CONFORMAL_AXIS,
        "evidence_threshold": float(-np.log10(alpha)) if alpha > 0 else None,
    }
    if n_groups > 1:
        # what the report shows: each class's weight, averaged over the weight folds
        summary["class_weights"] = {"classes": [str(group) for group in categories],
                                    "weights": {name: [float(w) for w in weights[name].reshape(-1, n_groups).mean(0)]
                                                for name in names}}
    if len(parts) > 1:
        # what each row's threshold reads: per detector, one weight per (fold, class), indexed by the rows'
        # codes (DetectorScores.groups, see row_codes)
        summary["row_weights"] = {"folds": len(parts), "classes": n_groups,
                                  "weights": {name: [float(w) for w in weights[name]] for name in names}}
    effective = [effective_rows(part["row_weights"]) for part in parts if part["row_weights"] is not None]
    if effective:
        # held-out rows reweighted to the batch's class shares count as this many (see union_threshold)
        summary["holdout_effective_rows"] = min(effective)
    guarantees = [part["guarantee"] for part in parts]
    summary["guarantee"] = min(guarantees, key=GUARANTEES.index)  # the weakest fold's
    warning = guarantee_warning(summary["guarantee"], fitted.holdout_rows, config.detector_budget)
    if warning is not None:
        summary["warning"] = warning
    reasons = {name: f"{fitted.detectors[name].spec.reason}:{name}" for name in names}
    return ReferenceCalibration(names, reasons, {n: holdout_scores[n] for n in names}, groups_hold, folds_hold,
                                alpha, weights, summary, len(parts), rule_folds, config.seed)


# The guarantees union_threshold gives, weakest last.
GUARANTEES = ("with 90% confidence", "in expectation", "estimate")


def _budget_by_class(batch_p: dict[str, np.ndarray], codes: np.ndarray, hold_codes: np.ndarray, n_groups: int,
                     budget: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """What batch rows (their p-values per detector, ``batch_p``, and calibration groups, ``codes``) say of the
    budget's split: per detector a weight per calibration group (:func:`class_weights`), the groups' shares of
    the rows, and the held-out rows' weights that make them stand for the clean rows (:func:`holdout_row_weights`)."""
    share = np.bincount(codes, minlength=n_groups) / len(codes) if len(codes) else np.full(n_groups, 1.0 / n_groups)
    excess = cell_excess(batch_p, codes, group_holdout_rows(hold_codes, n_groups), budget)
    # Held-out rows stand for the batch's clean rows in their class shares: a class with more weight than the
    # others would otherwise spend more than its part wherever the batch holds more of it than the reference.
    row_weights = holdout_row_weights(codes, hold_codes, n_groups, np.max(np.vstack(list(excess.values())), axis=0))
    return class_weights(excess, share), share, row_weights


def row_scores(scores: np.ndarray) -> np.ndarray:
    """One score per row, from one score per row or one row of scores per fold model (their mean)."""
    scores = np.asarray(scores)
    return scores if scores.ndim == 1 else scores.mean(axis=0)


def row_codes(calibration: ReferenceCalibration, groups_batch: pd.Categorical | None,
              row_ids: np.ndarray) -> np.ndarray:
    """Each row's index into its detectors' weights: ``fold * groups + group``, with its weight fold
    (:func:`weight_folds`) when the batch weighted the budget, else its calibration group alone."""
    codes = group_codes(groups_batch, len(row_ids)).astype("int64")
    if calibration.folds > 1:
        codes += weight_folds(row_ids, calibration.seed).astype("int64") * calibration.n_groups
    return codes


def apply_calibration(
    calibration: ReferenceCalibration, scores: dict[str, np.ndarray], y_batch: np.ndarray | None,
    row_ids: np.ndarray | None = None,
) -> DetectorScores:
    """Conformal p-values and flags for batch rows with ``scores`` (per detector, one score per row or one
    row of scores per fold model), against the held-out rows. ``row_ids`` (their positions by default) place
    each row in its weight fold, as :func:`calibrate_holdout` placed the rows it read."""
    result = DetectorScores(calibration=dict(calibration.summary))
    groups_batch = batch_groups(y_batch, calibration.groups_hold)
    n_rows = np.asarray(scores[calibration.names[0]]).shape[-1] if calibration.names else 0
    codes = row_codes(calibration, groups_batch, np.arange(n_rows) if row_ids is None else row_ids)
    folds = codes // calibration.n_groups
    for name in calibration.names:  # in the configured order, which the report keeps
        per_fold = np.asarray(scores[name])
        result.scores[name] = row_scores(per_fold)
        weight = calibration.weights[name][codes]  # of each row's fold and class
        result.p_values[name] = batch_p_values(
            calibration.holdout_scores[name], calibration.groups_hold, per_fold, groups_batch, calibration.folds_hold
        )
        result.flags[name] = result.p_values[name] <= calibration.alpha * weight
        if name in calibration.rules:
            result.flags[name] |= (result.scores[name] > calibration.rules[name]) & calibration.rule_folds[name][folds]
        # -log10(p / weight): one axis for every detector, flagged above -log10(alpha)
        result.evidence[name] = -np.log10(result.p_values[name] / weight)
        result.reasons[name] = calibration.reasons[name]
    if "class_weights" in calibration.summary or "row_weights" in calibration.summary:
        result.groups = codes
    return result


def guarantee_warning(guarantee: str, holdout_rows: int, budget: float) -> str | None:
    """What a reviewer should know about a guarantee weaker than "with 90% confidence"; ``None`` for that one."""
    needed = confident_rows(budget)
    if guarantee == "in expectation":
        return (
            f"{holdout_rows:,} reference rows calibrate the thresholds: the detectors' {budget:.2%} share of clean "
            f"rows holds on average over references, not for this one with 90% confidence (that needs "
            f"{needed:,}); give a larger reference for that promise"
        )
    if guarantee == "estimate":
        return (
            f"{holdout_rows:,} reference rows calibrate the thresholds, too few to promise the detectors' "
            f"{budget:.2%} share of clean rows at all (that needs {math.ceil(1 / budget - 1):,}, and "
            f"{needed:,} for 90% confidence); the threshold is an estimate from a tail model of the most "
            "extreme of them: give a larger reference or a larger budget"
        )
    return None


def refuse_weak_guarantee(reference: pd.DataFrame | None, config: ScanConfig) -> None:
    """With ``strict``, raise :class:`ConfigError` unless the reference can hold the budget with 90% confidence."""
    if not config.calibration.strict:
        return
    needed = confident_rows(config.detector_budget)
    used = 0 if reference is None else min(len(reference), config.calibration.max_reference_rows)
    if used < needed:
        have = "no reference" if reference is None else f"a reference of {used:,} rows"
        raise ConfigError(
            f"--strict: holding the detectors' {config.detector_budget:.2%} share of clean rows with 90% confidence "
            f"needs a reference of at least {needed:,} rows, and the scan has {have}; give a larger reference, a "
            "larger --max-false-quarantine, or scan without --strict (the report then says which weaker promise holds)"
        )

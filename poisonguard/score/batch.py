"""The no-reference rule: detectors fitted on the batch itself (or a uniform sample of it), each flagging
rows whose score exceeds ``median + robust_z * 1.4826 * MAD`` of its class's scores (all rows when the
class is small), or its own natural threshold. No clean data means no calibrated false-quarantine rate;
the report says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.config import ScanConfig
from poisonguard.decide.calibration import batch_groups, calibration_groups, robust_limits, row_limits
from poisonguard.detectors import Detector, detector_spec
from poisonguard.errors import ConfigError
from poisonguard.featurize.features import FeatureEncoder, row_texts, text_columns
from poisonguard.featurize.representations import EmbeddingView, Probe, probe_activations
from poisonguard.score.detector_set import (
    cannot_fit,
    configured_detector,
    labels_of,
    reads_probe,
    reads_text,
    runnable_detectors,
    views_of,
)
from poisonguard.score.types import DetectorScores


def score_against_batch(
    batch: pd.DataFrame,
    fit_mask: np.ndarray,
    kinds: dict[str, str],
    label_col: str | None,
    config: ScanConfig,
    names: list[str],
) -> DetectorScores:
    result = DetectorScores()
    usable = batch[fit_mask]
    if len(usable) < config.detection.min_class_rows:
        result.calibration = {
            "mode": "batch",
            "warning": f"only {len(usable)} rows passed the schema; too few to fit detectors, none run",
        }
        return result
    encoder = FeatureEncoder(kinds, label_col).fit(usable)
    X_fit, X_batch = encoder.transform(usable), encoder.transform(batch)
    y_fit, y_batch = labels_of(usable, label_col), labels_of(batch, label_col)
    groups_fit = calibration_groups(y_fit, config.detection.min_class_rows)
    groups_batch = batch_groups(y_batch, groups_fit)
    thresholds: dict[str, dict[str, float]] = {}
    detectors = {name: configured_detector(name, label_col, config) for name in names}
    views = {"features": (X_fit, X_batch)}
    if reads_text(detectors):
        texts = text_columns(kinds, label_col)
        views["text"] = (row_texts(usable, texts), row_texts(batch, texts))
    if config.io.has_embedding and reads_probe(detectors):
        embedding = EmbeddingView(config.io).fit(usable)
        views["probe"] = (embedding.rows(usable), embedding.rows(batch))
    elif label_col is not None and reads_probe(detectors):
        views["probe"] = tuple(probe_activations(X_fit, y_fit, [X_fit, X_batch], config.seed))
    unusable: dict[str, str] = {}
    for name, detector in detectors.items():
        V_fit, V_batch = views.get(detector.spec.reads, views["features"])
        try:
            if detector.spec.transductive:
                batch_scores = detector.fit_decision_function(V_batch, y_batch)
                fit_scores = batch_scores[fit_mask]
            else:
                detector.fit(V_fit, y_fit)
                fit_scores = detector.decision_function(V_fit, y_fit)
                batch_scores = detector.decision_function(V_batch, y_batch)
        except ValueError as error:
            unusable[name] = cannot_fit(name, error)
            continue
        if detector.spec.natural_threshold is not None:
            keys = {"*", *(str(g) for g in np.unique(groups_fit))}
            limits = dict.fromkeys(keys, float(detector.spec.natural_threshold))
        else:
            limits = robust_limits(fit_scores, groups_fit, config.calibration.robust_z)
        limit = row_limits(limits, groups_batch, len(batch_scores))
        result.scores[name] = batch_scores
        result.flags[name] = batch_scores > limit
        result.evidence[name] = batch_scores - limit
        result.reasons[name] = f"{detector.spec.reason}:{name}"
        thresholds[name] = limits
    detectors = {name: d for name, d in detectors.items() if name not in unusable}
    result.calibration = {
        "mode": "batch",
        "skipped_detectors": unusable,
        "rule": _batch_rule(detectors, config.calibration.robust_z),
        "fit_rows": int(len(usable)),
        "score_thresholds": thresholds,
        "evidence_axis": "score minus its class's threshold",
        "evidence_threshold": 0.0,
        "note": "no trusted reference: the false-quarantine rate is not calibrated",
    }
    return result


def _batch_rule(detectors: dict[str, Detector], z: float) -> str:
    """The no-reference rule in words: the robust rule, and which detectors use a threshold of their own."""
    own = [f"{name} > {detector.spec.natural_threshold:g}" for name, detector in detectors.items()
           if detector.spec.natural_threshold is not None]
    robust = [name for name, detector in detectors.items() if detector.spec.natural_threshold is None]
    if not robust:
        return "; ".join(own)
    rule = f"score > median + {z} x 1.4826 x MAD, per class"
    return "; ".join([f"{rule} ({', '.join(robust)})", *own]) if own else rule


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
        X_fit, y_fit = self.encoder.transform(sample), labels_of(sample, label_col)
        self.groups_fit = calibration_groups(y_fit, config.detection.min_class_rows)
        self.detectors = {name: configured_detector(name, label_col, config) for name in names}
        self.representation: Probe | EmbeddingView | None = None
        if config.io.has_embedding and reads_probe(self.detectors):
            self.representation = EmbeddingView(config.io).fit(sample)
        elif label_col is not None and reads_probe(self.detectors):
            self.representation = Probe(config.seed).fit(X_fit, y_fit)
        self.limits: dict[str, dict[str, float]] = {}
        self.skipped: dict[str, str] = {}  # detectors the sample's rows cannot fit, with the reason
        self.texts = text_columns(kinds, label_col)
        fit_views = views_of(self.detectors, sample, X_fit, self.representation, self.texts)
        for name, detector in self.detectors.items():
            V_fit = fit_views[name]
            try:
                fit_scores = detector.fit(V_fit, y_fit).decision_function(V_fit, y_fit)
            except ValueError as error:
                self.skipped[name] = cannot_fit(name, error)
                continue
            if detector.spec.natural_threshold is not None:
                keys = {"*", *(str(g) for g in np.unique(self.groups_fit))}
                self.limits[name] = dict.fromkeys(keys, float(detector.spec.natural_threshold))
            else:
                self.limits[name] = robust_limits(fit_scores, self.groups_fit, config.calibration.robust_z)
        self.detectors = {name: d for name, d in self.detectors.items() if name not in self.skipped}
        self.summary = {
            "mode": "batch",
            "rule": _batch_rule(self.detectors, config.calibration.robust_z) + ", set on a sample of the batch",
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
    names, skipped = runnable_detectors(config, label_col, False, kinds)
    refuse_unchunkable(names, config)
    if not names or len(sample) < config.detection.min_class_rows:
        return None, skipped
    fitted = SampleFit(sample, kinds, label_col, config, names)
    return (fitted if fitted.detectors else None), skipped | fitted.skipped


def sample_scores(fitted: SampleFit, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of ``rows`` by the sample's detectors (a row's score depends on that row alone)."""
    X, y = fitted.encoder.transform(rows), labels_of(rows, fitted.label_col)
    views = views_of(fitted.detectors, rows, X, fitted.representation, fitted.texts)
    return {name: detector.decision_function(views[name], y) for name, detector in fitted.detectors.items()}


def sample_flags(fitted: SampleFit, chunk: pd.DataFrame, scores: dict[str, np.ndarray]) -> DetectorScores:
    """Flags of the rows of ``chunk``, scored ``scores``, by the sample's thresholds."""
    groups = batch_groups(labels_of(chunk, fitted.label_col), fitted.groups_fit)
    result = DetectorScores(calibration=dict(fitted.summary))
    for name, detector in fitted.detectors.items():
        limit = row_limits(fitted.limits[name], groups, len(scores[name]))
        result.scores[name] = scores[name]
        result.flags[name] = scores[name] > limit
        result.evidence[name] = scores[name] - limit
        result.reasons[name] = f"{detector.spec.reason}:{name}"
    return result


def refuse_unchunkable(names: list[str], config: ScanConfig) -> None:
    """Raise :class:`ConfigError` for what a chunked scan cannot do with these detectors and settings."""
    unable = [n for n in names if not detector_spec(n).scores_new_rows]
    if unable:
        raise ConfigError(
            f"detector(s) {', '.join(unable)} score only the rows they were fitted on and cannot run with "
            "--chunk-rows; leave them out of --detectors or scan without --chunk-rows"
        )

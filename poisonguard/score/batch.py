"""The no-reference rule: detectors fitted on the batch itself (or a uniform sample of it), each flagging
rows above its own natural threshold, above the limit its own model of clean rows sets
(:meth:`~poisonguard.detectors.base.Detector.null_scores`: the out-of-fold label model), or above the tail
limit of its class's scores (all rows when the class is small): the detectors' budget, split evenly among
them, read off a tail model of the scores below the class's top ``batch_poison_share``
(:func:`poisonguard.decide.calibration.tail_limit`). No clean data means no guarantee: the false quarantine
is an estimate under those assumptions, reported with its 90% interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.config import ScanConfig
from poisonguard.decide.calibration import (
    batch_groups,
    calibration_groups,
    model_false_quarantine,
    model_limit,
    row_limits,
    tail_false_quarantine,
    tail_limits,
)
from poisonguard.detectors import Detector, detector_spec
from poisonguard.errors import ConfigError
from poisonguard.featurize.features import FeatureEncoder, row_texts, text_columns
from poisonguard.featurize.representations import EmbeddingView, Probe, probe_activations
from poisonguard.score.details import add_row_details
from poisonguard.score.detector_set import (
    cannot_fit,
    configured_detector,
    labels_of,
    reads,
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
    detectors = {name: configured_detector(name, label_col, config) for name in names}
    views = {"features": (X_fit, X_batch)}
    if reads(detectors, "text"):
        texts = text_columns(kinds, label_col)
        views["text"] = (row_texts(usable, texts), row_texts(batch, texts))
    if reads(detectors, "words"):
        views["words"] = (encoder.words(usable, X_fit), encoder.words(batch, X_batch))
    if reads(detectors, "values"):
        views["values"] = (encoder.without_text(X_fit), encoder.without_text(X_batch))
    if config.io.has_embedding and reads(detectors, "probe"):
        embedding = EmbeddingView(config.io).fit(usable)
        views["probe"] = (embedding.rows(usable), embedding.rows(batch))
    elif label_col is not None and reads(detectors, "probe"):
        views["probe"] = tuple(probe_activations(X_fit, y_fit, [X_fit, X_batch], config.seed))
    unusable: dict[str, str] = {}
    fit_scores: dict[str, np.ndarray] = {}
    for name, detector in detectors.items():
        V_fit, V_batch = views.get(detector.spec.reads, views["features"])
        try:
            if detector.spec.transductive:
                result.scores[name] = detector.fit_decision_function(V_batch, y_batch)
                fit_scores[name] = result.scores[name][fit_mask]
            else:
                detector.fit(V_fit, y_fit)
                fit_scores[name] = detector.decision_function(V_fit, y_fit)
                result.scores[name] = detector.decision_function(V_batch, y_batch)
        except ValueError as error:
            unusable[name] = cannot_fit(name, error)
    detectors = {name: d for name, d in detectors.items() if name not in unusable}
    thresholds, result.calibration = batch_thresholds(detectors, fit_scores, groups_fit, len(usable), config)
    for name, detector in detectors.items():
        limit = row_limits(thresholds[name], groups_batch, len(result.scores[name]))
        result.flags[name] = result.scores[name] > limit
        result.evidence[name] = result.scores[name] - limit
        result.reasons[name] = f"{detector.spec.reason}:{name}"
    result.calibration["skipped_detectors"] = unusable
    add_row_details(result, detectors, batch, encoder, label_col, fitted_on_rows=True)
    return result


def batch_thresholds(detectors: dict[str, Detector], fit_scores: dict[str, np.ndarray], groups_fit: np.ndarray,
                     fit_rows: int, config: ScanConfig) -> tuple[dict[str, dict[str, float]], dict]:
    """Per detector and calibration group, the no-reference score threshold, and the calibration summary
    (``fit_rows``: how many rows the detectors were fitted on).

    A detector with a natural threshold keeps it. The others share the detectors' budget evenly, each
    flagging above the tail limit of its rows' scores at its share (Bonferroni: the union's false quarantine
    is at most the sum), and the summary holds their estimated false quarantine with a 90% interval.

    Evenly, not by what each sees as with a reference (``detector_weights``): weights from each detector's
    excess over its own limit at the whole budget were measured on the development table without a
    reference (5 seeds, ``benchmarks.detection --seeds 5 --no-reference``): digits' random flips 0.76 -> 0.83
    and 0.57 -> 0.70, but the shop's pair trigger at 10% quarantined 2.23% of clean rows (1.45% evenly) and
    breast_cancer's targeted flips 1.25% (0.89%), worst seed 3.50%: without trusted rows the excess of a
    label model that learned a trigger is its doubt of the clean rows that hold it.
    """
    poison_share = config.calibration.batch_poison_share
    modelled = [name for name, detector in detectors.items() if detector.spec.natural_threshold is None]
    level = config.detector_budget / max(len(modelled), 1)
    keys = {"*", *(str(g) for g in np.unique(groups_fit))}
    thresholds: dict[str, dict[str, float]] = {}
    nulls = {name: detectors[name].null_scores() for name in modelled if detectors[name].spec.null_model}
    for name, detector in detectors.items():
        if name in nulls:  # its own model of clean rows sets one limit for all rows
            thresholds[name] = dict.fromkeys(keys, model_limit(*nulls[name], level))
        elif detector.spec.natural_threshold is None:
            thresholds[name] = tail_limits(fit_scores[name], groups_fit, level, poison_share)
        else:
            thresholds[name] = dict.fromkeys(keys, float(detector.spec.natural_threshold))
    tailed = [name for name in modelled if name not in nulls]
    assumptions = [f"poison is at most {poison_share:.0%} of any class's rows"] if tailed else []
    assumptions += [f"for {name}, {detectors[name].null_assumption}" for name in nulls]
    summary: dict = {
        "mode": "batch",
        "rule": _batch_rule(detectors, level, poison_share, list(nulls)),
        "fit_rows": int(fit_rows),
        "score_thresholds": thresholds,
        "evidence_axis": "score minus its class's threshold",
        "evidence_threshold": 0.0,
        "assumption": "; ".join(assumptions) or "none: every detector flags by a threshold of its own",
        "note": "no trusted reference: the false-quarantine rate is not calibrated",
    }
    if modelled:
        # A row flagged by two detectors counts twice: the estimate and its interval bound the union from above.
        parts = [tail_false_quarantine({name: fit_scores[name] for name in tailed}, groups_fit, thresholds,
                                       poison_share, config.seed)] if tailed else []
        parts += [model_false_quarantine(*nulls[name], thresholds[name]["*"], config.seed,
                                         replicates=detectors[name].null_replicates) for name in nulls]
        share, low, high = (float(sum(values)) for values in zip(*parts))
        summary["false_quarantine_estimate"] = {"detectors": modelled, "share": share, "low": low, "high": high,
                                                "interval": 0.9, "level": level * len(modelled)}
        how = [f"limits extrapolate each class's scores below its top {poison_share:.0%}, assuming poison is at "
               f"most that share of any class ({', '.join(tailed)})"] if tailed else []
        how += [f"{name}'s limit is where its own model expects clean rows ({detectors[name].null_assumption})"
                for name in nulls]
        summary["note"] = (
            f"no trusted reference: {'; '.join(how)}; estimated false quarantine by {', '.join(modelled)}: "
            f"{share:.2%} of clean rows (90% interval {low:.2%}-{high:.2%}; the limits are set at {level:.2%} each)"
        )
    return thresholds, summary


def _batch_rule(detectors: dict[str, Detector], level: float, poison_share: float, self_modelled: list[str]) -> str:
    """The no-reference rule in words: the tail limit, the limits a detector's own model sets
    (``self_modelled``), and which detectors use a threshold of their own."""
    own = [f"{name} > {detector.spec.natural_threshold:g}" for name, detector in detectors.items()
           if detector.spec.natural_threshold is not None]
    tailed = [name for name, detector in detectors.items()
              if detector.spec.natural_threshold is None and name not in self_modelled]
    rules = [f"score above its class's tail limit at {level:.2%} (fitted below the top {poison_share:.0%}) "
             f"({', '.join(tailed)})"] if tailed else []
    rules += [f"{name} above the score its own model expects clean rows to pass at {level:.2%}"
              for name in self_modelled]
    return "; ".join([*rules, *own])


class SampleFit:
    """Detectors fitted on a uniform sample of a batch, with the no-reference thresholds set on it.

    The second pass of a chunked scan without a reference: each chunk is scored by the sample's models and
    flagged by the sample's per-class thresholds (:func:`batch_thresholds`, the rule a whole-batch scan sets on
    all its rows, set here on the sample). Detectors that judge rows against each
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
        if config.io.has_embedding and reads(self.detectors, "probe"):
            self.representation = EmbeddingView(config.io).fit(sample)
        elif label_col is not None and reads(self.detectors, "probe"):
            self.representation = Probe(config.seed).fit(X_fit, y_fit)
        self.skipped: dict[str, str] = {}  # detectors the sample's rows cannot fit, with the reason
        self.texts = text_columns(kinds, label_col)
        fit_views = views_of(self.detectors, sample, X_fit, self.encoder, self.representation, self.texts)
        fit_scores: dict[str, np.ndarray] = {}
        for name, detector in self.detectors.items():
            try:
                # A transductive detector scores the rows it was fitted on as it judges them (out of fold,
                # itself left out), which is how it scores rows it never saw: the limits need those scores.
                fit_scores[name] = (detector.fit_decision_function(fit_views[name], y_fit)
                                    if detector.spec.transductive
                                    else detector.fit(fit_views[name], y_fit).decision_function(fit_views[name], y_fit))
            except ValueError as error:
                self.skipped[name] = cannot_fit(name, error)
        self.detectors = {name: d for name, d in self.detectors.items() if name not in self.skipped}
        self.limits, self.summary = batch_thresholds(self.detectors, fit_scores, self.groups_fit, len(sample), config)
        self.summary["rule"] += ", set on a sample of the batch"


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
    views = views_of(fitted.detectors, rows, X, fitted.encoder, fitted.representation, fitted.texts)
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
    add_row_details(result, fitted.detectors, chunk, fitted.encoder, fitted.label_col)
    return result


def refuse_unchunkable(names: list[str], config: ScanConfig) -> None:
    """Raise :class:`ConfigError` for what a chunked scan cannot do with these detectors and settings."""
    unable = [n for n in names if not detector_spec(n).scores_new_rows]
    if unable:
        raise ConfigError(
            f"detector(s) {', '.join(unable)} score only the rows they were fitted on and cannot run with "
            "--chunk-rows; leave them out of --detectors or scan without --chunk-rows"
        )
